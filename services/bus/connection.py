"""Opening robust connections and channels, named so operators can find them."""

from __future__ import annotations

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractRobustConnection


async def connect(url: str, name: str) -> AbstractRobustConnection:
    """A self-reconnecting connection; ``name`` shows in ``rabbitmqctl list_connections``."""
    return await aio_pika.connect_robust(url, client_properties={"connection_name": name})


async def confirming_channel(connection: AbstractConnection) -> AbstractChannel:
    """A channel with publisher confirms on which returned mandatory messages raise."""
    return await connection.channel(publisher_confirms=True, on_return_raises=True)
