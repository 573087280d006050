"""docker-compose.yml stays consistent with the CLI, though CI has no Docker engine."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dimsebus.services.cli import app
from tests.compose import interpolate

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
        monkeypatch.setenv(key, interpolate(str(value), {}))  # as compose would, .env unset
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


CLUSTER = {name: s for name, s in COMPOSE["services"].items() if "cluster" in s.get("profiles", [])}


def test_the_cluster_profile_is_three_brokers_that_name_one_another() -> None:
    # given the cluster profile's brokers and the config file each of them mounts
    assert sorted(CLUSTER) == ["rabbitmq-1", "rabbitmq-2", "rabbitmq-3"]
    nodes = {f"rabbit@{service['hostname']}" for service in CLUSTER.values()}
    for service in CLUSTER.values():
        mounted = [v.split(":")[0] for v in service["volumes"] if "/etc/rabbitmq/conf.d/" in v]
        conf = "\n".join((ROOT / source).read_text() for source in mounted)
        settings = dict(line.split(" = ", 1) for line in conf.splitlines() if " = " in line)
        # then each finds the other two by classic_config, under their host names
        assert settings["cluster_formation.peer_discovery_backend"] == "classic_config"
        peers = {v for k, v in settings.items() if k.startswith("cluster_formation.classic_config")}
        assert peers == nodes
        # with one Erlang cookie, its own volume, a healthcheck and a port of its own
        assert service["environment"]["DIMSEBUS_ERLANG_COOKIE"] == "${DIMSEBUS_ERLANG_COOKIE:-}"
        assert "/var/lib/rabbitmq/.erlang.cookie" in " ".join(service["command"])
        assert service["healthcheck"]["test"]
        assert any(volume.endswith(":/var/lib/rabbitmq") for volume in service["volumes"])
    ports = [
        p.rsplit(":", 2)[-2] for s in CLUSTER.values() for p in s["ports"] if p.endswith(":5672")
    ]
    assert sorted(ports) == ["5681", "5682", "5683"]
    # and nothing outside the profile needs them: the default `docker compose up` is unchanged
    for name, service in COMPOSE["services"].items():
        assert not set(service.get("depends_on", {})) & set(CLUSTER), name
