"""The tracker's web page: its list read by SQL (filters, paging, stalled), every peer's text
escaped, and a live feed that stays bounded whatever a browser does."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from dimsebus.services.tracker.progress import MoveState
from dimsebus.services.tracker.settings import TrackerSettings
from dimsebus.services.tracker.store import SqlStore, open_store
from dimsebus.services.tracker.views import live_row, move_view
from dimsebus.services.tracker.web.listing import BadFilter, Filters, parse_filters, read_page
from dimsebus.services.tracker.web.live import Live
from dimsebus.services.tracker.web.pages import Pages, bar
from tests.moves import folded_story

T0 = dt.datetime(2026, 11, 30, 8, tzinfo=dt.UTC)
STALL = dt.timedelta(minutes=5)
NAMES = uuid.UUID("0d7c2a8e-3f7c-4f43-9a57-6a2b1c1f0e11")
HOSTILE_AE = '"><svg onload=1>'
HOSTILE_REASON = "</td><script>alert(1)</script>"


FINISHED = folded_story("n1", 4, T0)  # 4 instances, 2 failed: completed_with_failures


def a_move(number: int, *, requestor: str = "MOVESCU", running: bool = False) -> MoveState:
    """The story's move under another id, started ``number`` minutes after T0."""
    started = T0 + dt.timedelta(minutes=number)
    update: dict[str, Any] = {
        "move_id": uuid.uuid5(NAMES, str(number)),
        "requestor_ae_title": requestor,
        "started_at": started,
        "last_event_at": started + dt.timedelta(seconds=30),
    }
    if running:
        update.update(final_category=None, final_status=None, expected=None, completed_at=None)
    return FINISHED.model_copy(update=update)


def stored(tmp_path: Path, moves: list[MoveState]) -> SqlStore:
    store = open_store(str(tmp_path / "tracker.sqlite"))
    assert isinstance(store, SqlStore)
    store.save(moves, 0)
    return store


def test_the_list_is_newest_first_and_paged_by_sql(tmp_path: Path) -> None:
    # given 120 finished moves
    store = stored(tmp_path, [a_move(n) for n in range(120)])
    now = T0 + dt.timedelta(days=1)
    # when the first and the last page of 50 are read
    first = read_page(store.db, Filters(), now, STALL)
    last = read_page(store.db, Filters(page=3), now, STALL)
    # then the newest come first, and the pages add up
    assert (first.total, first.pages, len(first.rows), len(last.rows)) == (120, 3, 50, 20)
    assert first.rows[0]["move_id"] == str(uuid.uuid5(NAMES, "119"))
    assert last.rows[-1]["move_id"] == str(uuid.uuid5(NAMES, "0"))
    assert first.rows[0]["outcome"] == "completed_with_failures"
    assert first.rows[0]["counts"] == {"remaining": 0, "completed": 2, "warning": 0, "failed": 2}
    assert first.rows[0]["source_ae_title"] == "DIMSEBUS"


def test_filters_by_ae_title_outcome_and_time(tmp_path: Path) -> None:
    moves = [a_move(n, requestor="OTHER" if n % 10 == 0 else "MOVESCU") for n in range(40)]
    moves += [a_move(100 + n, running=True) for n in range(3)]
    store = stored(tmp_path, moves)
    # while the running moves had an event lately, they are in progress
    soon = T0 + dt.timedelta(minutes=103)
    running = read_page(store.db, Filters(outcome="in_progress"), soon, STALL)
    assert running.total == 3
    assert read_page(store.db, Filters(outcome="stalled"), soon, STALL).total == 0
    # once stall_after passed without one, they are stalled (the clock, not a commit, says so)
    later = T0 + dt.timedelta(hours=5)
    assert read_page(store.db, Filters(outcome="stalled"), later, STALL).total == 3
    assert read_page(store.db, Filters(outcome="in_progress"), later, STALL).total == 0
    newest = read_page(store.db, Filters(), later, STALL).rows[0]
    assert newest["outcome"] == "stalled"
    # and each running row says when it turns stalled, for the open page's clock
    last_event = T0 + dt.timedelta(minutes=102, seconds=30)
    assert newest["stalls_at"] == (last_event + STALL).isoformat()
    assert read_page(store.db, Filters(ae="OTHER"), later, STALL).rows[0]["stalls_at"] is None
    assert live_row(a_move(7, running=True), soon, STALL)["stalls_at"] is not None
    assert live_row(a_move(7), soon, STALL)["stalls_at"] is None
    # an AE title in any role
    assert read_page(store.db, Filters(ae="OTHER"), later, STALL).total == 4
    assert read_page(store.db, Filters(ae="STORESCP"), later, STALL).total == 43
    # a time span: started from minute 10, before minute 20
    span = Filters(since=T0 + dt.timedelta(minutes=10), until=T0 + dt.timedelta(minutes=20))
    assert read_page(store.db, span, later, STALL).total == 10
    finished = Filters(outcome="completed_with_failures", ae="OTHER")
    assert read_page(store.db, finished, later, STALL).total == 4


def test_a_page_is_read_through_an_index_not_a_sort_of_every_move(tmp_path: Path) -> None:
    store = stored(tmp_path, [a_move(n) for n in range(10)])
    for filters in (Filters(), Filters(outcome="completed"), Filters(ae="OTHER")):
        plan = _plan(store, filters)
        assert "USING INDEX" in plan or "USING COVERING INDEX" in plan, plan
    assert "TEMP B-TREE" not in _plan(store, Filters())


