"""kill -9 of one of two copies of a service: the active tracker, one of two retriers.

The copies share one PostgreSQL database (a schema of the test's own); the invariant
and the Reliability row are the other scenarios' (``scenario.account``).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from dimsebus.schemas import events as ev
from tests.faults.ledger import Tally
from tests.faults.rig import Process, Rig, storescp_answers
from tests.faults.scenario import account, until
from tests.integration.peers import free_port, storescp

pytestmark = pytest.mark.faults
TAKEOVER = 10.0  # seconds within which the standby tracker must be reading the log


async def second_copy(
    rig: Rig, service: str, name: str, edit: dict[str, str], says: str
) -> Process:
    """Another ``service`` of the rig, its config the rig's with the ``edit``ed lines
    (key: TOML line, added first if not there); returns once its log says ``says``."""
    lines = (rig.root / f"{service}.toml").read_text().splitlines()
    for key, line in edit.items():
        at = [n for n, text in enumerate(lines) if text.startswith(f"{key} =")]
        if at:
            lines[at[0]] = line
        else:
            lines.insert(0, line)
    config = rig.root / f"{name}.toml"
    config.write_text("\n".join(lines) + "\n")
    process = rig.service(name, service, "--config", str(config))
    await until(lambda: process.said(says), 60, f"{name} to say {says!r}:\n{process.tail()}")
    return process


async def test_active_tracker_killed_mid_move_the_standby_takes_over(
    postgres_url: str,  # first: its schema is dropped after the rig's processes stopped
    tmp_path: Path,
    make_rig: Callable[..., Rig],
    report: Callable[[Tally], Tally],
) -> None:
    instances = 200
    with storescp(tmp_path / "received") as peer:
        # given two trackers on one PostgreSQL database, the rig's active, the other standing by
        rig = make_rig({"STORESCP": peer.port})
        rig.tracker_store = postgres_url
        rig.write_configs()
        [study] = [rig.add_study(instances, seed="kill-active-tracker")]
        await rig.start()
        outbox = rig.root / "tracker-b-outbox.sqlite"
        edit = {
            "tracker_id": 'tracker_id = "tracker-b"',
            "outbox_path": f'outbox_path = "{outbox}"',
        }
        standby = await second_copy(rig, "tracker", "tracker-b", edit, "tracker is standby")
        # when the active one is killed after 100 C-STOREs of a move
        move = asyncio.create_task(rig.movescu(study, peer.ae_title))
        await until(lambda: len(storescp_answers(peer.log)) >= 100, what="100 C-STOREs")
        await asyncio.to_thread(rig.processes["tracker"].kill)
        killed = time.monotonic()
        assert not move.done(), "the move was over before the tracker was killed"
        # then the standby reads the log from the committed checkpoint within 10 s
        await until(lambda: standby.said("tracker reading dimsebus.log from"), TAKEOVER)
        took = time.monotonic() - killed
        await move
        # and the move is counted exactly once (rig.settled reads the shared store)
        report(
            await account(
                rig,
                peer,
                instances,
                "active tracker killed mid-move",
                f"two trackers on one PostgreSQL: kill -9 of the active one after 100 "
                f"C-STOREs; the standby read on from the checkpoint {took:.1f} s later",
            )
        )


async def test_one_of_two_retriers_killed_while_retries_wait(
    postgres_url: str,  # first: its schema is dropped after the rig's processes stopped
    tmp_path: Path,
    make_rig: Callable[..., Rig],
    report: Callable[[Tally], Tally],
) -> None:
    instances, moves = 20, 3
    later = free_port()  # the destination is down until both retriers have decided
    rig = make_rig(
        {"LATER": later}, policy={"max_attempts": 20, "initial_delay": 2.0, "max_delay": 2.0}
    )
    rig.retrier_store = postgres_url
    rig.write_configs()
    # (a retrier killed between its claim of a decision and its publish holds it 5 s)
    config = rig.root / "retrier.toml"
    config.write_text("claim_lease = 5.0\n" + config.read_text())
    [study] = [rig.add_study(instances, seed="kill-a-retrier")]
    # given two retriers on one PostgreSQL store
    await rig.start()
    edit = {"retrier_id": 'retrier_id = "retrier-b"'}
    await second_copy(rig, "retrier", "retrier-b", edit, "consuming")
    # when three C-MOVEs to a destination that is down fail, and each retrier has scheduled
    # a retry of some, one of them is killed while the retries wait (2 s) in the delay queue
    await asyncio.gather(*(rig.movescu(study, "LATER", f"MOVESCU{n:02d}") for n in (1, 2, 3)))
    first, second = rig.processes["retrier"], rig.processes["retrier-b"]
    await until(lambda: first.said("retry ") and second.said("retry "), 60, "both to retry")
    await asyncio.to_thread(first.kill)
    assert not rig.processes["node"].said("re-sending"), "the retries were not waiting"
    with storescp(tmp_path / "received", ae_title="LATER", port=later) as peer:
        # then every instance arrives, each resend once, and the tracker counts them exactly
        tally = await account(
            rig,
            peer,
            instances * moves,
            "one of two retriers killed",
            f"two retriers on one PostgreSQL; {moves} moves to a destination that is down; "
            "kill -9 of one retrier once both had scheduled retries (waiting 2 s, none sent "
            "yet); destination up",
            moves=moves,
        )
    log = rig.settled_log
    sent = Counter(
        (e.data.operation.id, e.data.affected_sop_instance_uid, e.data.attempt)
        for e in {e.id: e for e in log}.values()
        if isinstance(e, ev.CStoreResponseReceived)
    )
    assert max(sent.values()) == 1, "an instance was resent twice in one attempt"
    unsent = Counter(
        (e.data.operation.id, e.data.sop_instance_uids, e.data.attempt)
        for e in {e.id: e for e in log}.values()
        if isinstance(e, ev.CStoreUnsent)
    )
    assert max(unsent.values()) == 1, "a resend command was executed twice"
    assert {e.source for e in log if isinstance(e, ev.RetryScheduled)} == {
        "dimsebus://retrier/retrier",
        "dimsebus://retrier/retrier-b",
    }
    report(tally)
