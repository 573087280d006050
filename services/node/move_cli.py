"""``dimsebus move``: ask a node to C-MOVE from a remote archive (a ``dimsebus.command.move``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from dimsebus.services.console import ConfigOption, console, fail, parse_labels, settings_or_exit
from dimsebus.services.errors import DimsebusError

if TYPE_CHECKING:
    from dimsebus.schemas import events as ev

OPTIONS = {
    "study_instance_uid": "--study",
    "series_instance_uids": "--series",
    "sop_instance_uids": "--instance",
    "destination_ae_title": "--to",
    "source.ae_title": "--from (AE title)",
    "source.host": "--from (host)",
    "node_id": "--node",
    "labels": "--label",
}
"""The option that gave each field of the command, to name it in an error."""


def move(
    from_: Annotated[
        str, typer.Option("--from", help="AE@HOST:PORT of the remote archive (Move SCP)")
    ],
    to: Annotated[str, typer.Option("--to", help="the move destination's AE title")],
    study: Annotated[str | None, typer.Option("--study", help="Study Instance UID")] = None,
    series: Annotated[
        list[str] | None, typer.Option("--series", help="Series Instance UID, repeatable")
    ] = None,
    instance: Annotated[
        list[str] | None, typer.Option("--instance", help="SOP Instance UID, repeatable")
    ] = None,
    node: Annotated[
        str | None, typer.Option("--node", help="the node's id (default: node_id of --config)")
    ] = None,
    tls: Annotated[bool, typer.Option("--tls", help="reach the archive over DICOM TLS")] = False,
    label: Annotated[list[str] | None, typer.Option("--label", help="k=v, repeatable")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the command as JSON")] = False,
    config: ConfigOption = None,
    amqp_url: Annotated[str | None, typer.Option(help="RabbitMQ URL")] = None,
) -> None:
    """Make a node C-MOVE a study, series or instances from a remote archive (Study Root).

    The node (``dimsebus node``) sends the C-MOVE-RQ; every C-MOVE-RSP becomes
    ``dicom.move.response.received``. Prints the move's operation id.
    """
    import asyncio

    from dimsebus.services.bus.topology import COMMANDS_EXCHANGE
    from dimsebus.services.errors import UnroutableEvent
    from dimsebus.services.node.config import NodeSettings

    settings = settings_or_exit(NodeSettings, config, amqp_url=amqp_url)
    try:
        command = _command(
            node or settings.node_id, from_, to, study, series or [], instance or [], tls, label
        )
    except DimsebusError as exc:
        fail(str(exc))
    try:
        asyncio.run(_publish(settings.amqp_url, command))
    except UnroutableEvent:
        node_id = command.data.node_id
        fail(f"--node: no node {node_id!r} takes commands (queue dimsebus.node.{node_id} missing)")
    except (OSError, DimsebusError) as exc:
        fail(f"cannot publish the command to {COMMANDS_EXCHANGE}: {exc}")
    if as_json:
        print(command.model_dump_json())
    else:
        console.print(str(command.data.operation.id), highlight=False)


def _command(
    node_id: str,
    source: str,
    destination: str,
    study: str | None,
    series: list[str],
    instances: list[str],
    tls: bool,
    labels: list[str] | None,
) -> ev.MoveCommand:
    from pydantic import ValidationError

    from dimsebus.schemas import events as ev
    from dimsebus.services.bus.codec import describe_validation_error
    from dimsebus.services.clock import new_id, utc_now
    from dimsebus.services.node import moves

    ae_title, host, port = moves.parse_remote(source)
    level = moves.query_level(study, series, instances)
    data = {
        "operation": {"kind": "move", "id": new_id()},
        "node_id": node_id,
        "source": {"ae_title": ae_title, "host": host, "port": port, "tls": tls},
        "destination_ae_title": destination,
        "query_level": level,
        "study_instance_uid": study,
        "series_instance_uids": series or None,
        "sop_instance_uids": instances or None,
        "labels": parse_labels(labels or []),
    }
    try:
        validated = ev.MoveCommandData.model_validate(data)
    except ValidationError as exc:
        problem = describe_validation_error(exc, limit=1)
        for field, option in OPTIONS.items():
            problem = problem.replace(field, option)
        raise DimsebusError(problem) from exc
    return ev.MoveCommand.model_validate(
        {
            "id": new_id(),
            "source": "dimsebus://cli/move",
            "time": utc_now(),
            "subject": str(validated.operation.id),
            "data": validated,
        }
    )


async def _publish(amqp_url: str, command: ev.MoveCommand) -> None:
    from dimsebus.services.bus.connection import confirming_channel, connect
    from dimsebus.services.bus.publisher import Publisher
    from dimsebus.services.bus.topology import COMMANDS_EXCHANGE

    connection = await connect(amqp_url, "dimsebus-move")
    async with connection:
        channel = await confirming_channel(connection)
        await Publisher(channel, retry_for=5.0).publish(command, COMMANDS_EXCHANGE)
