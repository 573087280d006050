"""docker-compose.yml: the dimsebus services take a cluster's broker URLs and replica count."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dimsebus.services.bus.brokers import parse_urls
from tests.compose import interpolate

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
# each service that connects, and the broker user it connects as
USERS = {s: s for s in ("node", "tracker", "retrier", "audit")} | {"topology": "admin"}


def cluster_urls(user: str) -> str:
    """The three brokers of the cluster profile, as .env.example lists them for ``user``."""
    return ",".join(f"amqp://dimsebus-{user}:pw@rabbitmq-{n}:5672/" for n in (1, 2, 3))


@pytest.mark.parametrize(("service", "user"), sorted(USERS.items()))
def test_a_service_takes_the_clusters_urls_and_replicas(service: str, user: str) -> None:
    environment = COMPOSE["services"][service]["environment"]
    # given the cluster's variables in .env
    dotenv = {f"DIMSEBUS_{user.upper()}_AMQP_URL": cluster_urls(user), "DIMSEBUS_REPLICAS": "3"}
    # then the service is given every node's URL, and the replica count
    urls = parse_urls(interpolate(environment["DIMSEBUS_AMQP_URL"], dotenv))
    assert [url.split("@")[1] for url in urls] == [f"rabbitmq-{n}:5672/" for n in (1, 2, 3)]
    assert interpolate(environment["DIMSEBUS_REPLICAS"], dotenv) == "3"


@pytest.mark.parametrize(("service", "user"), sorted(USERS.items()))
def test_without_them_a_service_uses_the_one_broker_as_before(service: str, user: str) -> None:
    environment = COMPOSE["services"][service]["environment"]
    dotenv = {f"DIMSEBUS_{user.upper()}_PASSWORD": "pw"}
    url = interpolate(environment["DIMSEBUS_AMQP_URL"], dotenv)
    assert url == f"amqp://dimsebus-{user}:pw@rabbitmq:5672/"
    assert interpolate(environment["DIMSEBUS_REPLICAS"], dotenv) == ""  # the setting: none


def test_env_example_lists_each_services_cluster_urls() -> None:
    text = (ROOT / ".env.example").read_text()
    for user in USERS.values():
        line = next(x for x in text.splitlines() if f"DIMSEBUS_{user.upper()}_AMQP_URL=" in x)
        assert len(parse_urls(line.split("=", 1)[1])) == 3
