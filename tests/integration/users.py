"""The broker users of scripts/rabbitmq-users, made for a test in a vhost of their own.

Users are global to the broker: each test run gives them a prefix of its own, and
deletes them afterwards, with their vhost.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest

from tests.broker import Broker, local_rabbitmqctl

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "rabbitmq-users"
ROLES = ("admin", "node", "tracker", "retrier", "audit", "operator")


@dataclass(frozen=True)
class Users:
    """The users the script made: their vhost, name prefix and passwords file."""

    vhost: str
    prefix: str
    secrets: Path
    address: str

    def password(self, role: str) -> str:
        """The password the script generated for ``role``."""
        lines = self.secrets.read_text().splitlines()
        values = dict(line.split("=", 1) for line in lines)
        return values[f"DIMSEBUS_{role.upper()}_PASSWORD"]

    def url(self, role: str) -> str:
        """The AMQP URL of ``role``'s user in the test vhost."""
        user = f"{self.prefix}{role}:{self.password(role)}"
        return f"amqp://{user}@{self.address}/{quote(self.vhost, safe='')}"

    def script(self, *extra: str) -> str:
        """Run the script for these users; its report (stderr)."""
        clean = {
            k: v
            for k, v in os.environ.items()
            if not (k.endswith("_PASSWORD") or k.startswith("RABBITMQ_ADMIN"))
        }
        options = ["--vhost", self.vhost, "--prefix", self.prefix, "--secrets", str(self.secrets)]
        done = subprocess.run(
            [str(SCRIPT), *options, *extra],
            env=clean,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        return done.stderr


@contextlib.contextmanager
def script_users(broker: Broker, directory: Path) -> Iterator[Users]:
    """The script's users in a fresh vhost whose topology dimsebus-admin declared."""
    ctl = local_rabbitmqctl()
    parts = urlsplit(broker.url)
    address = f"{parts.hostname}:{parts.port or 5672}"
    if ctl is None or address not in ("127.0.0.1:5672", "localhost:5672"):
        pytest.fail(f"the user tests run rabbitmqctl on the broker at {address}: none here")
    tag = uuid.uuid4().hex[:8]
    made = Users(f"dimsebus-perm-test-{tag}", f"perm{tag}-", directory / "env", address)
    try:
        made.script()
        declare = ["topology", "declare", "--amqp-url", made.url("admin")]
        subprocess.run(
            [sys.executable, "-m", "dimsebus.services", *declare],
            check=True,
            capture_output=True,
            timeout=60,
        )
        yield made
    finally:
        made.script("--delete")
        with contextlib.suppress(subprocess.CalledProcessError):  # made, unless the script failed
            ctl(["rabbitmqctl", "delete_vhost", made.vhost])
