"""``dimsebus tracker`` and ``dimsebus moves list|show|watch``."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from services.clock import new_id, utc_now
from services.console import (
    ConfigOption,
    DbOption,
    HttpPortOption,
    console,
    fail,
    run_service,
    settings_or_exit,
    show_rows,
)
from services.errors import DimsebusError
from services.logs import configure_logging
from services.retrier.app import send_commands
from services.tracker.api import load_views
from services.tracker.app import TrackerSettings, run_tracker
from services.tracker.progress import retry_commands
from services.tracker.store import open_store

moves_app = typer.Typer(
    help="C-MOVEs as the tracker folded them from the log.", no_args_is_help=True
)


def _settings(config: Path | None, **flags: Any) -> TrackerSettings:
    return settings_or_exit(TrackerSettings, config, **flags)


def tracker(
    config: ConfigOption = None,
    db: DbOption = None,
    amqp_url: Annotated[str | None, typer.Option(help="RabbitMQ URL")] = None,
    http_port: HttpPortOption = None,
) -> None:
    """Fold the log into C-MOVE progress; publish progress events; serve /moves and /metrics."""
    configure_logging()
    settings = _settings(config, db=db, amqp_url=amqp_url, http_port=http_port)

    run_service(lambda stop: run_tracker(settings, stop))


def _views(settings: TrackerSettings) -> list[dict[str, Any]]:
    try:
        return load_views(settings)
    except DimsebusError as exc:
        fail(str(exc))


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
    show_rows(
        views,
        as_json=as_json,
        title=f"{len(views)} moves",
        columns=("move", "from", "to", "outcome", "done", "failed", "expected", "started"),
        row=lambda v: (
            v["move_id"][:13],
            v["requestor_ae_title"] or "?",
            v["destination_ae_title"] or "?",
            v["outcome"],
            str(v["counts"]["completed"] + v["counts"]["warning"]),
            str(v["counts"]["failed"]),
            str(v["expected"] or "?"),
            (v["started_at"] or "")[:19],
        ),
    )


@moves_app.command("rejected")
def moves_rejected(
    as_json: Annotated[bool, typer.Option("--json", help="a JSON array")] = False,
    config: ConfigOption = None,
    db: DbOption = None,
) -> None:
    """Log entries the tracker skipped because they are not valid events, and why."""
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
    matches = [
        v for v in _views(_settings(config, db=db)) if v["move_id"].startswith(move_id.lower())
    ]
    if len(matches) != 1:
        fail(f"move id {move_id!r} matches {len(matches)} moves")
    view = matches[0]
    if as_json:
        print(json.dumps(view, indent=2))
        return
    c = view["counts"]
    console.print(
        f"move {view['move_id']}  {view['requestor_ae_title']} -> {view['destination_ae_title']}  "
        f"[bold]{view['outcome']}[/bold]\n"
        f"expected {view['expected']}, completed {c['completed']}, warning {c['warning']}, "
        f"failed {c['failed']}, remaining {c['remaining']}"
    )
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


@moves_app.command("retry")
def moves_retry(
    move_id: Annotated[str, typer.Argument(help="a move id, or a unique prefix of one")],
    config: ConfigOption = None,
    db: DbOption = None,
    amqp_url: Annotated[str | None, typer.Option(help="RabbitMQ URL")] = None,
) -> None:
    """Re-send a move's failed instances now: the node that served it sends them again."""
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
    tasks: dict[str, Any] = {}
    with Live(progress, console=console, refresh_per_second=4):
        try:
            while True:
                for view in _views(settings):
                    c = view["counts"]
                    done = c["completed"] + c["warning"] + c["failed"]
                    total = view["expected"] or max(done, 1)
                    if view["move_id"] not in tasks:
                        if view["outcome"] not in ("in_progress", "retrying", "stalled"):
                            continue
                        peers = f"{view['requestor_ae_title']}->{view['destination_ae_title']}"
                        label = f"{view['move_id'][:8]} {peers}"
                        tasks[view["move_id"]] = progress.add_task(label, total=total, state="")
                    state = f"{view['outcome']} ({c['failed']} failed)"
                    progress.update(
                        tasks[view["move_id"]], completed=done, total=total, state=state
                    )
                time.sleep(interval)
        except KeyboardInterrupt:
            return
