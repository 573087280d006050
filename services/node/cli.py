"""``dimsebus node`` (and ``node status``), ``dimsebus archive import`` and ``dimsebus send``."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from dimsebus.services.console import (
    ConfigOption,
    HttpPortOption,
    console,
    err,
    fail,
    parse_labels,
    settings_or_exit,
)
from dimsebus.services.errors import DimsebusError
from dimsebus.services.logs import configure_logging, debugging

if TYPE_CHECKING:  # pynetdicom, pydicom, aio-pika and aiohttp: imported by the command that runs
    from dimsebus.services.node.config import NodeSettings
    from dimsebus.services.node.sender import SendSummary, Target
    from dimsebus.services.node.target_option import LastError

RELAY_NICENESS = 10
"""``outbox relay --niceness``'s default: ``bus.relay.NICENESS`` (a unit test keeps them equal)."""

node_app = typer.Typer(help="Run the DICOM node, or look at it.", invoke_without_command=True)
archive_app = typer.Typer(help="The node's archive.", no_args_is_help=True)
outbox_app = typer.Typer(help="The durable outbox of a node or send job.", no_args_is_help=True)


def node_settings(config: Path | None, **flags: Any) -> NodeSettings:
    """Node settings from file, environment and flags, or a clear exit."""
    from dimsebus.services.node.config import NodeSettings

    return settings_or_exit(NodeSettings, config, **flags)


