"""The `dimsebus` command as an operator runs it: one line per mistake, and the right exit."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dimsebus.services.node.synthetic import write_study
from tests.integration.peers import free_port, wait_for_port

pytestmark = pytest.mark.integration
EXAMPLES = Path(__file__).parents[2] / "examples"


def dimsebus(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The installed command's entry point, as a process."""
    return subprocess.run(
        [sys.executable, "-m", "dimsebus.services", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DIMSEBUS_DEBUG": "", **(env or {})},
    )


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


@pytest.fixture
def node_env(tmp_path: Path, amqp_url: str) -> dict[str, str]:
    """Variables that put a node from examples/node.toml in this test's folder and vhost."""
    return {
        "DIMSEBUS_NODE_ID": f"env-{uuid.uuid4().hex[:8]}",
        "DIMSEBUS_HOST": "127.0.0.1",
        "DIMSEBUS_ARCHIVE_PATH": str(tmp_path / "archive"),
        "DIMSEBUS_OUTBOX_PATH": str(tmp_path / "outbox.sqlite"),
        "DIMSEBUS_AMQP_URL": amqp_url,
    }


def test_the_node_listens_on_the_port_its_variable_names(node_env: dict[str, str]) -> None:
    # given `DIMSEBUS_PORT=... dimsebus node --config examples/node.toml`, as that file says
    port = free_port()
    node = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dimsebus.services",
            "node",
            "--config",
            str(EXAMPLES / "node.toml"),
        ],
        env={**os.environ, **node_env, "DIMSEBUS_PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        # then it listens there, and stops cleanly on SIGTERM
        wait_for_port(port, within=30)
    finally:
        node.send_signal(signal.SIGTERM)
        _, stderr = node.communicate(timeout=30)
    assert node.returncode == 0, stderr.decode()


def test_send_to_a_peer_that_refuses_is_one_line_exit_1(
    tmp_path: Path, node_env: dict[str, str]
) -> None:
    write_study(tmp_path / "study", 2)
    closed = free_port()
    result = dimsebus(
        "send",
        str(tmp_path / "study"),
        "--to",
        f"STORESCP@127.0.0.1:{closed}",
        "--outbox",
        str(tmp_path / "send-outbox.sqlite"),
        env=node_env,
    )
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    line = one_line(result.stderr)
    assert f"STORESCP@127.0.0.1:{closed} did not accept an association" in line
    assert "Connection refused" in line


@contextlib.contextmanager
def ipv6_scp() -> Iterator[int]:
    """A pynetdicom Storage SCP on [::1] that stores nothing and answers Success."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    ae = AE(ae_title="SIXSCP")
    ae.supported_contexts = AllStoragePresentationContexts
    port = free_port()
    server = ae.start_server(
        ("::1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)]
    )
    try:
        yield port
    finally:
        assert server is not None
        server.shutdown()


def test_send_to_an_ipv6_address_in_brackets(tmp_path: Path, node_env: dict[str, str]) -> None:
    write_study(tmp_path / "study", 2)
    with ipv6_scp() as port:
        result = dimsebus(
            "send",
            str(tmp_path / "study"),
            "--to",
            f"SIXSCP@[::1]:{port}",
            "--outbox",
            str(tmp_path / "send-outbox.sqlite"),
            env=node_env,
        )
    assert result.returncode == 0, result.stderr
    assert f"sent to SIXSCP@[::1]:{port}" in " ".join(result.stdout.split())


def test_an_unexpected_failure_is_one_line_unless_debugging(tmp_path: Path) -> None:
    # given a command that fails where no code expected it (/proc takes no new folder)
    failed = dimsebus("schemas", "export", "/proc/dimsebus/schemas")
    assert failed.returncode == 1
    assert one_line(failed.stderr).startswith("error: FileNotFoundError: ")
    # then --debug, or DIMSEBUS_DEBUG=1, shows its traceback instead
    for argv, env in ((["--debug"], {}), ([], {"DIMSEBUS_DEBUG": "1"})):
        shown = dimsebus(*argv, "schemas", "export", "/proc/dimsebus/schemas", env=env)
        assert shown.returncode == 1
        assert "Traceback" in shown.stderr


def test_node_status_takes_config_after_the_verb(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        f'node_id = "n1"\narchive_path = "{tmp_path / "archive"}"\n'
        f'outbox_path = "{tmp_path / "outbox.sqlite"}"\n'
    )
    after = dimsebus("node", "status", "--config", str(config), "--json")
    before = dimsebus("node", "--config", str(config), "status", "--json")
    assert after.returncode == before.returncode == 0, after.stderr + before.stderr
    assert after.stdout == before.stdout
    assert '"node_id": "n1"' in after.stdout


def test_rabbitmq_down_is_exit_1_and_a_refusal_exit_2(amqp_url: str) -> None:
    # given a broker port where nothing listens
    down = dimsebus("events", "tail", "--amqp-url", f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    assert down.returncode == 1
    assert one_line(down.stderr).startswith("error: cannot reach RabbitMQ (")
    # given the real broker and a wrong password
    host = amqp_url.split("@", 1)[1]
    refused = dimsebus("topology", "declare", "--amqp-url", f"amqp://guest:wrong-pw@{host}")
    assert refused.returncode == 2
    line = one_line(refused.stderr)
    assert line.startswith("error: --amqp-url: the broker refused the connection: 403 ACCESS_")
    # given a vhost that does not exist: the broker's own reason
    user = amqp_url.rsplit("/", 1)[0]
    missing = dimsebus("events", "tail", "--amqp-url", f"{user}/no-such-vhost-{uuid.uuid4().hex}")
    assert missing.returncode == 2
    line = one_line(missing.stderr)
    assert line.startswith("error: --amqp-url: the broker refused the connection: 530 NOT_ALLOWED")
    assert "no-such-vhost" in line


def test_send_of_files_that_are_not_dicom_is_exit_2(
    tmp_path: Path, node_env: dict[str, str]
) -> None:
    # given two files that are not DICOM
    (tmp_path / "junk").mkdir()
    for name in ("a.txt", "b.txt"):
        (tmp_path / "junk" / name).write_text("not DICOM")
    # when they are sent
    result = dimsebus(
        "send",
        str(tmp_path / "junk"),
        "--to",
        "STORESCP@127.0.0.1:104",
        "--outbox",
        str(tmp_path / "send-outbox.sqlite"),
        env={**node_env, "COLUMNS": "300"},
    )
    # then each is named, and the last line says nothing was sent
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == "error: none of the 2 files is DICOM: nothing was sent"
    assert sum(line.startswith("skipped ") for line in lines) == 2
    assert "Traceback" not in result.stderr
