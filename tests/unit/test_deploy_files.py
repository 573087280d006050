"""docker-compose.yml stays consistent with the CLI, though CI has no Docker engine."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dimsebus.services.cli import app

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DIMSEBUS_SERVICES = {name: s for name, s in COMPOSE["services"].items() if s.get("build")}


def test_rabbitmq_has_a_healthcheck_and_a_volume() -> None:
    rabbitmq = COMPOSE["services"]["rabbitmq"]
    assert rabbitmq["healthcheck"]["test"]
    assert any(volume.endswith(":/var/lib/rabbitmq") for volume in rabbitmq["volumes"])


@pytest.mark.parametrize("name", sorted(DIMSEBUS_SERVICES))
def test_service_command_is_a_real_cli_command(name: str) -> None:
    # the command with --help parses: every sub-command and flag exists
    command = DIMSEBUS_SERVICES[name]["command"]
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert DIMSEBUS_SERVICES[name]["depends_on"]["rabbitmq"]["condition"] == "service_healthy"


LONG_RUNNING = ("node", "tracker", "retrier", "audit")


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_service_has_health_state_and_settings_that_parse(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dimsebus.services.cli import SERVICES
    from dimsebus.services.settings import load_settings

    service = DIMSEBUS_SERVICES[name]
    environment = service["environment"]
    # its healthcheck asks /healthz on the port its settings serve it on
    check = " ".join(service["healthcheck"]["test"])
    assert f":{environment['DIMSEBUS_HTTP_PORT']}/healthz" in check
    # its state lives in a named volume where its settings put it
    assert any(volume.endswith(":/var/lib/dimsebus") for volume in service["volumes"])
    # and its environment (and config file, if any) make valid settings of its model
    for key, value in environment.items():
        monkeypatch.setenv(key, str(value))
    command = service["command"]
    config = None
    if "--config" in command:
        mounted = command[command.index("--config") + 1]
        source = next(v.split(":")[0] for v in service["volumes"] if f":{mounted}" in v)
        config = ROOT / source
    settings = load_settings(SERVICES[name], config)
    assert settings.http_port == 9100
    paths = [str(v) for k, v in settings.model_dump().items() if k in ("db", "archive_path")]
    assert all(path.startswith("/var/lib/dimsebus") for path in paths), paths


def test_the_node_lists_its_peers_and_lets_strangers_only_echo() -> None:
    from dimsebus.services.node.config import NodeSettings
    from dimsebus.services.settings import load_settings

    settings = load_settings(NodeSettings, ROOT / "deploy" / "node.toml")
    assert settings.access.unknown_peers == {"echo"}
    assert settings.access.check_called_ae
    assert settings.peers, "the compose node lists the peers that may do more than echo"