@node_app.callback()
def node(
    ctx: typer.Context,
    config: ConfigOption = None,
    port: Annotated[int | None, typer.Option(help="DICOM port to listen on")] = None,
    ae_title: Annotated[str | None, typer.Option(help="the node's AE title")] = None,
    node_id: Annotated[str | None, typer.Option(help="the node's id in events")] = None,
    amqp_url: Annotated[str | None, typer.Option(help="RabbitMQ URL")] = None,
    http_port: HttpPortOption = None,
) -> None:
    """Run the node: Storage, Find, Move and Get SCP over its archive, publishing every event."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = config
        return
    from dimsebus.services.node.app import run_node
    from dimsebus.services.node.tls import scp_context

    configure_logging()
    settings = node_settings(
        config,
        port=port,
        ae_title=ae_title,
        node_id=node_id,
        amqp_url=amqp_url,
        http_port=http_port,
    )
    try:
        scp_context(settings)  # a bad [tls] is one line before anything starts
    except DimsebusError as exc:
        fail(str(exc))
    run_node(settings)


@node_app.command("status")
def node_status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object")] = False,
    config: ConfigOption = None,
) -> None:
    """Show the outbox depth (events not yet confirmed by the broker) and the archive size."""
    from dimsebus.services.bus.outbox import read_depth
    from dimsebus.services.node.archive import Archive

    settings = node_settings(config or ctx.obj)  # --config after `status`, or before it
    archive = Archive(settings.archive_path)
    status = {
        "node_id": settings.node_id,
        "outbox_depth": read_depth(settings.outbox_path),
        "outbox_path": str(settings.outbox_path),
        "archive_instances": archive.count(),
    }
    archive.close()
    if as_json:
        print(json.dumps(status))
        return
    table = Table(title=f"node {settings.node_id}")
    table.add_column("what")
    table.add_column("value", justify="right")
    for name, value in status.items():
        table.add_row(name.replace("_", " "), str(value))
    console.print(table)


@archive_app.command("import")
def archive_import(
    paths: Annotated[list[Path], typer.Argument(help="files or folders")],
    config: ConfigOption = None,
) -> None:
    """Add DICOM files to the node's archive, with the checks of a C-STORE.

    A file whose UIDs are not valid, or whose instance the archive holds under
    another Patient ID (unless overwrite_instances), is skipped: one line each,
    naming it and why. Exits 2 when none of the files was imported.
    """
    from dimsebus.services.node.archive import Archive, ArchiveError
    from dimsebus.services.node.sender import dicom_files

    settings = node_settings(config)
    try:
        files = dicom_files(paths)
        archive = Archive(settings.archive_path)
    except (DimsebusError, OSError, sqlite3.Error) as exc:
        fail(str(exc))
    added, problems = 0, []
    with _progress() as progress:
        task = progress.add_task("importing", total=len(files))
        for path in files:
            try:
                archive.import_file(path, overwrite=settings.overwrite_instances)
                added += 1
            except ArchiveError as exc:
                problems.append(str(exc))
            progress.advance(task)
    archive.close()
    for problem in problems:
        err.print(f"skipped {problem}", highlight=False, soft_wrap=True)
    console.print(f"imported {added} of {len(files)} files into {settings.archive_path}")
    if not added:
        raise typer.Exit(2)


def send(
    paths: Annotated[list[Path], typer.Argument(help="DICOM files or folders")],
    to: Annotated[str, typer.Option("--to", help="AE@HOST:PORT of the Storage SCP")],
    label: Annotated[list[str] | None, typer.Option("--label", help="k=v, repeatable")] = None,
    config: ConfigOption = None,
    outbox: Annotated[Path, typer.Option(help="this job's outbox")] = Path(
        "var/send-outbox.sqlite"
    ),
    amqp_url: Annotated[str | None, typer.Option(help="RabbitMQ URL")] = None,
    tls: Annotated[
        bool, typer.Option("--tls", help="over DICOM TLS, with the [tls] of --config")
    ] = False,
) -> None:
    """C-STORE files or folders to a peer; every C-STORE-RSP becomes an event on RabbitMQ."""
    from dimsebus.services.node.sender import dicom_files
    from dimsebus.services.node.target_option import parse_target, peer_trouble
    from dimsebus.services.node.tls import association_tls

    configure_logging("WARNING" if debugging() else "ERROR")  # its failure is one line
    settings = node_settings(config, amqp_url=amqp_url, outbox_path=outbox)
    target = parse_target(to, tls)
    try:
        association_tls(settings, target.host, target.tls)  # a bad [tls] fails before sending
        labels = parse_labels(label or [])
        files = dicom_files(paths)
    except DimsebusError as exc:
        fail(str(exc))
    if not files:
        fail(f"no files in {', '.join(map(str, paths))}: nothing to send")
    with peer_trouble() as trouble:
        summary, depth = _send(settings, target, files, labels, trouble)
    _show_summary(summary, target, depth, settings.outbox_path)
    if len(summary.unreadable) == len(files):  # each is named above
        fail(f"none of the {len(files)} files is DICOM: nothing was sent")


def _send(
    settings: NodeSettings,
    target: Target,
    files: list[Path],
    labels: dict[str, str],
    trouble: LastError,
) -> tuple[SendSummary, int]:
    from dimsebus.services.bus.outbox import Outbox
    from dimsebus.services.bus.relay import RelayProcess
    from dimsebus.services.node.archive import Archive
    from dimsebus.services.node.capture_shell import Capture
    from dimsebus.services.node.sender import send_files

    box = Outbox(settings.outbox_path, dicom_path=True)
    relay = RelayProcess(
        settings.outbox_path,
        settings.amqp_url,
        name="dimsebus-send",
        window=settings.publish_window,
    )
    capture = Capture.for_node(settings, box)
    archive = Archive(settings.archive_path)
    try:
        with _progress() as progress:
            task = progress.add_task(f"C-STORE to {target.ae_title}", total=len(files))
            lock = threading.Lock()

            def advance(path: Path, status: int | None) -> None:
                with lock:
                    progress.advance(task)

            summary = send_files(
                settings,
                capture,
                target,
                files,
                labels=labels,
                on_progress=advance,
                archive=archive,
            )
        relay.wait_empty(within=30.0)
    except DimsebusError as exc:  # the peer refused or went away: a failure at run time
        relay.wait_empty(within=30.0)  # what was captured (and why the rest was not sent)
        fail(f"{exc} ({trouble.last})" if trouble.last else str(exc), code=1)
    finally:
        relay.stop()
        archive.close()
    depth = box.depth()
    box.close()
    return summary, depth


def _show_summary(summary: SendSummary, target: Target, depth: int, outbox: Path) -> None:
    from dimsebus.schemas.status import Service, describe_status
    from dimsebus.services.node.target_option import bracketed

    table = Table(
        title=f"sent to {target.ae_title}@{bracketed(target.host)}:{target.port} "
        f"(operation {summary.operation.id})"
    )
    for column in ("status", "meaning", "count"):
        table.add_column(column, justify="right" if column == "count" else "left")
    for status, count in sorted(summary.by_status.items()):
        info = describe_status(status, Service.STORAGE)
        table.add_row(info.label, info.description, str(count))
    if summary.no_response:
        table.add_row("-", "no response (aborted or timed out)", str(summary.no_response))
    if summary.unreadable:
        table.add_row("-", "not DICOM, not sent", str(len(summary.unreadable)))
    console.print(table)
    for problem in summary.unreadable:
        err.print(f"skipped {escape(problem)}", highlight=False, soft_wrap=True)
    if depth:
        err.print(
            f"{depth} events wait in {outbox}; "
            f"`dimsebus outbox relay --outbox {outbox}` publishes them"
        )


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,  # what it did is printed after it
        disable=not console.is_terminal,  # a file or pipe gets that alone
    )


@outbox_app.command("relay")
def outbox_relay(
    outbox: Annotated[Path, typer.Option(help="the outbox file to publish")],
    name: Annotated[str, typer.Option(help="connection name shown by RabbitMQ")] = "dimsebus-relay",
    window: Annotated[int, typer.Option(min=1, help="unconfirmed publishes in flight")] = 256,
    amqp_url: Annotated[str | None, typer.Option(help="RabbitMQ URL")] = None,
    config: ConfigOption = None,
    niceness: Annotated[
        int,
        typer.Option(
            min=0, max=19, help="scheduling niceness: the relay yields the CPU to DICOM traffic"
        ),
    ] = RELAY_NICENESS,
) -> None:
    """Publish an outbox's events with confirms until stopped (nodes run one of these)."""
    from dimsebus.services.bus.relay import run_relay
    from dimsebus.services.node import fact_events

    configure_logging()
    settings = node_settings(config, amqp_url=amqp_url)
    if not outbox.exists():
        fail(f"--outbox: {str(outbox)!r} does not exist")
    run_relay(
        outbox,
        settings.amqp_url,
        name,
        window,
        fact_events.FORMATS,
        niceness,
        retention=settings.retention,
        replicas=settings.replicas,
    )
