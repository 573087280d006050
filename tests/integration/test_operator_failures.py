"""Operator mistakes at start-up: one line, exit 2, and no process left behind (issue 19).

Each service runs as the operator runs it, ``python -m dimsebus.services ...``; what is left
behind is read from /proc (a relay is found by its parent and its outbox path).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dimsebus.services.bus.lifeline import PARENT_VARIABLE
from tests.broker import Broker, with_vhost
from tests.integration.peers import free_port

pytestmark = pytest.mark.integration
SERVICES = [sys.executable, "-m", "dimsebus.services"]
RELAY_GONE_WITHIN = 1.0
"""Seconds a relay may outlive its parent (issue 19)."""


def run(argv: list[str], env: dict[str, str], within: float = 60) -> tuple[int, list[str]]:
    """Run a ``dimsebus`` command to its end: exit status, and its output's lines."""
    done = subprocess.run(
        [*SERVICES, *argv],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=within,
        check=False,
    )
    return done.returncode, (done.stdout + done.stderr).splitlines()


def assert_one_line(code: int, lines: list[str], *words: str) -> None:
    """Exit 2, one line of output that names ``words``, no traceback."""
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    for word in words:
        assert word in lines[0], lines


def node_env(folder: Path, amqp_url: str, **more: str) -> dict[str, str]:
    """A node's settings under ``folder``, as variables."""
    return {
        "DIMSEBUS_AMQP_URL": amqp_url,
        "DIMSEBUS_OUTBOX_PATH": str(folder / "outbox.sqlite"),
        "DIMSEBUS_ARCHIVE_PATH": str(folder / "archive"),
        **more,
    }


# -- the facts about processes, from /proc --------------------------------------------------


def gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie waiting for its reaper counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def processes_naming(text: str) -> list[int]:
    """Live processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in argv and not gone(int(entry.name)):
            found.append(int(entry.name))
    return found


def relays_of(outbox: Path) -> list[int]:
    """The relay processes of ``outbox`` (``python -m ... outbox relay --outbox PATH``)."""
    relays = []
    for pid in processes_naming(f"outbox relay --outbox {outbox} "):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1] == b"-m":
                relays.append(pid)
    return relays


def wait_for(check: Callable[[], bool], within: float, what: str) -> None:
    """Poll ``check`` until it holds, or fail naming ``what``."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        time.sleep(0.02)


def locked(path: Path) -> bool:
    """True while another process holds the (relay) lock file ``path``."""
    if not path.exists():
        return False
    with path.open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock, fcntl.LOCK_UN)
        return False


