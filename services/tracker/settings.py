"""The tracker's settings: ``dimsebus tracker``, ``dimsebus moves`` and the HTTP API read them."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator

from dimsebus.services.settings import LogSettings

MIN_TOKEN_LENGTH = 16


class TrackerSettings(LogSettings):
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

    ui_token: SecretStr | None = Field(
        None,
        description="the token a person gives the web page once to sign in for its actions "
        f"(ui_actions; at least {MIN_TOKEN_LENGTH} characters); secret, masked when shown",
    )
    ui_actions: bool = Field(
        False,
        description="the web page offers actions (retry a move's failed instances, requeue "
        "its parked items) to a person signed in with ui_token; off: read-only",
    )
    ui_session: float = Field(
        3600.0, gt=0, le=7 * 86400, description="seconds a sign-in on the web page lasts"
    )

    @field_validator("ui_actions")
    @classmethod
    def _actions_need_a_token(cls, value: bool, info: ValidationInfo) -> bool:
        # checked here, not on ui_token: an error shows the value it was given
        token = info.data.get("ui_token")
        if value and token is None:
            raise ValueError("ui_actions = true needs ui_token (DIMSEBUS_UI_TOKEN)")
        if value and token is not None and len(token.get_secret_value()) < MIN_TOKEN_LENGTH:
            raise ValueError(f"ui_token must be at least {MIN_TOKEN_LENGTH} characters")
        return value

    def retries_for(self, node_id: str) -> bool:
        """Whether a retrier decides about ``node_id``'s failures."""
        return self.retries_by_node.get(node_id, self.retries)
