"""The ``dimsebus`` command: one sub-command per service and per operator task."""

from __future__ import annotations

import fnmatch
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from dimsebus.services.audit.cli import audit_app
from dimsebus.services.console import (
    ConfigOption,
    console,
    err,
    fail,
    run_service,
    say_error,
    settings_or_exit,
)
from dimsebus.services.errors import ConfigError, DimsebusError
from dimsebus.services.logs import debugging, describe, set_debug
from dimsebus.services.node.cli import archive_app, node_app, outbox_app, send
from dimsebus.services.node.move_cli import move
from dimsebus.services.retrier.cli import retrier, retries_app
from dimsebus.services.tracker.cli import moves_app, tracker

if TYPE_CHECKING:
    from dimsebus.services.bus.log import LogEntry
    from dimsebus.services.demo import DemoSummary
    from dimsebus.services.settings import ServiceSettings

# Every import a command alone needs is made in that command: `dimsebus --help`, or
# `moves list`, should not pay ~1 s of CPU for aiohttp, pynetdicom and every service.

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
app.command("move")(move)
app.command("tracker")(tracker)
app.add_typer(moves_app, name="moves")
app.command("retrier")(retrier)
app.add_typer(retries_app, name="retries")
app.add_typer(audit_app, name="audit")
config_app = typer.Typer(help="The effective configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")


def _node_settings() -> type[ServiceSettings]:
    from dimsebus.services.node.config import NodeSettings

    return NodeSettings


def _tracker_settings() -> type[ServiceSettings]:
    from dimsebus.services.tracker.settings import TrackerSettings

    return TrackerSettings


def _retrier_settings() -> type[ServiceSettings]:
    from dimsebus.services.retrier.app import RetrierSettings

    return RetrierSettings


def _audit_settings() -> type[ServiceSettings]:
    from dimsebus.services.audit.app import AuditSettings

    return AuditSettings


class _SettingsClasses(Mapping[str, "type[ServiceSettings]"]):
    """Each service's settings class, imported when it is looked up (not all four at start)."""

    def __init__(self, loaders: dict[str, Callable[[], type[ServiceSettings]]]) -> None:
        self._loaders = loaders

    def __getitem__(self, name: str) -> type[ServiceSettings]:
        return self._loaders[name]()

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaders)

    def __len__(self) -> int:
        return len(self._loaders)


SERVICES: Mapping[str, type[ServiceSettings]] = _SettingsClasses(
    {
        "node": _node_settings,
        "tracker": _tracker_settings,
        "retrier": _retrier_settings,
        "audit": _audit_settings,
    }
)
T = TypeVar("T")
AmqpOption = Annotated[str | None, typer.Option("--amqp-url", help="RabbitMQ URL")]


@app.callback()
def dimsebus(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug", envvar="DIMSEBUS_DEBUG", help="show tracebacks (errors are one line)"
        ),
    ] = False,
) -> None:
    """DICOM C-STORE responses as events on RabbitMQ."""
    set_debug(debug)
    if not debug:  # a command's failure is its one line, not also the library's log of it
        logging.basicConfig(handlers=[logging.NullHandler()])


def main(args: Sequence[str] | None = None) -> None:
    """The ``dimsebus`` command, where every failure nothing else caught becomes one line.

    Usage errors stay click's (exit 2); a ``ConfigError`` is bad input (exit 2); any
    other exception is a failure at run time: ``error: Type: message``, exit 1. With
    ``--debug`` (or ``DIMSEBUS_DEBUG=1``) the exception's traceback is shown instead.
    """
    threading.excepthook = _thread_failed
    command = typer.main.get_command(app)
    try:
        command.main(args=list(args) if args is not None else None, prog_name="dimsebus")
    except Exception as exc:
        if debugging():
            raise
        if isinstance(exc, ConfigError):
            say_error(str(exc))
            sys.exit(2)
        say_error(str(exc) if isinstance(exc, DimsebusError) else describe(exc))
        sys.exit(1)


