"""docker-compose.yml stays consistent with the CLI, though CI has no Docker engine."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from services.cli import app

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
