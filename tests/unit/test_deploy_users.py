"""docker-compose.yml deploys least-privilege users and publishes ports only where asked."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from dimsebus.schemas.limits import MAX_BODY_BYTES
from tests.compose import interpolate

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES = COMPOSE["services"]
SCRIPT = (ROOT / "scripts" / "rabbitmq-users").read_text()
ENV_EXAMPLE = (ROOT / ".env.example").read_text()
LONG_RUNNING = ("node", "tracker", "retrier", "audit")


def amqp_user(service: str) -> str:
    """The user of the service's URL as compose makes it when .env sets no cluster URLs."""
    url = interpolate(SERVICES[service]["environment"]["DIMSEBUS_AMQP_URL"], {})
    return str(urlsplit(url).username)


def test_no_service_connects_as_guest() -> None:
    connecting = [n for n in SERVICES if "DIMSEBUS_AMQP_URL" in SERVICES[n].get("environment", {})]
    assert "guest" not in {amqp_user(name) for name in connecting}
    assert "guest:guest" not in COMPOSE_TEXT


def test_each_service_connects_as_its_own_user_that_the_script_makes() -> None:
    users = {name: amqp_user(name) for name in LONG_RUNNING}
    assert users == {name: f"dimsebus-{name}" for name in LONG_RUNNING}
    assert amqp_user("topology") == "dimsebus-admin"
    for role in ("admin", *LONG_RUNNING, "operator"):
        assert f'"${{prefix}}{role}"' in SCRIPT
        assert f"DIMSEBUS_{role.upper()}_PASSWORD" in SCRIPT


def test_the_users_are_made_before_the_topology_and_the_topology_before_the_services() -> None:
    users = SERVICES["rabbitmq-users"]
    assert users["entrypoint"] == ["bash", "/opt/dimsebus/rabbitmq-users"]
    assert "--no-generate" in users["command"]
    assert "--remove-guest" in users["command"]
    mounted = {volume.split(":")[1] for volume in users["volumes"]}
    assert {"/opt/dimsebus/rabbitmq-users", "/var/lib/rabbitmq"} <= mounted
    done = {"condition": "service_completed_successfully"}
    assert SERVICES["topology"]["depends_on"]["rabbitmq-users"] == done
    for name in LONG_RUNNING:
        assert SERVICES[name]["depends_on"]["topology"] == done


def test_every_password_the_script_reads_comes_from_the_env_file() -> None:
    # the script's variables, the env file's, and what compose hands the script all agree
    wanted = set(re.findall(r"\b(DIMSEBUS_[A-Z]+_PASSWORD)\b", SCRIPT)) | {
        "RABBITMQ_ADMIN_USER",
        "RABBITMQ_ADMIN_PASSWORD",
    }
    given = set(SERVICES["rabbitmq-users"]["environment"])
    listed = set(re.findall(r"^([A-Z_]+)=", ENV_EXAMPLE, re.MULTILINE))
    assert wanted <= given
    assert wanted == listed


def test_every_variable_of_the_compose_file_is_in_the_env_file() -> None:
    used = set(re.findall(r"\$\{([A-Z_]+)", COMPOSE_TEXT))
    documented = set(re.findall(r"^#? ?([A-Z_]+)=", ENV_EXAMPLE, re.MULTILINE))
    assert used <= documented, used - documented


@pytest.mark.parametrize("name", sorted(n for n in SERVICES if SERVICES[n].get("ports")))
def test_ports_are_published_on_localhost_unless_an_address_is_given(name: str) -> None:
    local = r"\$\{DIMSEBUS_(BROKER|DICOM|HTTP)_ADDRESS:-127\.0\.0\.1\}:\d+:\d+"
    for port in SERVICES[name]["ports"]:
        assert re.fullmatch(local, port), port


def test_the_broker_refuses_messages_far_over_the_body_limit() -> None:
    volumes = SERVICES["rabbitmq"]["volumes"]
    assert "./deploy/rabbitmq/dimsebus.conf:/etc/rabbitmq/conf.d/30-dimsebus.conf:ro" in volumes
    conf = (ROOT / "deploy" / "rabbitmq" / "dimsebus.conf").read_text()
    [size] = re.findall(r"^max_message_size = (\d+)$", conf, re.MULTILINE)
    assert MAX_BODY_BYTES < int(size) <= 4 * 1024**2