def _thread_failed(failure: threading.ExceptHookArgs) -> None:
    """A thread that died of an exception: one line, or its traceback in debug mode."""
    if debugging() or failure.exc_value is None:
        threading.__excepthook__(failure)
        return
    name = failure.thread.name if failure.thread is not None else "a thread"
    say_error(f"{name}: {describe(failure.exc_value)}")


def _settings(config: Path | None, amqp_url: str | None) -> ServiceSettings:
    from dimsebus.services.settings import ServiceSettings

    return settings_or_exit(ServiceSettings, config, amqp_url=amqp_url)


@schemas_app.command("export")
def schemas_export(
    directory: Annotated[Path, typer.Argument(help="where to write the files")],
) -> None:
    """Write one JSON Schema per event type and asyncapi.yaml into DIRECTORY."""
    from dimsebus.schemas.export import render

    directory.mkdir(parents=True, exist_ok=True)
    files = render()
    for name, text in files.items():
        (directory / name).write_text(text)
    console.print(f"wrote {len(files)} files to {directory}")


@topology_app.command("declare")
def topology_declare(config: ConfigOption = None, amqp_url: AmqpOption = None) -> None:
    """Declare the exchanges and the log stream (every service also does this at start)."""
    from dimsebus.services.bus.connection import connect
    from dimsebus.services.bus.topology import declare_topology

    settings = _settings(config, amqp_url)

    async def declare() -> None:
        async with await connect(settings.amqp_url, "dimsebus-cli") as connection:
            await declare_topology(
                await connection.channel(), settings.retention, settings.replicas
            )

    _run(declare())
    console.print("topology declared")


@config_app.command("show")
def config_show(
    service: Annotated[str, typer.Argument(help="node, tracker, retrier or audit")] = "node",
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object")] = False,
    config: ConfigOption = None,
) -> None:
    """Print a service's settings as file, environment and defaults make them; secrets masked."""
    from dimsebus.services.settings import masked

    model = SERVICES.get(service)
    if model is None:
        fail(f"service {service!r} is not one of {', '.join(SERVICES)}")
    shown = masked(settings_or_exit(model, config))
    if as_json:
        print(json.dumps(shown, indent=2, sort_keys=True))
        return
    table = Table(title=f"{service} settings" + (f" ({config})" if config else ""))
    table.add_column("setting")
    table.add_column("value")
    for name, value in sorted(shown.items()):
        table.add_row(name, json.dumps(value) if not isinstance(value, str) else value)
    console.print(table)


@events_app.command("tail")
def events_tail(
    start: Annotated[str, typer.Option("--from", help="first, last, next or an offset")] = "last",
    as_json: Annotated[bool, typer.Option("--json", help="one CloudEvent JSON per line")] = False,
    limit: Annotated[int | None, typer.Option(help="stop after this many events", min=1)] = None,
    event_type: Annotated[
        str | None,
        typer.Option("--type", help="only types matching this glob, e.g. 'dicom.cstore.*'"),
    ] = None,
    config: ConfigOption = None,
    amqp_url: AmqpOption = None,
) -> None:
    """Print events from the dimsebus.log stream as they arrive."""
    from dimsebus.services.bus.connection import connect
    from dimsebus.services.bus.log import open_log, parse_offset
    from dimsebus.services.settings import LogSettings

    settings = settings_or_exit(LogSettings, config, amqp_url=amqp_url)
    try:
        offset = parse_offset(start)
    except DimsebusError as exc:
        fail(str(exc))

    async def tail() -> None:
        async with (
            await connect(settings.amqp_url, "dimsebus-tail") as connection,
            open_log(connection, offset, settings, name="dimsebus-tail") as log,
        ):
            count = 0
            async for entry in log:
                if event_type and not fnmatch.fnmatchcase(_type_of(entry), event_type):
                    continue
                _print_entry(entry, as_json)
                count += 1
                if limit is not None and count >= limit:
                    return

    _run(tail())