def holds_open(pid: int, path: Path) -> bool:
    """True while process ``pid`` has ``path`` open."""
    try:
        return any(os.readlink(fd) == str(path) for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test started; killed if the test did not, and so is anything of its own
    left running (a relay of a failed test's outbox)."""
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait(10)
    for pid in processes_naming(str(tmp_path)):
        if pid != os.getpid():
            os.kill(pid, signal.SIGKILL)


def spawn(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start a long-running ``dimsebus`` command in the background."""
    return subprocess.Popen(
        [*SERVICES, *argv],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


# -- the broker refuses the URL -------------------------------------------------------------


@pytest.mark.parametrize("service", ["node", "tracker", "retrier", "audit"])
def test_a_vhost_that_does_not_exist_fails_the_start_with_the_brokers_reason(
    service: str, tmp_path: Path, amqp_url: str
) -> None:
    # given a URL naming a vhost the broker does not have
    vhost = f"no-such-{uuid.uuid4().hex[:8]}"
    env = node_env(tmp_path, with_vhost(amqp_url, vhost))
    argv = {
        "node": ["node", "--port", str(free_port())],
        "tracker": ["tracker", "--db", str(tmp_path / "tracker.sqlite")],
        "retrier": ["retrier"],
        "audit": ["audit", "--db", str(tmp_path / "audit.sqlite")],
    }[service]
    if service == "retrier":
        env["DIMSEBUS_DB"] = str(tmp_path / "retrier.sqlite")
    # when the service starts, then it stops at once with the broker's own reason
    code, lines = run(argv, env)
    assert_one_line(code, lines, "530", "NOT_ALLOWED", f"vhost {vhost} not found", "guest:***@")
    # and it left no relay behind
    assert relays_of(tmp_path / "outbox.sqlite") == []


# -- paths that cannot hold an outbox or an archive -----------------------------------------


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda folder: folder.mkdir(), "is a directory"),
        (lambda folder: folder.write_text("not a database, a note\n" * 10), "is not an SQLite"),
        (None, "cannot be created"),
    ],
    ids=["a directory", "not SQLite", "under /proc"],
)
def test_an_outbox_that_cannot_be_one_is_named_in_one_line(
    make: Callable[[Path], object] | None, why: str, tmp_path: Path, amqp_url: str
) -> None:
    # given an outbox path that is a folder, another kind of file, or in /proc
    outbox = tmp_path / "outbox.sqlite" if make else Path(f"/proc/dimsebus-{uuid.uuid4().hex}")
    if make:
        make(outbox)
    env = node_env(tmp_path, amqp_url, DIMSEBUS_OUTBOX_PATH=str(outbox))
    # when the node starts, then one line names the path and why
    code, lines = run(["node", "--port", str(free_port())], env)
    assert_one_line(code, lines, f"outbox {str(outbox)!r}", why)


def test_an_archive_under_proc_is_named_in_one_line(tmp_path: Path, amqp_url: str) -> None:
    archive = Path(f"/proc/dimsebus-{uuid.uuid4().hex}")
    env = node_env(tmp_path, amqp_url, DIMSEBUS_ARCHIVE_PATH=str(archive))
    code, lines = run(["node", "--port", str(free_port())], env)
    assert_one_line(code, lines, f"archive_path {str(archive)!r}", "cannot be used")
    assert relays_of(tmp_path / "outbox.sqlite") == []


# -- a port already in use ------------------------------------------------------------------


def test_a_port_in_use_is_one_line_and_leaves_no_relay(tmp_path: Path, amqp_url: str) -> None:
    # given a port something else listens on
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = node_env(tmp_path, amqp_url, DIMSEBUS_HOST="127.0.0.1")
        # when a node starts on it, then one line says so
        code, lines = run(["node", "--port", str(port)], env)
    assert_one_line(code, lines, f"port {port} on 127.0.0.1 is in use")
    # and no relay of its outbox runs (nor starts late)
    assert relays_of(tmp_path / "outbox.sqlite") == []


def test_a_second_node_on_the_same_port_and_outbox_leaves_the_first_ones_relay_alone(
    tmp_path: Path, amqp_url: str, started: list[subprocess.Popen[bytes]]
) -> None:
    # given a node running, with its relay holding the outbox's lock
    port = free_port()
    env = node_env(tmp_path, amqp_url, DIMSEBUS_HOST="127.0.0.1")
    outbox = tmp_path / "outbox.sqlite"
    first = spawn(["node", "--port", str(port)], env)
    started.append(first)
    wait_for(lambda: len(relays_of(outbox)) == 1, 30, "the first node's relay")
    [relay] = relays_of(outbox)
    # when the same configuration is started again
    code, lines = run(["node", "--port", str(port)], env)
    # then it says why it cannot start, and the first node's relay is the only one
    assert_one_line(code, lines, f"port {port} on 127.0.0.1 is in use")
    assert relays_of(outbox) == [relay]
    # and when the first node is killed, its relay follows it
    first.kill()
    wait_for(lambda: gone(relay), 30 + RELAY_GONE_WITHIN, "the relay gone after its node")


# -- kill -9 of a service: its relay stops within a second ----------------------------------


@pytest.mark.parametrize("when", ["starting", "publishing"])
@pytest.mark.parametrize("service", ["node", "tracker"])
def test_kill_9_of_a_service_stops_its_relay_within_a_second(
    service: str,
    when: str,
    tmp_path: Path,
    amqp_url: str,
    started: list[subprocess.Popen[bytes]],
) -> None:
    # given a service whose relay has just been started, or holds its outbox's lock
    outbox = tmp_path / "outbox.sqlite"
    argv = {
        "node": ["node", "--port", str(free_port())],
        "tracker": ["tracker", "--db", str(tmp_path / "tracker.sqlite")],
    }[service]
    process = spawn(argv, node_env(tmp_path, amqp_url))
    started.append(process)
    wait_for(lambda: len(relays_of(outbox)) == 1, 30, f"the {service}'s relay")
    [relay] = relays_of(outbox)
    if when == "publishing":
        lock = outbox.parent / f"{outbox.name}.relay.lock"
        wait_for(lambda: locked(lock), 30, "the relay holding its lock")
    # when the service is killed with SIGKILL
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)
    # then its relay exits within a second
    wait_for(lambda: gone(relay), RELAY_GONE_WITHIN, f"the {service}'s relay {relay} gone")


def test_a_relay_waiting_for_the_lock_stops_when_its_parent_dies(
    tmp_path: Path, amqp_url: str, started: list[subprocess.Popen[bytes]]
) -> None:
    # given a relay whose parent records itself and is then killed, with no death signal
    # asked for (the portable fallback: the relay polls for its parent), while another
    # process holds the outbox's relay lock
    outbox = tmp_path / "outbox.sqlite"
    lock_path = tmp_path / "outbox.sqlite.relay.lock"
    lock = lock_path.open("w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    outbox.touch()
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, subprocess, sys, time\n"
            f"env = {{**os.environ, {PARENT_VARIABLE!r}: str(os.getpid())}}\n"
            "subprocess.Popen(sys.argv[1:], env=env)\n"
            "time.sleep(120)\n",
            *SERVICES,
            *("outbox", "relay", "--outbox", str(outbox), "--niceness", "0"),
        ],
        env={**os.environ, **node_env(tmp_path, amqp_url)},
    )
    started.append(parent)
    wait_for(lambda: len(relays_of(outbox)) == 1, 30, "the relay")
    [relay] = relays_of(outbox)
    wait_for(lambda: holds_open(relay, lock_path), 30, "the relay waiting for the lock")
    # when its parent is killed
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(10)
    # then the relay stops within a second, though it never got the lock
    try:
        wait_for(lambda: gone(relay), RELAY_GONE_WITHIN, f"the waiting relay {relay} gone")
    finally:
        lock.close()


# -- two demos ------------------------------------------------------------------------------


def test_a_second_demo_sees_nothing_of_the_first(tmp_path: Path, broker: Broker) -> None:
    # given a demo that ran to its end on this broker
    env = {"AMQP_URL": broker.url, "DIMSEBUS_AMQP_URL": broker.url}
    demo = ["demo", "--non-interactive", "--instances", "10"]
    code, first = run([*demo, "--workdir", str(tmp_path / "first")], env, within=240)
    assert code == 0, first
    # when a second demo runs after it, on the same broker and URL
    second_started = dt.datetime.now(dt.UTC)
    code, second = run([*demo, "--workdir", str(tmp_path / "second")], env, within=240)
    assert code == 0, second
    # then each ran in a vhost of its own, and the second one's audit trail holds
    # only events of its own run
    vhosts = [_demo_vhost(first), _demo_vhost(second)]
    try:
        assert vhosts[0] != vhosts[1]
        with sqlite3.connect(tmp_path / "second" / "audit.sqlite") as db:
            times = [dt.datetime.fromisoformat(t) for (t,) in db.execute(AUDITED_TIMES)]
        assert times
        assert min(times) >= second_started, "the second demo audited earlier events"
    finally:
        if broker.ctl is not None:
            for vhost in vhosts:
                broker.ctl(["rabbitmqctl", "delete_vhost", vhost])


AUDITED_TIMES = "SELECT event_time FROM audit_records"


def _demo_vhost(lines: list[str]) -> str:
    [said] = [line for line in lines if "vhost of its own," in line]
    return said.split("vhost of its own, ")[1].split()[0]


def test_a_demo_whose_url_the_broker_refuses_says_so_instead_of_starting_a_broker(
    tmp_path: Path, amqp_url: str
) -> None:
    url = with_vhost(amqp_url, f"no-such-{uuid.uuid4().hex[:8]}")
    env = {"AMQP_URL": url, "DIMSEBUS_AMQP_URL": url}
    code, lines = run(["demo", "--non-interactive", "--workdir", str(tmp_path)], env)
    assert_one_line(code, lines, "530 NOT_ALLOWED", "not found")
