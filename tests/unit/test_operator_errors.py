"""Every operator mistake is one line naming the thing and why: exit 2 bad input, 1 run time."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.audit.app import AuditSettings
from services.cli import app
from services.node.config import NodeSettings
from services.retrier.app import RetrierSettings
from services.settings import load_settings
from services.tracker.app import TrackerSettings

EXAMPLES = Path(__file__).parents[2] / "examples"


def one_line(output: str) -> str:
    """The output's only line; it fails if there are more, or a traceback."""
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert "Traceback" not in output
    return lines[0]


# Row 1: values from the environment are parsed as the TOML ones are.


@pytest.mark.parametrize(
    ("variable", "value", "field", "expected"),
    [
        ("DIMSEBUS_PORT", "11113", "port", 11113),  # a strict DICOM Port
        ("DIMSEBUS_HTTP_PORT", "9100", "http_port", 9100),  # int | None
        ("DIMSEBUS_MAX_PDU", "65_536", "max_pdu", 65536),  # TOML's digit separators
        ("DIMSEBUS_DIMSE_TIMEOUT", "12.5", "dimse_timeout", 12.5),
        ("DIMSEBUS_OVERWRITE_INSTANCES", "true", "overwrite_instances", True),
        ("DIMSEBUS_AE_TITLE", "123", "ae_title", "123"),  # a text field keeps digits as text
        ("DIMSEBUS_NODE_ID", "42", "node_id", "42"),
    ],
)
def test_node_variables_are_read_as_toml_values(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: str, expected: object
) -> None:
    # given the example node file and one variable
    monkeypatch.setenv(variable, value)
    # when the settings are loaded
    settings = load_settings(NodeSettings, EXAMPLES / "node.toml")
    # then the variable's value is typed as the same key in the file would be
    assert getattr(settings, field) == expected


def test_nested_models_lists_and_tables_from_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    # given nested keys under __, a TOML array and a TOML inline table
    monkeypatch.setenv("DIMSEBUS_ACCESS__CHECK_CALLED_AE", "false")
    monkeypatch.setenv("DIMSEBUS_ACCESS__UNKNOWN_PEERS", "['echo', 'store']")
    monkeypatch.setenv("DIMSEBUS_DESTINATIONS", '{PACS = {host = "pacs", port = 104}}')
    monkeypatch.setenv("DIMSEBUS_LABELS", '{"site": "west"}')  # JSON still works
    settings = load_settings(NodeSettings, EXAMPLES / "node.toml")
    # then each is parsed as in the file
    assert settings.access.check_called_ae is False
    assert settings.access.unknown_peers == {"echo", "store"}
    assert settings.destinations["PACS"].port == 104
    assert settings.destinations["STORESCP"].port == 11113  # the file's table is kept
    assert settings.labels == {"site": "west"}


def test_every_service_reads_typed_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    # given one number, boolean or nested value per service
    monkeypatch.setenv("DIMSEBUS_STALL_AFTER", "10")
    monkeypatch.setenv("DIMSEBUS_RETRIES", "true")
    monkeypatch.setenv("DIMSEBUS_SYSLOG_PORT", "1514")
    monkeypatch.setenv("DIMSEBUS_SYSLOG_TLS", "false")
    monkeypatch.setenv("DIMSEBUS_POLICY__MAX_ATTEMPTS", "3")
    monkeypatch.setenv("DIMSEBUS_POLICY__RETRY_ON_WARNING", "true")
    monkeypatch.setenv("DIMSEBUS_PREFETCH", "7")
    # then every settings class has them typed
    tracker = load_settings(TrackerSettings)
    assert (tracker.stall_after, tracker.retries, tracker.prefetch) == (10.0, True, 7)
    audit = load_settings(AuditSettings, EXAMPLES / "audit.toml")
    assert (audit.syslog_port, audit.syslog_tls) == (1514, False)
    retrier = load_settings(RetrierSettings, EXAMPLES / "retrier.toml")
    assert (retrier.policy.max_attempts, retrier.policy.retry_on_warning) == (3, True)


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("DIMSEBUS_PORT", "eleven", "DIMSEBUS_PORT: port: Input should be a valid integer"),
        ("DIMSEBUS_PORT", "70000", "DIMSEBUS_PORT: port: Value error, 70000 is not a valid TCP"),
        ("DIMSEBUS_ACCESS__CHECK_CALLED_AE", "maybe", "DIMSEBUS_ACCESS__CHECK_CALLED_AE: access"),
        ("DIMSEBUS_LABELS", "{site", "DIMSEBUS_LABELS: '{site' is neither JSON nor a TOML value"),
    ],
)
def test_a_bad_variable_is_one_line_naming_it(variable: str, value: str, named: str) -> None:
    node_toml = str(EXAMPLES / "node.toml")
    result = CliRunner().invoke(
        app, ["config", "show", "node", "--config", node_toml], env={variable: value}
    )
    assert result.exit_code == 2
    assert named in one_line(result.output)


def test_the_node_examples_own_variable_example_starts() -> None:
    # `DIMSEBUS_PORT=11113 dimsebus node --config examples/node.toml`, as that file says
    result = CliRunner().invoke(
        app,
        ["config", "show", "node", "--config", str(EXAMPLES / "node.toml"), "--json"],
        env={"DIMSEBUS_PORT": "11113"},
    )
    assert result.exit_code == 0, result.output
    assert '"port": 11113' in result.output