def _type_of(entry: LogEntry) -> str:
    """The event's type; for an invalid body, its routing key."""
    return entry.event.type if entry.event is not None else entry.routing_key


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
        bool, typer.Option("--non-interactive", help="plain output, no live bars")
    ] = False,
    instances: Annotated[int, typer.Option(min=10, max=5_000, help="instances in the study")] = 300,
    workdir: Annotated[
        Path | None, typer.Option(help="where the demo keeps its state (default var/demo-TIME)")
    ] = None,
    config: ConfigOption = None,
    amqp_url: AmqpOption = None,
    serve: Annotated[
        bool, typer.Option("--serve", help="keep the moves page up after the summary, to Ctrl-C")
    ] = False,
) -> None:
    """The whole product against embedded peers: a C-MOVE whose failures the retries fix."""
    from dimsebus.services.bus.connection import masked as masked_url
    from dimsebus.services.demo import progress_bars, run_demo, serve_page
    from dimsebus.services.logs import configure_logging
    from dimsebus.services.vhosts import with_vhost

    configure_logging("WARNING", json_logs=non_interactive)
    # The destination misbehaves on purpose; pynetdicom would log each failure it causes.
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    settings = _settings(config, amqp_url)
    out = Console(no_color=non_interactive, width=120 if non_interactive else None)
    folder = workdir or Path("var") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"

    def say(line: str) -> None:
        out.print(line, highlight=False)

    if non_interactive:
        summary = _run(run_demo(settings, folder, instances, None, say))
    else:
        with progress_bars(out) as bars:
            summary = _run(run_demo(settings, folder, instances, bars, say))
    _show_demo(summary, out, masked_url(with_vhost(settings.amqp_url, summary.vhost)))
    if serve:
        try:
            run_service(lambda stop: serve_page(summary, say, stop))
            say("stopped serving the moves page")
        except OSError as exc:  # its port was taken meanwhile
            fail(f"cannot serve the moves page at {summary.page_url}: {exc.strerror or exc}")
    if summary.outcome != "completed" or not summary.audit.ok:
        fail(f"the demo move ended {summary.outcome}; audit chain ok: {summary.audit.ok}")


def _show_demo(summary: DemoSummary, out: Console, url: str) -> None:
    table = Table(title=f"demo move {summary.move_id}", show_header=False)
    rows = [
        ("sub-operations", f"{summary.instances} instances, DIMSEBUS -> DEMODEST"),
        (
            "first attempt",
            f"{summary.first_attempt_failures} failed: {summary.refused} refused with 0xA700, "
            f"{'one association aborted' if summary.aborted else 'no abort'}",
        ),
        (
            "retries",
            f"{summary.retried} instances re-sent, at most {summary.most_attempts} attempts",
        ),
        ("final counts", ", ".join(f"{k} {v}" for k, v in summary.counts.items())),
        ("outcome", summary.outcome),
        (
            "audit chain",
            f"OK, {summary.audit.intact} records intact"
            if summary.audit.ok
            else f"BROKEN at record {summary.audit.broken_at}: {summary.audit.problem}",
        ),
        ("destination holds", f"{summary.destination_received} instances"),
        ("took", f"{summary.seconds:.1f} s"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    out.print(table)
    out.print(
        "look next:\n"
        f"  dimsebus moves show {summary.move_id[:13]} --db {summary.tracker_db}\n"
        f"  dimsebus demo --serve keeps the moves page ({summary.page_url}) up after this\n"
        f"  dimsebus audit query --move {summary.move_id[:13]} --db {summary.audit_db}\n"
        f"  dimsebus events tail --from first --type 'dimsebus.retry.*' --amqp-url '{url}'"
        + ("  (password masked)" if "***" in url else ""),
        highlight=False,
    )


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; a broker's refusal is bad input, its absence a failure."""
    import asyncio

    from aiormq.exceptions import AMQPConnectionError

    from dimsebus.services.bus.connection import refusal

    try:
        return asyncio.run(coroutine)
    except DimsebusError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except Exception as exc:
        refused = refusal(exc)  # the user, password or vhost: it stays so
        if refused is not None:
            fail(f"--amqp-url: {refused}")
        if isinstance(exc, OSError | AMQPConnectionError):  # down, or not there yet
            fail(f"cannot reach RabbitMQ ({exc}); start it or pass --amqp-url", code=1)
        raise
