"""The envelope facts a shell supplies to the pure event builders (``capture``, ``salvage``)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from uuid import UUID


@dataclass(frozen=True, slots=True)
class Stamp:
    """The envelope facts the shell supplies: a fresh id, the time, the node's source URI."""

    id: UUID
    time: dt.datetime
    source: str
