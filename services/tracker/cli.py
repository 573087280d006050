"""``dimsebus tracker`` and ``dimsebus moves list|show|wait|watch``."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table

from dimsebus.services.console import (
    ConfigOption,
    DbOption,
    HttpPortOption,
    console,
    err,
    fail,
    run_service,
    settings_or_exit,
    show_rows,
    until_interrupted,
)
from dimsebus.services.errors import DimsebusError

if TYPE_CHECKING:  # the store, the fold and the schemas: imported by the command that reads them
    from dimsebus.services.tracker.settings import TrackerSettings
    from dimsebus.services.tracker.store import TrackerStore

moves_app = typer.Typer(
    help="C-MOVEs as the tracker folded them from the log.", no_args_is_help=True
)

FINAL_EXIT_CODES = {"completed": 0, "completed_with_failures": 1, "failed": 1, "cancelled": 1}
"""The outcomes `moves wait` stops at (``progress.TERMINAL``), and its exit status for each
(3 is a timeout); written out so that the command's definition does not import the fold."""
TIMED_OUT = 3
SHORTEST_ID = 8
_MOVE_ID_PREFIX = re.compile(r"[0-9a-fA-F-]{1,36}")


def _settings(config: Path | None, **flags: Any) -> TrackerSettings:
    from dimsebus.services.tracker.settings import TrackerSettings

    return settings_or_exit(TrackerSettings, config, **flags)


def tracker(
    config: ConfigOption = None,
    db: DbOption = None,
    amqp_url: Annotated[str | None, typer.Option(help="RabbitMQ URL")] = None,
    http_port: HttpPortOption = None,
) -> None:
    """Fold the log into C-MOVE progress; publish progress events; serve /moves and /metrics."""
    from dimsebus.services.logs import configure_logging
    from dimsebus.services.tracker.app import collect_less_often, run_tracker

    configure_logging()
    settings = _settings(config, db=db, amqp_url=amqp_url, http_port=http_port)
    collect_less_often()
    run_service(lambda stop: run_tracker(settings, stop))


def _views(settings: TrackerSettings, prefix: str = "") -> list[dict[str, Any]]:
    from dimsebus.services.tracker.api import load_views

    try:
        return load_views(settings, prefix)
    except DimsebusError as exc:
        fail(str(exc))


def id_width(move_ids: list[str], shortest: int = SHORTEST_ID) -> int:
    """How many leading characters tell every one of ``move_ids`` apart (at least ``shortest``).

    UUIDv7 ids begin with their millisecond timestamp, so moves started close
    together share many leading characters. A prefix never ends on a dash.
    """
    ordered = sorted(set(move_ids))
    width = max([shortest, *(_shared(a, b) + 1 for a, b in itertools.pairwise(ordered))])
    while any(move_id[width - 1 : width] == "-" for move_id in ordered):
        width += 1
    return width


def _shared(a: str, b: str) -> int:
    """How many leading characters ``a`` and ``b`` have in common."""
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def _print_table(table: Table) -> None:
    """A table as wide as it needs when the output is a file or a pipe (nothing cut short)."""
    if console.is_terminal:
        console.print(table)
        return
    wide = console.measure(table, options=console.options.update_width(10_000)).maximum
    Console(width=max(wide, console.width), highlight=False).print(table)


