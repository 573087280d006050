"""The tracker's settings: ``dimsebus tracker``, ``dimsebus moves`` and the HTTP API read them."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from dimsebus.services.settings import ServiceSettings


class TrackerSettings(ServiceSettings):
    """``dimsebus tracker`` and ``dimsebus moves``."""

    db: str = Field("var/tracker.sqlite", description="SQLite file, or a postgresql:// URL")
    tracker_id: str = Field("tracker", pattern=r"^[A-Za-z0-9_.-]+$")
    outbox_path: Path = Path("var/tracker-outbox.sqlite")
    stall_after: float = Field(
        300.0, gt=0, description="seconds without events before a move is stalled"
    )
    progress_interval: float = Field(
        0.5, ge=0, description="seconds between progress events of a move"
    )
    live_window: float = Field(
        60.0, ge=0, description="events older than this (a replay) emit no progress"
    )
    batch_size: int = Field(500, ge=1)
    cached_moves: int = Field(
        1000,
        ge=0,
        description="open moves kept in memory; a finished move, or one beyond this many, "
        "is read back from the store when an event for it comes",
    )
    start_from: Literal["first", "last", "next"] = Field(
        "first", description="where a tracker without a checkpoint starts reading the log"
    )
    retries: bool = Field(
        False,
        description="a retrier decides about every node's failed sub-operations: a move "
        "waits for its decisions (retrying) before it is finished",
    )
    retries_by_node: dict[str, bool] = Field(
        default_factory=dict, description="node id -> retries, where it differs from retries"
    )

    def retries_for(self, node_id: str) -> bool:
        """Whether a retrier decides about ``node_id``'s failures."""
        return self.retries_by_node.get(node_id, self.retries)
