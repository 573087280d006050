"""The ``dimsebus`` command: one sub-command per service and per operator task."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from aiormq.exceptions import AMQPConnectionError
from rich.console import Console
from rich.table import Table

from schemas.export import render
from services.audit.commands import audit_app
from services.bus.connection import connect
from services.bus.log import LogEntry, LogReader, parse_offset
from services.bus.topology import declare_topology
from services.console import ConfigOption, console, err, fail, settings_or_exit
from services.demo import DemoResult, run_demo
from services.errors import DimsebusError
from services.logs import configure_logging
from services.node.commands import archive_app, node_app, outbox_app, send
from services.retrier.commands import retrier, retries_app
from services.settings import ServiceSettings
from services.tracker.commands import moves_app, tracker

app = typer.Typer(help="DICOM C-STORE responses as events on RabbitMQ.", no_args_is_help=True)
schemas_app = typer.Typer(help="The event contract as files.", no_args_is_help=True)
events_app = typer.Typer(help="Look at the event log.", no_args_is_help=True)
topology_app = typer.Typer(help="The broker topology.", no_args_is_help=True)
app.add_typer(schemas_app, name="schemas")
app.add_typer(events_app, name="events")
app.add_typer(topology_app, name="topology")
app.add_typer(node_app, name="node")
app.add_typer(archive_app, name="archive")
app.add_typer(outbox_app, name="outbox")
app.command("send")(send)
app.command("tracker")(tracker)
app.add_typer(moves_app, name="moves")
app.command("retrier")(retrier)
app.add_typer(retries_app, name="retries")
app.add_typer(audit_app, name="audit")
T = TypeVar("T")
AmqpOption = Annotated[str | None, typer.Option("--amqp-url", help="RabbitMQ URL")]


def _settings(config: Path | None, amqp_url: str | None) -> ServiceSettings:
    return settings_or_exit(ServiceSettings, config, amqp_url=amqp_url)


@schemas_app.command("export")
def schemas_export(
    directory: Annotated[Path, typer.Argument(help="where to write the files")],
) -> None:
    """Write one JSON Schema per event type and asyncapi.yaml into DIRECTORY."""
    directory.mkdir(parents=True, exist_ok=True)
    files = render()
    for name, text in files.items():
        (directory / name).write_text(text)
    console.print(f"wrote {len(files)} files to {directory}")


@topology_app.command("declare")
def topology_declare(config: ConfigOption = None, amqp_url: AmqpOption = None) -> None:
    """Declare the exchanges and the log stream (every service also does this at start)."""
    settings = _settings(config, amqp_url)

    async def declare() -> None:
        async with await connect(settings.amqp_url, "dimsebus-cli") as connection:
            await declare_topology(await connection.channel(), settings.retention)

    _run(declare())
    console.print("topology declared")


@events_app.command("tail")
def events_tail(
    start: Annotated[str, typer.Option("--from", help="first, last, next or an offset")] = "last",
    as_json: Annotated[bool, typer.Option("--json", help="one CloudEvent JSON per line")] = False,
    limit: Annotated[int | None, typer.Option(help="stop after this many events", min=1)] = None,
    config: ConfigOption = None,
    amqp_url: AmqpOption = None,
) -> None:
    """Print events from the dimsebus.log stream as they arrive."""
    settings = _settings(config, amqp_url)
    try:
        offset = parse_offset(start)
    except DimsebusError as exc:
        fail(str(exc))

    async def tail() -> None:
        async with (
            await connect(settings.amqp_url, "dimsebus-tail") as connection,
            LogReader(await connection.channel(), offset) as log,
        ):
            count = 0
            async for entry in log:
                _print_entry(entry, as_json)
                count += 1
                if limit is not None and count >= limit:
                    return

    _run(tail())


def _print_entry(entry: LogEntry, as_json: bool) -> None:
    if as_json and entry.event is not None:
        print(entry.event.model_dump_json(), flush=True)
    elif entry.event is None:
        err.print(f"{entry.offset:>8}  [red]invalid[/red] {entry.routing_key}: {entry.error}")
    else:
        console.print(
            f"{entry.offset:>8}  {entry.event.time:%H:%M:%S.%f}  {entry.routing_key:<45} "
            f"{entry.event.subject}",
            highlight=False,
        )


@app.command()
def demo(
    non_interactive: Annotated[
        bool, typer.Option("--non-interactive", help="plain output")
    ] = False,
    instances: Annotated[int, typer.Option(min=1, max=10_000, help="instances in the move")] = 20,
    config: ConfigOption = None,
    amqp_url: AmqpOption = None,
) -> None:
    """Publish a C-MOVE's worth of events through RabbitMQ and read them back from the log."""
    configure_logging("WARNING", json_logs=non_interactive)
    settings = _settings(config, amqp_url)
    result = _run(run_demo(settings, instances=instances))
    _show_demo(result, Console(no_color=non_interactive, width=160 if non_interactive else None))
    if not result.all_returned_equal:
        fail("some events did not come back from dimsebus.log unchanged")


def _show_demo(result: DemoResult, out: Console) -> None:
    table = Table(title="events read back from dimsebus.log")
    for column in ("offset", "routing key", "subject", "detail"):
        table.add_column(column)
    for entry in result.read_back:
        assert entry.event is not None
        data = entry.event.data
        detail = f"status 0x{data.status:04X}" if hasattr(data, "status") else ""
        table.add_row(str(entry.offset), entry.routing_key, entry.event.subject, detail)
    out.print(table)
    rate = len(result.published) / result.publish_seconds if result.publish_seconds else 0.0
    out.print(
        f"published {len(result.published)} events with confirms ({rate:,.0f}/s), "
        f"read {len(result.read_back)} back from dimsebus.log, "
        f"all equal after validation: {result.all_returned_equal}"
    )
    out.print("next: `dimsebus events tail --from first` shows the whole log")


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coroutine)
    except DimsebusError as exc:
        fail(str(exc))
    except (OSError, AMQPConnectionError) as exc:
        fail(f"cannot reach RabbitMQ ({exc}); start it or pass --amqp-url")
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
