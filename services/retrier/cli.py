"""``dimsebus retrier`` and ``dimsebus retries list|requeue|purge``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dimsebus.services.console import (
    ConfigOption,
    HttpPortOption,
    console,
    fail,
    run_service,
    settings_or_exit,
    show_rows,
)
from dimsebus.services.errors import DimsebusError

if TYPE_CHECKING:  # aio-pika and the store: imported by the command that uses them
    from dimsebus.services.retrier.app import RetrierSettings
    from dimsebus.services.retrier.decisions import RetryItem

retries_app = typer.Typer(
    help="Scheduled and parked retries, as the retrier decided them.", no_args_is_help=True
)

DbOption = Annotated[
    str | None, typer.Option("--db", help="the retrier's SQLite file, or a postgresql:// URL")
]
AmqpOption = Annotated[str | None, typer.Option("--amqp-url", help="RabbitMQ URL")]


def _settings(config: Path | None, **flags: Any) -> RetrierSettings:
    from dimsebus.services.retrier.app import RetrierSettings

    policy = {name: value for name, value in flags.pop("policy", {}).items() if value is not None}
    if policy:
        flags["policy"] = policy
    return settings_or_exit(RetrierSettings, config, **flags)


def retrier(
    config: ConfigOption = None,
    db: DbOption = None,
    amqp_url: AmqpOption = None,
    max_attempts: Annotated[int | None, typer.Option(help="attempts in all")] = None,
    initial_delay: Annotated[float | None, typer.Option(help="seconds before attempt 2")] = None,
    multiplier: Annotated[float | None, typer.Option(help="growth of each delay")] = None,
    max_delay: Annotated[float | None, typer.Option(help="longest delay, seconds")] = None,
    jitter: Annotated[float | None, typer.Option(help="delays vary by this fraction")] = None,
    retry_on_warning: Annotated[
        bool | None, typer.Option("--retry-on-warning/--no-retry-on-warning")
    ] = None,
    http_port: HttpPortOption = None,
) -> None:
    """Decide on every failed sub-operation: retry it later (held by RabbitMQ) or park it."""
    from dimsebus.services.logs import configure_logging
    from dimsebus.services.retrier.app import run_retrier

    configure_logging()
    settings = _settings(
        config,
        db=db,
        amqp_url=amqp_url,
        http_port=http_port,
        policy={
            "max_attempts": max_attempts,
            "initial_delay": initial_delay,
            "multiplier": multiplier,
            "max_delay": max_delay,
            "jitter": jitter,
            "retry_on_warning": retry_on_warning,
        },
    )

    run_service(lambda stop: run_retrier(settings, stop))


def _view(item: RetryItem) -> dict[str, Any]:
    from dimsebus.services.clock import utc_now

    data = item.data
    waiting = item.state == "scheduled" and item.retry_at is not None and item.retry_at > utc_now()
    return {
        "id": str(item.id),
        "state": ("waiting" if waiting else "sent") if item.state == "scheduled" else item.state,
        "node_id": data.node_id,
        "operation": {"kind": data.operation.kind, "id": str(data.operation.id)},
        "destination_ae_title": data.destination_ae_title,
        "sop_instance_uids": list(data.sop_instance_uids),
        "failed_attempt": item.failed_attempt,
        "next_attempt": data.attempt,
        "status": None if item.status is None else f"0x{item.status:04X}",
        "retry_at": item.retry_at.isoformat() if item.retry_at else None,
        "reason": item.reason,
        "decided_at": item.decided_at.isoformat(),
    }


@retries_app.command("list")
def retries_list(
    parked: Annotated[bool, typer.Option("--parked", help="only parked (given up) items")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="a JSON array")] = False,
    config: ConfigOption = None,
    db: DbOption = None,
) -> None:
    """Scheduled retries (waiting, or sent to the node) and parked items, with the reason."""
    from dimsebus.services.retrier.store import RetryStore

    store = RetryStore(_settings(config, db=db).db)
    items = store.items(("parked",) if parked else ("scheduled", "parked"))
    store.close()
    views = [_view(item) for item in items]
    show_rows(
        views,
        as_json=as_json,
        title=f"{len(views)} retries",
        columns=("id", "state", "operation", "to", "instances", "attempt", "at", "reason"),
        row=lambda v: (
            v["id"][:13],
            v["state"],
            f"{v['operation']['kind']} {v['operation']['id'][:13]}",
            v["destination_ae_title"],
            str(len(v["sop_instance_uids"])),
            f"{v['failed_attempt']} -> {v['next_attempt']}",
            (v["retry_at"] or "")[11:19],
            v["reason"],
        ),
    )


@retries_app.command("requeue")
def retries_requeue(
    item_id: Annotated[
        str | None, typer.Argument(help="a parked item's id, or a unique prefix")
    ] = None,
    all_parked: Annotated[bool, typer.Option("--all", help="every parked item")] = False,
    config: ConfigOption = None,
    db: DbOption = None,
    amqp_url: AmqpOption = None,
) -> None:
    """Send parked items to their node again now, with one more attempt each."""
    import asyncio

    from dimsebus.services.retrier.app import requeue
    from dimsebus.services.retrier.store import RetryStore

    if (item_id is None) == (not all_parked):
        fail("give a parked item's ID or --all (not both)")
    settings = _settings(config, db=db, amqp_url=amqp_url)
    store = RetryStore(settings.db)
    try:
        parked = store.items(("parked",))
        if item_id is not None:
            parked = [item for item in parked if str(item.id).startswith(item_id.lower())]
            if len(parked) != 1:
                fail(f"{item_id!r} matches {len(parked)} parked items")
        sent = asyncio.run(requeue(settings, store, parked))
    except DimsebusError as exc:
        fail(str(exc))
    finally:
        store.close()
    console.print(f"requeued {sent} parked item(s)")


@retries_app.command("purge")
def retries_purge(
    scheduled: Annotated[
        bool, typer.Option("--scheduled", help="also cancel retries still waiting")
    ] = False,
    config: ConfigOption = None,
    db: DbOption = None,
    amqp_url: AmqpOption = None,
) -> None:
    """Forget parked items; with --scheduled, also drop the waiting retries from RabbitMQ."""
    import asyncio

    from dimsebus.services.retrier.app import purge_delays
    from dimsebus.services.retrier.store import RetryStore

    settings = _settings(config, db=db, amqp_url=amqp_url)
    store = RetryStore(settings.db)
    try:
        dropped = 0
        if scheduled:
            steps = {item.step_ms for item in store.items(("scheduled",)) if item.step_ms}
            dropped = asyncio.run(purge_delays(settings, steps))
        forgotten = store.delete(("parked", "scheduled") if scheduled else ("parked",))
    except DimsebusError as exc:
        fail(str(exc))
    finally:
        store.close()
    console.print(f"purged {forgotten} item(s); {dropped} waiting message(s) dropped from RabbitMQ")
