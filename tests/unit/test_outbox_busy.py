"""The DICOM path's outbox while another connection holds the file's write lock (a relay's
take or remove, met by the DIMSE thread's commit): a method waits for the lock to go,
tried again within about a millisecond, not after SQLite's own sleeps, and gives up after
``BUSY_TIMEOUT``."""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dimsebus.schemas.envelope import CloudEvent
from dimsebus.schemas.examples import move_story, sequential_ids
from dimsebus.services.bus import outbox as outbox_module
from dimsebus.services.bus.outbox import Outbox


def events(count: int) -> list[CloudEvent]:
    story = move_story(node_id="busy", start=dt.datetime(2026, 12, 1, tzinfo=dt.UTC),
                       ids=sequential_ids(), instances=count)  # fmt: skip
    return story[:count]


@contextmanager
def write_locked(path: Path) -> Iterator[sqlite3.Connection]:
    """Another connection holding ``path``'s write lock until the block ends."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield other
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_a_commit_waits_for_another_writer_and_follows_it_closely(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox = Outbox(tmp_path / "o.sqlite", dicom_path=True)
    first, second = events(2)
    done, busy = threading.Event(), threading.Event()
    rolled_back = Outbox._rolled_back

    def met_the_lock(self: Outbox) -> None:
        busy.set()
        rolled_back(self)

    monkeypatch.setattr(Outbox, "_rolled_back", met_the_lock)
    # given another connection holding the write lock
    with write_locked(outbox.path):

        def append() -> None:
            outbox.append([first])
            done.set()

        appending = threading.Thread(target=append)
        appending.start()
        # then a commit meets it, and waits, tried again all the while
        assert busy.wait(5.0)
        assert not done.is_set()
        released = time.monotonic()
    # and follows the lock's release within a few milliseconds, not SQLite's 1, 2, 5 ms...
    assert done.wait(5.0)
    assert time.monotonic() - released < 0.05
    appending.join()
    # and a transaction cut short (a remove's BEGIN, then a busy DELETE) is rolled back and
    # done whole once the lock goes
    (row,) = outbox.take(10, dt.datetime(2026, 12, 1, tzinfo=dt.UTC))
    busy.clear()
    with write_locked(outbox.path):
        removing = threading.Thread(target=outbox.remove, args=([row.seq], [0.001]))
        removing.start()
        assert busy.wait(5.0)
    removing.join(5.0)
    assert not removing.is_alive()
    outbox.append([second])
    assert [r.event_id for r in outbox.peek(10)] == [str(second.id)]
    outbox.close()


def test_a_writer_that_never_lets_go_fails_the_method_after_the_busy_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox_module, "BUSY_TIMEOUT", 0.2)
    outbox = Outbox(tmp_path / "o.sqlite", dicom_path=True)
    with write_locked(outbox.path), pytest.raises(sqlite3.OperationalError, match="locked"):
        outbox.append(events(2)[:1])
    # and the outbox is usable once it does
    outbox.append(events(2)[:1])
    assert outbox.depth() == 1
    outbox.close()
