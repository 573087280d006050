"""Flags override DIMSEBUS_* variables, which override the TOML file; errors name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from dimsebus.services.cli import app
from dimsebus.services.errors import ConfigError
from dimsebus.services.retrier.app import RetrierSettings
from dimsebus.services.settings import ServiceSettings, load_settings, masked


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "dimsebus.toml"
    path.write_text(
        'amqp_url = "amqp://file:secret@broker-a:5672/"\nprefetch = 10\npublish_window = 7\n'
    )
    return path


def test_precedence(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # given a file, an environment variable for one of its keys, and a flag for another
    monkeypatch.setenv("DIMSEBUS_PREFETCH", "20")
    settings = load_settings(ServiceSettings, config, publish_window=30)
    # then the flag beats the file, the environment beats the file, the file beats defaults
    assert (settings.publish_window, settings.prefetch) == (30, 20)
    assert settings.amqp_url == "amqp://file:secret@broker-a:5672/"
    assert settings.log_max_age == "30D"


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        ({"AMQP_URL": "amqp://plain/", "DIMSEBUS_AMQP_URL": "amqp://ours/"}, "amqp://ours/"),
        ({"AMQP_URL": "amqp://plain/"}, "amqp://plain/"),
        ({}, "amqp://file:secret@broker-a:5672/"),
    ],
)
def test_dimsebus_amqp_url_beats_plain_amqp_url(
    config: Path, monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], expected: str
) -> None:
    # given the generic AMQP_URL (what the tests and other tools set) and our own variable
    monkeypatch.delenv("AMQP_URL", raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    # then DIMSEBUS_AMQP_URL wins (a relay told its vhost is not sent elsewhere), a flag
    # beats both, and without either the file's URL holds
    assert load_settings(ServiceSettings, config).amqp_url == expected
    assert load_settings(ServiceSettings, config, amqp_url="amqp://flag/").amqp_url == (
        "amqp://flag/"
    )


def test_bad_value_in_file_names_field_and_value(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('prefetch = 0\nlog_max_age = "forever"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(ServiceSettings, path)
    message = str(caught.value)
    assert "prefetch: Input should be greater than or equal to 1 (got 0)" in message
    assert "log_max_age" in message
    assert "'forever' is not a RabbitMQ max-age" in message
    assert str(path) in message


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "typo.toml"
    path.write_text("prefech = 5\n")
    with pytest.raises(ConfigError, match="prefech: Extra inputs are not permitted"):
        load_settings(ServiceSettings, path)


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("prefetch = = 5\n")
    with pytest.raises(ConfigError, match=r"broken\.toml"):
        load_settings(ServiceSettings, path)


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match=r"--config: '/nonexistent\.toml' is not a readable file"):
        load_settings(ServiceSettings, Path("/nonexistent.toml"))


def test_bad_amqp_url_flag() -> None:
    with pytest.raises(ConfigError, match=r"amqp_url: .*'http://x' is not an AMQP URL"):
        load_settings(ServiceSettings, amqp_url="http://x")


def test_secrets_are_masked(config: Path) -> None:
    shown = masked(load_settings(ServiceSettings, config))
    assert shown["amqp_url"] == "amqp://file:***@broker-a:5672/"


def test_cli_reports_one_clear_line() -> None:
    result = CliRunner().invoke(app, ["events", "tail", "--from", "yesterday"])
    assert result.exit_code == 2
    assert "--from: 'yesterday' is not first, last, next or a stream offset" in result.output
    result = CliRunner().invoke(app, ["demo", "--amqp-url", "http://x"])
    assert result.exit_code == 2
    assert "is not an AMQP URL" in result.output


def test_retry_policy_layers_merge_field_by_field(monkeypatch: pytest.MonkeyPatch) -> None:
    # given the example file, one policy field from the environment and one from a flag
    monkeypatch.setenv("DIMSEBUS_POLICY__MULTIPLIER", "3")
    settings = load_settings(
        RetrierSettings, Path("examples/retrier.toml"), policy={"max_attempts": 2}
    )
    # then each layer sets only its own field of the nested policy
    assert settings.policy.max_attempts == 2
    assert settings.policy.multiplier == 3.0
    assert settings.policy.initial_delay == 30.0


def test_bad_retrier_flag_is_one_line() -> None:
    result = CliRunner().invoke(app, ["retrier", "--initial-delay", "100", "--max-delay", "5"])
    assert result.exit_code == 2
    text = " ".join(result.output.split())  # rich wraps at the test terminal's width
    assert "policy: Value error, max_delay (5.0 s) is shorter than initial_delay (100.0 s)" in text


def test_audit_settings_name_a_missing_tls_file() -> None:
    result = CliRunner().invoke(
        app,
        ["audit", "--syslog-host", "arr.example", "--syslog-tls", "--db", "x.sqlite"],
        env={"DIMSEBUS_SYSLOG_CA_FILE": "/nonexistent/ca.pem"},
    )
    text = " ".join(result.output.split())
    assert result.exit_code == 2
    assert "syslog_ca_file: '/nonexistent/ca.pem' is not a readable file" in text


def test_audit_query_names_a_bad_time() -> None:
    result = CliRunner().invoke(app, ["audit", "query", "--since", "yesterday"])
    assert result.exit_code == 2
    assert "--since/--until" in result.output


def test_config_show_masks_secrets_and_names_unknown_services(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('amqp_url = "amqp://ops:hunter2@broker:5672/"\npatient_id_key = "site-key"\n')
    result = CliRunner().invoke(app, ["config", "show", "node", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.output
    assert "site-key" not in result.output
    assert '"amqp_url": "amqp://ops:***@broker:5672/"' in result.output
    unknown = CliRunner().invoke(app, ["config", "show", "nodes"])
    assert unknown.exit_code == 2
    assert "service 'nodes' is not one of node, tracker, retrier, audit" in unknown.output


async def test_demo_says_what_to_install_when_there_is_no_broker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import dimsebus.services.demo as demo

    monkeypatch.setattr("dimsebus.services.demo.shutil.which", lambda name: None)
    with pytest.raises(demo.DemoError, match=r"install one .*rabbitmq-server.*Docker"):
        await demo.find_broker("amqp://guest:guest@127.0.0.1:1/", lambda line: None)


def test_each_archive_gets_its_own_patient_id_key_unless_one_is_set(tmp_path: Path) -> None:
    from pydantic import SecretStr

    from dimsebus.services.node.config import NodeSettings

    first = NodeSettings(archive_path=tmp_path / "a")
    key = first.patient_key()
    assert len(key) == 64
    assert first.patient_key() == key  # kept in the archive, the same on every start
    assert oct((tmp_path / "a" / "patient-id.key").stat().st_mode)[-3:] == "600"
    assert NodeSettings(archive_path=tmp_path / "b").patient_key() != key
    shared = NodeSettings(archive_path=tmp_path / "c", patient_id_key=SecretStr("site-key"))
    assert shared.patient_key() == b"site-key"
