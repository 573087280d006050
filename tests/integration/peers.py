"""Real DICOM peers for the tests: dcmtk's tools (from /usr/bin, not pynetdicom's namesakes)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DCMTK = Path("/usr/bin")
ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def dcmtk(tool: str) -> str:
    """The path of a dcmtk tool; fails clearly when dcmtk is not installed."""
    path = DCMTK / tool
    assert path.exists(), f"{path} missing: install Debian's dcmtk (make system)"
    return str(path)


@dataclass
class StoreSCP:
    """A running dcmtk storescp."""

    ae_title: str
    port: int
    folder: Path
    log: Path
    process: subprocess.Popen[bytes]

    def files(self) -> list[Path]:
        """The instances it stored."""
        return sorted(p for p in self.folder.rglob("*") if p.is_file())


@contextlib.contextmanager
def storescp(
    folder: Path, *options: str, ae_title: str = "STORESCP", port: int | None = None
) -> Iterator[StoreSCP]:
    """Run ``storescp -d`` (debug: logs every command set) until the block ends, on
    ``port`` or a free one (``on_a_free_port``)."""
    folder.mkdir(parents=True, exist_ok=True)
    argv = [dcmtk("storescp"), "-d", "-aet", ae_title, "-od", str(folder), *options]

    def start(chosen: int) -> subprocess.Popen[bytes]:
        with (folder.parent / f"storescp-{chosen}.log").open("ab") as out:
            return subprocess.Popen(
                [*argv, str(chosen)], stdout=out, stderr=subprocess.STDOUT, env=ENV
            )

    with on_a_free_port(start, port, f"storescp (logs in {folder.parent})") as (chosen, process):
        log = folder.parent / f"storescp-{chosen}.log"
        yield StoreSCP(ae_title, chosen, folder, log, process)


@contextlib.contextmanager
def on_a_free_port(
    start: Callable[[int], subprocess.Popen[bytes]], port: int | None, what: str
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """``start(port)``, once it listens; terminated when the block ends.

    A free port can be taken by another test worker before the peer binds it: without
    ``port``, a peer that exits before it listens on the one chosen for it starts again
    on another (three tries); its exit ends each wait at once (``PeerExited``).
    """
    for _ in range(3):
        chosen = port or free_port()
        process = start(chosen)
        try:
            wait_for_port(chosen, process=process)
        except PeerExited:
            if port is not None:
                raise
            continue
        try:
            yield chosen, process
        finally:
            process.terminate()
            process.wait(timeout=10)
        return
    raise AssertionError(f"{what} did not start on three free ports")


class PeerExited(AssertionError):
    """A peer process ended before it listened (its log says why)."""


def wait_for_port(
    port: int, within: float = 10.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Block until something accepts connections on ``port``; ``process``, when given,
    is the one that should: its exit ends the wait at once (``PeerExited``)."""
    import time

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise PeerExited(f"the peer for port {port} exited ({process.returncode})")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.5),
        ):
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port}")


async def run_tool(*argv: str, within: float = 120.0) -> str:
    """Run a dcmtk tool to completion without blocking the event loop; returns its output."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=ENV
    )
    output, _ = await asyncio.wait_for(process.communicate(), within)
    return output.decode(errors="replace")


@contextlib.contextmanager
def small_filesystem(folder: Path, files: int) -> Iterator[Path]:
    """A tmpfs on ``folder`` with room for ``files`` files (needs root, as in CI).

    The limit is on inodes, not bytes: a full tmpfs still lets storescp create
    empty files without an error, but a file that cannot be created is refused.
    """
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size=8m,nr_inodes={files + 1}"
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def make_room(folder: Path, files: int = 100_000) -> None:
    """Give a ``small_filesystem`` room for ``files`` more files, as freeing space would."""
    subprocess.run(["mount", "-o", f"remount,nr_inodes={files}", str(folder)], check=True)


@contextlib.contextmanager
def answering_scp(status_for: Callable[[str], int], ae_title: str = "ODDSCP") -> Iterator[int]:
    """A pynetdicom Storage SCP that answers each C-STORE with ``status_for(sop_instance_uid)``.

    For statuses dcmtk's storescp cannot be made to send; yields its port.
    """
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    ae = AE(ae_title=ae_title)
    ae.supported_contexts = AllStoragePresentationContexts
    port = free_port()

    def on_store(event: Any) -> int:
        return status_for(str(event.request.AffectedSOPInstanceUID))

    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        yield port
    finally:
        assert server is not None
        server.shutdown()


@contextlib.contextmanager
def refusing_scp(ae_title: str = "STORESCP", port: int | None = None) -> Iterator[int]:
    """A pynetdicom SCP that rejects every association for good; yields its port.

    The A-ASSOCIATE-RJ is rejected-permanent, service user, calling AE title not
    recognised (PS3.8 9.3.4). Not dcmtk's ``storescp --refuse``: it drops the connection
    right after its A-ASSOCIATE-RJ, and about one association in seven (15 of 100 on the
    development machine) pynetdicom sees that as a lost connection, an abort, instead of
    the rejection: the node then reports a transient failure, which is retried, and no
    rejection that the audit trail would alert on.
    """
    from pynetdicom import AE, AllStoragePresentationContexts

    ae = AE(ae_title=ae_title)
    ae.supported_contexts = AllStoragePresentationContexts
    ae.require_calling_aet = ["NOBODY"]
    port = port or free_port()
    server = ae.start_server(("127.0.0.1", port), block=False)
    try:
        yield port
    finally:
        assert server is not None
        server.shutdown()


@dataclass
class Rsyslog:
    """A running rsyslogd that takes syslog over TCP on loopback and writes what it got."""

    port: int
    received: Path
    process: subprocess.Popen[bytes]

    def messages(self) -> list[bytes]:
        """Each message as received (the syslog header, then the XML), one per line."""
        if not self.received.exists():
            return []
        return [line for line in self.received.read_bytes().splitlines() if line]


@contextlib.contextmanager
def rsyslog(folder: Path, port: int | None = None) -> Iterator[Rsyslog]:
    """Debian's rsyslogd in the foreground, listening with imtcp on 127.0.0.1:``port``.

    Without ``port``, on a free one (``on_a_free_port``).
    """
    daemon = Path("/usr/sbin/rsyslogd")
    assert daemon.exists(), f"{daemon} missing: install Debian's rsyslog (make system)"
    folder.mkdir(parents=True, exist_ok=True)
    received = folder / "received.log"

    def start(chosen: int) -> subprocess.Popen[bytes]:
        config = folder / f"rsyslog-{chosen}.conf"
        config.write_text(
            f'global(workDirectory="{folder}" maxMessageSize="256k")\n'
            'module(load="imtcp")\n'
            f'input(type="imtcp" address="127.0.0.1" port="{chosen}")\n'
            'template(name="raw" type="string" string="%rawmsg%\\n")\n'
            f'*.* action(type="omfile" file="{received}" template="raw")\n'
        )
        pid_file = folder / f"rsyslog-{chosen}.pid"
        with (folder / f"rsyslog-{chosen}.err").open("ab") as errors:
            return subprocess.Popen(
                [str(daemon), "-n", "-f", str(config), "-i", str(pid_file)],
                stdout=subprocess.DEVNULL,
                stderr=errors,
            )

    with on_a_free_port(start, port, f"rsyslogd (see {folder})") as (chosen, process):
        yield Rsyslog(chosen, received, process)