def _plan(store: SqlStore, filters: Filters) -> str:
    from dimsebus.services.tracker.web import listing

    where, params = listing._where(filters, T0.isoformat())
    rows = store.db.execute(
        f"EXPLAIN QUERY PLAN SELECT summary FROM tracker_moves {where} "
        "ORDER BY started_at DESC, move_id DESC LIMIT 50",
        params,
    )
    return " | ".join(str(row[-1]) for row in rows)


def test_a_bad_filter_is_named() -> None:
    with pytest.raises(BadFilter, match="outcome 'done' is not one of"):
        parse_filters({"outcome": "done"})
    with pytest.raises(BadFilter, match="since 'yesterday' is not a date"):
        parse_filters({"since": "yesterday"})
    with pytest.raises(BadFilter, match="page '0' is not a whole number"):
        parse_filters({"page": "0"})
    assert parse_filters({"since": "2026-11-30T08:00"}).since == T0
    assert Filters(ae="A&B", page=2).query() == "ae=A%26B&page=2"


def test_what_peers_wrote_is_text_on_both_pages(tmp_path: Path) -> None:
    # given a move whose AE titles and a failure's reason are markup (they come from peers)
    move = a_move(1).model_copy(
        update={"requestor_ae_title": HOSTILE_AE, "destination_ae_title": "<b>DEST</b>"}
    )
    failed = next(o for o in move.instances.values() if o.category == "failure")
    hostile = failed.model_copy(update={"reason": HOSTILE_REASON})
    move = move.model_copy(
        update={"instances": {**move.instances, failed.sop_instance_uid: hostile}}
    )
    store = stored(tmp_path, [move])
    store.close()
    pages = Pages(TrackerSettings(db=str(tmp_path / "tracker.sqlite")), None)
    now = T0 + dt.timedelta(days=1)
    # when both pages are rendered
    listed = pages._page(Filters(), now)
    html = pages.html(
        "moves.html", page=listed, filters=Filters(), now=now, live=None, blank=_blank()
    ).text
    view = move_view(move, now, STALL)
    one = pages.move(view).text
    # then the markup is escaped text, on the list and on the move's page
    assert isinstance(one, str)
    assert isinstance(html, str)
    for page in (html, one):
        assert "<svg onload" not in page
        assert "<b>DEST" not in page
        assert "&#34;&gt;&lt;svg onload=1&gt;" in page
    assert "<script>alert" not in one
    # and without a live feed (demo --serve) neither page asks for one
    assert "data-src" not in html
    assert "data-src" not in one
    assert "&lt;/td&gt;&lt;script&gt;alert(1)" in one
    assert pages.move(view).headers["Content-Security-Policy"].startswith("default-src 'none'")


def _blank() -> dict[str, Any]:
    from dimsebus.services.tracker.web.pages import BLANK

    return BLANK


def test_the_bar_counts_done_of_expected() -> None:
    row = live_row(FINISHED, T0, STALL)
    assert bar(row) | {"text": ""} == {
        "ok": 2,
        "warning": 0,
        "failed": 2,
        "done": 4,
        "total": 4,
        "scale": 4,
        "text": "",
    }
    running = live_row(a_move(1, running=True), T0, STALL)
    assert bar(running)["total"] is None
    assert "? remaining" in bar(running)["text"]


async def test_a_commit_reaches_a_subscriber_from_the_trackers_thread() -> None:
    live = Live(lambda move: live_row(move, T0, STALL), coalesce=0.01)
    live.start()
    subscriber = live.subscribe()
    thread = threading.Thread(target=live.committed, args=([a_move(1), a_move(2)],))
    thread.start()
    thread.join()
    found = await asyncio.wait_for(subscriber.next(5.0), 5)
    assert found is not None
    rows, resync = found
    assert sorted(r["move_id"] for r in rows) == sorted(
        str(uuid.uuid5(NAMES, n)) for n in ("1", "2")
    )
    assert not resync
    live.close()
    assert await subscriber.next(5.0) is None


async def test_a_page_that_does_not_read_is_told_to_start_over_not_grown() -> None:
    # given a subscriber that reads nothing while 50 moves change, with room for 10
    live = Live(lambda move: live_row(move, T0, STALL), coalesce=0.0, limit=10)
    live.start()
    subscriber = live.subscribe()
    for number in range(50):
        live.committed([a_move(number)])
    async with asyncio.timeout(5):
        while not subscriber.resync:  # noqa: ASYNC110 - the loop hands the rows over
            await asyncio.sleep(0.005)
    # then it holds at most 10, and is told to start over
    assert len(subscriber.rows) <= 10
    found = await subscriber.next(1.0)
    assert found is not None
    assert found[1] is True
    live.close()


async def test_without_pages_open_a_commit_costs_nothing() -> None:
    made: list[MoveState] = []

    def row_of(move: MoveState) -> dict[str, Any]:
        made.append(move)
        return {}

    live = Live(row_of, coalesce=0.0)
    live.start()
    live.committed([a_move(1)])
    # then nothing was handed to the loop, nor made into a row
    await asyncio.sleep(0)
    assert made == []
    assert live._flush is None
