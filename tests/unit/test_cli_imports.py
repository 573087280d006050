"""The ``dimsebus`` command's definitions import no service: each command imports what it uses."""

from __future__ import annotations

import json
import subprocess
import sys

from dimsebus.services.bus.relay import NICENESS
from dimsebus.services.node.cli import RELAY_NICENESS
from dimsebus.services.tracker.cli import FINAL_EXIT_CODES
from dimsebus.services.tracker.progress import TERMINAL

HEAVY = ("aiohttp", "pynetdicom", "pydicom", "aio_pika", "aiormq", "psycopg")
"""Libraries that cost most of a start (~1 s of CPU in all), and which ``--help`` needs none of.

Importing the command does not import pydantic either; running one may (typer's own parameter
coercion imports it), so only the import is held to that.
"""

PROBE = """
import json, sys
heavy = json.loads(sys.argv[1])
import dimsebus.services.cli as cli
imported = [name for name in heavy if name in sys.modules]
try:
    cli.main(["--help"])
except SystemExit:
    pass
print(json.dumps({"import": imported, "help": [name for name in heavy if name in sys.modules]}))
"""


def test_importing_the_command_and_its_help_imports_no_heavy_library() -> None:
    # given a fresh interpreter
    # when it imports the command and prints `dimsebus --help`
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps([*HEAVY, "pydantic"])],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    # then none of the heavy libraries was imported
    found = json.loads(probe.stdout.splitlines()[-1])
    assert found["import"] == []
    assert found["help"] in ([], ["pydantic"])


def test_the_options_written_out_to_stay_cheap_match_their_source() -> None:
    assert RELAY_NICENESS == NICENESS
    assert set(FINAL_EXIT_CODES) == TERMINAL
