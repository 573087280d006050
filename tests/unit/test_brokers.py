"""Several broker URLs: parsing, masking, which one is next, and the replica arguments."""

from __future__ import annotations

import pytest

from dimsebus.services.bus.brokers import Rotation, masked_all, parse_urls
from dimsebus.services.bus.topology import (
    QUORUM_REPLICAS,
    STREAM_REPLICAS,
    StreamRetention,
    WorkQueue,
    as_created,
    delay_queue_arguments,
    existing_replicas,
    parking_arguments,
    stream_arguments,
    work_queue_arguments,
)
from dimsebus.services.errors import ConfigError
from dimsebus.services.settings import ServiceSettings, load_settings, masked

THREE = "amqp://u:pw@h1:5681/v,amqp://u:pw@h2:5682/v, amqp://u:pw@h3:5683/v"


def test_one_url_is_a_list_of_one() -> None:
    assert parse_urls("amqp://guest:guest@127.0.0.1:5672/") == (
        "amqp://guest:guest@127.0.0.1:5672/",
    )


def test_several_urls_are_split_on_commas_and_trimmed() -> None:
    assert parse_urls(THREE) == (
        "amqp://u:pw@h1:5681/v",
        "amqp://u:pw@h2:5682/v",
        "amqp://u:pw@h3:5683/v",
    )


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("amqp://h1/,http://u:secret@h2/", "'http://u:\\*\\*\\*@h2/' is not an AMQP URL"),
        ("amqp://h1/,,amqp://h3/", "an empty URL"),
        ("amqp://h1/,", "an empty URL"),
        ("amqp://h1/,amqp:///v", "'amqp:///v' names no host"),
        ("amqp://u:secret@h1:port/", "'amqp://u:\\*\\*\\*@h1:port/' has a port that is not"),
        ("", "no AMQP URL"),
    ],
)
def test_a_bad_url_is_named_without_its_password(text: str, named: str) -> None:
    with pytest.raises(ValueError, match=named) as raised:
        parse_urls(text)
    assert "secret" not in str(raised.value)


def test_every_password_of_a_list_is_masked() -> None:
    assert (
        masked_all(THREE) == "amqp://u:***@h1:5681/v,amqp://u:***@h2:5682/v,amqp://u:***@h3:5683/v"
    )


def test_settings_take_a_list_and_show_it_masked() -> None:
    settings = load_settings(ServiceSettings, amqp_url=THREE, replicas=3)
    assert settings.amqp_url == THREE.replace(" ", "")
    assert settings.replicas == 3
    shown = masked(settings)
    assert shown["amqp_url"].count("***") == 3
    assert "pw" not in shown["amqp_url"]


def test_a_bad_url_in_the_settings_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIMSEBUS_AMQP_URL", "amqp://u:secret@h1/,amqps//h2")
    with pytest.raises(ConfigError) as raised:
        load_settings(ServiceSettings)
    message = str(raised.value)
    assert message.startswith("DIMSEBUS_AMQP_URL: ")
    assert "'amqps//h2' is not an AMQP URL" in message
    assert "secret" not in message
    assert "\n" not in message


def test_replicas_are_none_by_default_and_at_least_one() -> None:
    assert load_settings(ServiceSettings).replicas is None
    with pytest.raises(ConfigError, match="replicas"):
        load_settings(ServiceSettings, replicas=0)


def test_the_next_url_is_round_robin() -> None:
    rotation = Rotation(("a", "b", "c"))
    seen = []
    for _ in range(4):
        seen.append(rotation.current)
        rotation = rotation.failed()
    assert seen == ["a", "b", "c", "a"]


def test_back_off_only_once_a_whole_round_failed() -> None:
    rotation = Rotation(("a", "b", "c"))
    waits = []
    for _ in range(6):
        rotation = rotation.failed()
        waits.append(rotation.round_failed)
    assert waits == [False, False, True, False, False, True]


def test_a_lost_connection_moves_on_at_once() -> None:
    rotation = Rotation(("a", "b", "c")).failed().connected()  # on b
    rotation = rotation.lost()
    assert rotation.current == "c"
    assert not rotation.round_failed


def test_one_url_is_always_the_next_and_each_failure_is_a_round() -> None:
    rotation = Rotation(("a",)).failed()
    assert rotation.current == "a"
    assert rotation.round_failed
    assert rotation.lost().current == "a"


def test_no_replicas_declares_as_before() -> None:
    retention = StreamRetention()
    assert STREAM_REPLICAS not in stream_arguments(retention)
    assert QUORUM_REPLICAS not in work_queue_arguments(WorkQueue("q"))
    assert parking_arguments() == {"x-queue-type": "quorum"}
    assert QUORUM_REPLICAS not in delay_queue_arguments()


def test_replicas_are_the_initial_sizes_of_the_stream_and_the_quorum_queues() -> None:
    assert stream_arguments(StreamRetention(), 3)[STREAM_REPLICAS] == 3
    assert work_queue_arguments(WorkQueue("q"), 3)[QUORUM_REPLICAS] == 3
    assert parking_arguments(3)[QUORUM_REPLICAS] == 3
    assert delay_queue_arguments(3)[QUORUM_REPLICAS] == 3


# RabbitMQ 3.10.8's words (rabbit_misc:assert_args_equivalence), as a 3-node cluster said them.
ABSENT = (
    "PRECONDITION_FAILED - inequivalent arg 'x-quorum-initial-group-size' for queue 'q' in "
    "vhost '/': received the value '3' of type 'byte' but current is none"
)
OTHER = (
    "PRECONDITION_FAILED - inequivalent arg 'x-initial-cluster-size' for queue 'dimsebus.log' "
    "in vhost '/': received '2' but current is '3'"
)
TYPED = (
    "PRECONDITION_FAILED - inequivalent arg 'x-initial-cluster-size' for queue 's' in vhost "
    "'/': received none but current is the value '3' of type 'byte'"
)
RETENTION = (
    "PRECONDITION_FAILED - inequivalent arg 'x-max-age' for queue 'dimsebus.log' in vhost "
    "'/': received '1h' but current is '30D'"
)


def test_the_replica_count_a_queue_was_created_with_is_read_from_the_refusal() -> None:
    assert existing_replicas(ABSENT) == (QUORUM_REPLICAS, None)
    assert existing_replicas(OTHER) == (STREAM_REPLICAS, 3)
    assert existing_replicas(TYPED) == (STREAM_REPLICAS, 3)
    assert existing_replicas(RETENTION) is None


def test_a_queue_is_declared_again_as_it_was_created() -> None:
    asked = work_queue_arguments(WorkQueue("q"), 3)
    assert as_created(asked, QUORUM_REPLICAS, None) == work_queue_arguments(WorkQueue("q"))
    assert as_created(asked, QUORUM_REPLICAS, 5)[QUORUM_REPLICAS] == 5
    assert as_created(work_queue_arguments(WorkQueue("q")), QUORUM_REPLICAS, 3) == asked
