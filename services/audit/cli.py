"""``dimsebus audit`` (run it), ``audit verify``, ``audit query`` and ``audit replay``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dimsebus.services.console import (
    ConfigOption,
    DbOption,
    HttpPortOption,
    console,
    fail,
    run_service,
    settings_or_exit,
    show_rows,
)
from dimsebus.services.errors import DimsebusError

if TYPE_CHECKING:  # aio-pika, aiohttp and the store: imported by the command that uses them
    from dimsebus.services.audit.app import AuditSettings
    from dimsebus.services.audit.chain import AuditRecord
    from dimsebus.services.audit.store import AuditStore

audit_app = typer.Typer(
    help="The audit trail: run it, verify its chain, query it.", invoke_without_command=True
)


def _settings(config: Path | None, **flags: Any) -> AuditSettings:
    from dimsebus.services.audit.app import AuditSettings

    return settings_or_exit(AuditSettings, config, **flags)


def _store(settings: AuditSettings) -> AuditStore:
    from dimsebus.services.audit.store import AuditStore

    try:
        return AuditStore.open(settings.db)
    except DimsebusError as exc:
        fail(str(exc))


@audit_app.callback()
def audit(
    ctx: typer.Context,
    config: ConfigOption = None,
    db: DbOption = None,
    amqp_url: Annotated[str | None, typer.Option(help="RabbitMQ URL")] = None,
    syslog_host: Annotated[str | None, typer.Option(help="Audit Record Repository host")] = None,
    syslog_port: Annotated[int | None, typer.Option(help="its port")] = None,
    syslog_tls: Annotated[bool | None, typer.Option("--syslog-tls/--no-syslog-tls")] = None,
    http_port: HttpPortOption = None,
) -> None:
    """Record every event in a hash-chained trail; send DICOM audit messages to syslog."""
    flags = {
        "db": db,
        "amqp_url": amqp_url,
        "syslog_host": syslog_host,
        "syslog_port": syslog_port,
        "syslog_tls": syslog_tls,
        "http_port": http_port,
    }
    if ctx.invoked_subcommand is not None:
        ctx.obj = (config, flags)
        return
    from dimsebus.services.audit.app import run_audit
    from dimsebus.services.logs import configure_logging

    configure_logging()
    settings = _settings(config, **flags)
    run_service(lambda stop: run_audit(settings, stop))


def _from(ctx: typer.Context, config: Path | None, **flags: Any) -> AuditSettings:
    """The group's options, with the sub-command's own (given after it) taking precedence."""
    group_config, group_flags = ctx.obj
    given = {name: value for name, value in flags.items() if value is not None}
    return _settings(config or group_config, **{**group_flags, **given})


@audit_app.command("verify")
def audit_verify(ctx: typer.Context, config: ConfigOption = None, db: DbOption = None) -> None:
    """Walk the chain: confirm N intact records, or name the first broken one (exit 1)."""
    from dimsebus.services.audit.chain import verify

    store = _store(_from(ctx, config, db=db))
    result = verify(store.records())
    store.close()
    if not result.ok:
        console.print(
            f"[red]BROKEN[/red] at record {result.broken_at}: {result.problem} "
            f"({result.intact} records before it are intact)",
            highlight=False,
        )
        raise typer.Exit(1)
    console.print(f"OK: {result.intact} records intact", highlight=False)


@audit_app.command("query")
def audit_query(
    ctx: typer.Context,
    study: Annotated[str | None, typer.Option(help="Study Instance UID")] = None,
    instance: Annotated[str | None, typer.Option(help="SOP Instance UID")] = None,
    move: Annotated[str | None, typer.Option(help="operation (move) id, or a prefix")] = None,
    peer: Annotated[str | None, typer.Option(help="the peer's AE title")] = None,
    since: Annotated[str | None, typer.Option(help="ISO 8601 time; UTC if no zone")] = None,
    until: Annotated[str | None, typer.Option(help="ISO 8601 time, exclusive")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="a JSON array")] = False,
    as_jsonl: Annotated[bool, typer.Option("--jsonl", help="one JSON object a line")] = False,
    config: ConfigOption = None,
    db: DbOption = None,
) -> None:
    """Records by study, instance, move, peer and time: a table, or JSON for export."""
    from dimsebus.services.audit.app import parse_time
    from dimsebus.services.audit.store import Query

    try:
        query = Query(
            study,
            instance,
            move,
            peer,
            parse_time(since) if since else None,
            parse_time(until) if until else None,
        )
    except ValueError as exc:
        fail(f"--since/--until: {exc}")
    store = _store(_from(ctx, config, db=db))
    records = [_view(record) for record in store.records(query)]
    store.close()
    if as_jsonl:
        for view in records:
            print(json.dumps(view))
        return
    show_rows(
        records,
        as_json=as_json,
        title=f"{len(records)} audit records",
        columns=("seq", "time", "type", "peer", "study", "instance", "status", "operation"),
        row=lambda v: (
            str(v["seq"]),
            v["event_time"][:23],
            v["event_type"],
            v["peer_ae_title"] or "",
            (v["study_uid"] or "")[-16:],
            (v["sop_instance_uid"] or "")[-16:],
            "" if v["status"] is None else f"0x{v['status']:04X}",
            (v["operation_id"] or "")[:13],
        ),
    )


@audit_app.command("replay")
def audit_replay(
    ctx: typer.Context,
    start: Annotated[str, typer.Option("--from", help="first, last, or an offset")] = "first",
    config: ConfigOption = None,
    db: DbOption = None,
    amqp_url: Annotated[str | None, typer.Option(help="RabbitMQ URL")] = None,
) -> None:
    """Append what the log holds and the trail lacks (ids already recorded are skipped)."""
    import asyncio

    from dimsebus.services.audit.app import replay
    from dimsebus.services.bus.log import parse_offset

    settings = _from(ctx, config, db=db, amqp_url=amqp_url)
    try:
        read, added = asyncio.run(replay(settings, parse_offset(start)))
    except DimsebusError as exc:
        fail(str(exc))
    console.print(f"read {read} events from the log; {added} new records")


def _view(record: AuditRecord) -> dict[str, Any]:
    return {
        "seq": record.seq,
        "event_id": record.event_id,
        "event_type": record.event_type,
        "event_time": record.event_time,
        "source": record.source,
        "operation_id": record.operation_id,
        "association_id": record.association_id,
        "study_uid": record.study_uid,
        "sop_instance_uid": record.sop_instance_uid,
        "peer_ae_title": record.peer_ae_title,
        "status": record.status,
        "hash": record.hash,
        "event": record.event,
    }
