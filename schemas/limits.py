"""The contract's size caps: every string, map and list an event carries is bounded.

A message body is at most ``MAX_BODY_BYTES``; consumers park a bigger one
before parsing it. The caps below are chosen so that an event with every
field at its cap (in ASCII) still fits in that body, and a test checks it.
Lists of instances are bounded per event, not per operation: a producer
splits a 10,000-instance move's unsent instances into events of at most
``MAX_UIDS`` each (``chunked``), and where a list only describes (the final
C-MOVE-RSP's failed instances, the tracker's failed instances) it lists the
first ones and counts the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

MAX_BODY_BYTES = 256 * 1024
"""The largest message body a consumer parses (``max_body_bytes``, DIMSEBUS_MAX_BODY_BYTES)."""

MAX_SUBJECT_LENGTH = 256
"""``subject``: a SOP Instance UID (64), an operation or association id (36)."""
MAX_SOURCE_LENGTH = 256
"""``source`` (``dimsebus://node/<id>``), and node ids taken from it."""
MAX_TYPE_LENGTH = 128
MAX_DATASCHEMA_LENGTH = 256

MAX_LABELS = 64
"""Labels per event: the callback's user data, from configuration and the job."""
MAX_LABEL_VALUE_LENGTH = 256

MAX_TEXT_LENGTH = 1024
"""Free text: Error Comment, details, a failed instance's reason."""
MAX_REASON_LENGTH = 2048
"""A retry decision's reason, which quotes the failure's reason (itself up to ~1,100)."""

MAX_KEYS = 64
"""Identifier keys of a C-MOVE-RQ or C-GET-RQ recorded in its event."""
MAX_KEY_NAME_LENGTH = 64
MAX_KEY_VALUE_LENGTH = 1024

MAX_UIDS = 2048
"""SOP Instance UIDs per event: 2,048 x 67 bytes is 137 KB of JSON at most."""
MAX_FAILED_INSTANCES = 64
"""Failed instances a tracker event lists (each up to ~2.3 KB); the rest are counted."""
MAX_PRESENTATION_CONTEXTS = 128
"""PS3.8 9.3.2.2: odd context ids 1 to 255 allow 128 presentation contexts."""
MAX_INVALID_FIELDS = 64
"""Raw command-set elements that ``dicom.message.invalid`` carries."""

T = TypeVar("T")


def chunked(items: Sequence[T], size: int = MAX_UIDS) -> list[Sequence[T]]:
    """``items`` in consecutive slices of at most ``size``; none for no items."""
    return [items[start : start + size] for start in range(0, len(items), size)]


def clip(text: str, limit: int = MAX_TEXT_LENGTH) -> str:
    """``text`` cut to ``limit`` characters, ending in ``...`` when it was cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
