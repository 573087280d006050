"""An operator's resends (`moves retry`, `retries requeue`): published to their nodes now.

Shared by the tracker's and the retrier's command lines, which do not import each
other: each resend goes out after a ``dimsebus.retry.scheduled`` that tells the
tracker the move's failed instances are being retried.
"""

from __future__ import annotations

from uuid import NAMESPACE_URL, uuid5

from dimsebus.schemas import events as ev
from dimsebus.services.bus.connection import confirming_channel, connect
from dimsebus.services.bus.publisher import Publisher
from dimsebus.services.bus.topology import (
    COMMANDS_EXCHANGE,
    declare_work_queue,
    ensure_topology,
    node_commands,
)
from dimsebus.services.settings import ServiceSettings


def operator_retry(command: ev.ResendSubOperations) -> ev.RetryScheduled:
    """``dimsebus.retry.scheduled`` for a resend an operator sent now (`moves retry`, a requeue).

    On the log before the command, it shows the tracker that the move's failed
    instances are being retried: the move is ``retrying`` until their results are
    in, and its next final outcome is a new revision of ``dimsebus.move.finished``.
    """
    data = command.data
    return ev.RetryScheduled.model_validate(
        {
            "id": uuid5(NAMESPACE_URL, f"dimsebus:operator-retry:{command.id}"),
            "source": command.source,
            "time": command.time,
            "subject": str(data.operation.id),
            "data": ev.RetryData(
                operation=data.operation,
                node_id=data.node_id,
                sop_instance_uids=data.sop_instance_uids,
                attempt=data.attempt,
                reason="an operator asked for a retry",
                retry_at=command.time,
                destination_ae_title=data.destination_ae_title,
            ),
        }
    )


async def send_commands(settings: ServiceSettings, commands: list[ev.ResendSubOperations]) -> None:
    """Publish an operator's resend commands to their nodes at once, with confirms.

    Each goes after its ``dimsebus.retry.scheduled`` (confirmed first), so the log
    shows the retry before any of its results.
    """
    connection = await connect(settings.amqp_url, "dimsebus-cli-commands")
    async with connection:
        await ensure_topology(connection, settings.retention, settings.replicas)
        channel = await confirming_channel(connection)
        for node_id in {command.data.node_id for command in commands}:
            await declare_work_queue(channel, node_commands(node_id), settings.replicas)
        publisher = Publisher(channel)
        await publisher.publish_all([operator_retry(command) for command in commands])
        await publisher.publish_all(commands, COMMANDS_EXCHANGE)