@moves_app.command("list")
def moves_list(
    status: Annotated[str | None, typer.Option(help="only moves with this outcome")] = None,
    ae: Annotated[str | None, typer.Option(help="only moves from or to this AE title")] = None,
    since: Annotated[
        dt.datetime | None, typer.Option(help="only moves started at or after (UTC)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="a JSON array")] = False,
    config: ConfigOption = None,
    db: DbOption = None,
) -> None:
    """Moves, oldest first, filtered by outcome, AE title and start time."""
    from dimsebus.services.tracker.views import as_text

    views = _views(_settings(config, db=db))
    if status:
        views = [v for v in views if v["outcome"] == status]
    if ae:
        views = [v for v in views if ae in (v["requestor_ae_title"], v["destination_ae_title"])]
    if since:
        limit = since if since.tzinfo else since.replace(tzinfo=dt.UTC)
        views = [
            v
            for v in views
            if v["started_at"] and dt.datetime.fromisoformat(v["started_at"]) >= limit
        ]
    if as_json:
        print(json.dumps(views, indent=2))
        return
    width = id_width([v["move_id"] for v in views])
    table = Table(title=f"{len(views)} moves")
    table.add_column("move", no_wrap=True, min_width=width)  # never cut: `moves show` takes it
    for column in ("from", "to", "outcome", "done", "failed", "expected", "started"):
        table.add_column(column)
    for v in views:
        table.add_row(
            v["move_id"][:width],
            as_text(v["requestor_ae_title"]),
            as_text(v["destination_ae_title"]),
            v["outcome"],
            str(v["counts"]["completed"] + v["counts"]["warning"]),
            str(v["counts"]["failed"]),
            as_text(v["expected"]),  # a move that matched nothing expects 0, not ?
            (v["started_at"] or "")[:19],
        )
    _print_table(table)


@moves_app.command("rejected")
def moves_rejected(
    as_json: Annotated[bool, typer.Option("--json", help="a JSON array")] = False,
    config: ConfigOption = None,
    db: DbOption = None,
) -> None:
    """Log entries the tracker skipped because they are not valid events, and why."""
    from dimsebus.services.tracker.store import open_store

    settings = _settings(config, db=db)
    store = open_store(settings.db)
    try:
        rows = [
            {"offset": r.offset, "routing_key": r.routing_key, "reason": r.reason}
            for r in store.rejected()
        ]
    finally:
        store.close()
    show_rows(
        rows,
        as_json=as_json,
        title=f"{len(rows)} log entries skipped",
        columns=("offset", "routing key", "reason"),
        row=lambda r: (str(r["offset"]), r["routing_key"], r["reason"]),
    )


@moves_app.command("show")
def moves_show(
    move_id: Annotated[str, typer.Argument(help="a move id, or a unique prefix of one")],
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object")] = False,
    config: ConfigOption = None,
    db: DbOption = None,
) -> None:
    """One move: counts, outcome, failed instances with their statuses, and its timeline."""
    matches = _views(_settings(config, db=db), move_id)
    if len(matches) != 1:
        fail(f"move id {move_id!r} matches {len(matches)} moves")
    view = matches[0]
    if as_json:
        print(json.dumps(view, indent=2))
        return
    _print_summary(view)
    if view["failed_instances"]:
        table = Table(title="failed instances")
        for column in ("SOP instance", "status", "attempts", "reason", "retry"):
            table.add_column(column)
        for f in view["failed_instances"]:
            retry = (
                f"gave up: {f['gave_up']}"
                if f.get("gave_up")
                else f"next at {f['next_attempt_at'][11:19]}"
                if f.get("next_attempt_at")
                else "-"
            )
            table.add_row(
                f["sop_instance_uid"], f["status"] or "-", str(f["attempts"]), f["reason"], retry
            )
        console.print(table)
    if view["retried_instances"]:
        retried = Table(title="retried instances")
        for column in ("SOP instance", "attempts", "latest result"):
            retried.add_column(column)
        for r in view["retried_instances"]:
            retried.add_row(r["sop_instance_uid"], str(r["attempts"]), r["reason"])
        console.print(retried)
    timeline = Table(title="timeline")
    timeline.add_column("at")
    timeline.add_column("what")
    for entry in view["timeline"]:
        timeline.add_row(entry["at"], entry["what"])
    console.print(timeline)


@moves_app.command("wait")
def moves_wait(
    move_id: Annotated[str, typer.Argument(help="a move id, or a unique prefix of one")],
    timeout: Annotated[
        float | None, typer.Option(help="give up after this many seconds (exit 3)")
    ] = None,
    interval: Annotated[float, typer.Option(help="seconds between reads of the store")] = 0.2,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object")] = False,
    config: ConfigOption = None,
    db: DbOption = None,
) -> None:
    """Wait for a move's final outcome: exit 0 completed, 1 otherwise, 3 on timeout.

    Final is completed (0), completed_with_failures, failed or cancelled (1). It
    reads the tracker's committed state, as `moves show` does, every
    ``--interval``: a move in any other state (in progress, retrying, stalled)
    is waited for, and so is an id the tracker has not folded yet.
    """
    from dimsebus.services.tracker.store import open_store

    settings = _wait_settings(move_id, timeout, interval, config, db)
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        store = open_store(settings.db)  # one connection for every read
    except DimsebusError as exc:
        fail(str(exc))
    try:
        view = _final_view(store, settings, move_id, deadline, interval)
    finally:
        store.close()
    if view is None or view["outcome"] not in FINAL_EXIT_CODES:
        _timed_out(move_id, view, timeout, as_json)
    _print_view(view, as_json)
    raise typer.Exit(FINAL_EXIT_CODES[view["outcome"]])


def _final_view(
    store: TrackerStore,
    settings: TrackerSettings,
    move_id: str,
    deadline: float | None,
    interval: float,
) -> dict[str, Any] | None:
    """The move once its outcome is final, or as it is at ``deadline`` (None: unknown).

    Each state it waits in is one line on stderr (stdout is the final state's).
    """
    from dimsebus.services.clock import utc_now
    from dimsebus.services.tracker.views import move_view

    stall, said = dt.timedelta(seconds=settings.stall_after), ""
    while True:
        found = store.moves_starting_with(move_id)
        if len(found) > 1:
            fail(f"move id {move_id!r} matches {len(found)} moves")
        view = move_view(found[0], utc_now(), stall) if found else None
        state = (
            f"move {view['move_id']} is {view['outcome']}"
            if view
            else f"no move matches {move_id!r} yet"
        )
        if state != said and (view is None or view["outcome"] not in FINAL_EXIT_CODES):
            err.print(f"waiting: {state}", highlight=False, soft_wrap=True)
            said = state
        left = None if deadline is None else deadline - time.monotonic()
        if (view is not None and view["outcome"] in FINAL_EXIT_CODES) or (
            left is not None and left <= 0
        ):
            return view
        time.sleep(interval if left is None else min(interval, left))


def _wait_settings(
    move_id: str, timeout: float | None, interval: float, config: Path | None, db: str | None
) -> TrackerSettings:
    """The settings `moves wait` reads; a bad argument is one line and exit 2."""
    if not _MOVE_ID_PREFIX.fullmatch(move_id):
        fail(f"move id {move_id!r} is not a move id or a prefix of one")
    if timeout is not None and timeout < 0:
        fail(f"--timeout {timeout} must be 0 or more seconds")
    if interval <= 0:
        fail(f"--interval {interval} must be more than 0 seconds")
    settings = _settings(config, db=db)
    is_url = settings.db.startswith(("postgresql://", "postgres://"))
    if not is_url and not Path(settings.db).exists():  # not create an empty one and wait forever
        fail(f"--db {settings.db!r}: no tracker database there")
    return settings


def _print_view(view: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(view, indent=2))
    else:
        _print_summary(view)


def _timed_out(
    move_id: str, view: dict[str, Any] | None, timeout: float | None, as_json: bool
) -> NoReturn:
    if view is None:
        err.print(f"timed out after {timeout} s: no move matches {move_id!r} yet", highlight=False)
    else:
        _print_view(view, as_json)
        err.print(
            f"timed out after {timeout} s: move {view['move_id']} is {view['outcome']}",
            highlight=False,
        )
    raise typer.Exit(TIMED_OUT)


def _print_summary(view: dict[str, Any]) -> None:
    from dimsebus.services.tracker.views import as_text

    c = {name: as_text(count) for name, count in view["counts"].items()}
    console.print(
        f"move {view['move_id']}  {as_text(view['requestor_ae_title'])} -> "
        f"{as_text(view['destination_ae_title'])}  [bold]{view['outcome']}[/bold]\n"
        f"expected {as_text(view['expected'])}, completed {c['completed']}, "
        f"warning {c['warning']}, failed {c['failed']}, remaining {c['remaining']}",
        highlight=False,
        soft_wrap=True,  # one line per fact, however narrow the terminal: scripts read it
    )


@moves_app.command("retry")
def moves_retry(
    move_id: Annotated[str, typer.Argument(help="a move id, or a unique prefix of one")],
    config: ConfigOption = None,
    db: DbOption = None,
    amqp_url: Annotated[str | None, typer.Option(help="RabbitMQ URL")] = None,
) -> None:
    """Re-send a move's failed instances now: the node that served it sends them again."""
    import asyncio

    from dimsebus.services.clock import new_id, utc_now
    from dimsebus.services.resends import send_commands
    from dimsebus.services.tracker.progress import retry_commands
    from dimsebus.services.tracker.store import open_store

    settings = _settings(config, db=db, amqp_url=amqp_url)
    try:
        store = open_store(settings.db)
        move = store.find(move_id)
        store.close()
    except DimsebusError as exc:
        fail(str(exc))
    if move is None:
        fail(f"move id {move_id!r} matches no move, or more than one")
    commands = retry_commands(
        move, f"dimsebus://cli/{settings.tracker_id}", utc_now(), iter(new_id, None)
    )
    if not commands:
        fail(f"move {move.move_id} has no failed instances to retry")
    try:
        asyncio.run(send_commands(settings, commands))
    except DimsebusError as exc:
        fail(str(exc))
    count = sum(len(c.data.sop_instance_uids) for c in commands)
    console.print(
        f"asked node {move.node_id} to re-send {count} instance(s) of move {move.move_id}"
    )


@moves_app.command("watch")
def moves_watch(
    interval: Annotated[float, typer.Option(help="seconds between refreshes", min=0.1)] = 0.5,
    config: ConfigOption = None,
    db: DbOption = None,
) -> None:
    """Live progress bars, one per move that is not finished (Ctrl-C to stop)."""
    settings = _settings(config, db=db)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[state]}"),
    )
    tasks: dict[str, TaskID] = {}
    with until_interrupted() as stop, Live(progress, console=console, refresh_per_second=4):
        while not stop.is_set():
            _draw(progress, tasks, _views(settings))
            stop.wait(interval)


def _draw(progress: Progress, tasks: dict[str, TaskID], views: list[dict[str, Any]]) -> None:
    """One refresh: a bar per move not finished when first seen, labelled by a unique prefix."""
    width = id_width([v["move_id"] for v in views])
    for view in views:
        move_id, c = view["move_id"], view["counts"]
        if move_id not in tasks and view["outcome"] in FINAL_EXIT_CODES:
            continue
        done = c["completed"] + c["warning"] + c["failed"]
        total = view["expected"] or max(done, 1)
        label = f"{move_id[:width]} {view['requestor_ae_title']}->{view['destination_ae_title']}"
        if move_id not in tasks:
            tasks[move_id] = progress.add_task(label, total=total, state="")
        state = f"{view['outcome']} ({c['failed']} failed)"
        progress.update(tasks[move_id], description=label, completed=done, total=total, state=state)
