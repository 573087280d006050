"""The web page's list of moves: its filters, and one page of rows read by SQL.

The rows come from the columns the store keeps beside each move (migration 4: AE
titles, outcome as of the last event, whether it stalls, a JSON summary), filtered,
ordered and paged by the database through its indexes: a page costs the same with ten
moves or ten thousand. ``stalled`` depends on the clock, so it is told from the last
event's time here, as ``progress.outcome`` tells it.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlencode

from dimsebus.services.errors import DimsebusError
from dimsebus.services.sql import Database
from dimsebus.services.tracker.views import stalls_at

OUTCOMES = (
    "in_progress",
    "retrying",
    "stalled",
    "completed",
    "completed_with_failures",
    "failed",
    "cancelled",
)
PER_PAGE = 50
MAX_PER_PAGE = 200
MAX_AE = 16  # an AE title is at most 16 characters (PS3.5 6.2)


class BadFilter(DimsebusError):
    """A filter of the page's query string that cannot be used; the message names it."""


@dataclass(frozen=True, slots=True)
class Filters:
    """What the person asked to see: an outcome, an AE title (in any role), a time span."""

    outcome: str = ""
    ae: str = ""
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    page: int = 1
    per_page: int = PER_PAGE

    def query(self, **changes: Any) -> str:
        """The query string of these filters (with ``changes``), for links and the live feed."""
        wanted = replace(self, **changes)
        fields = {
            "outcome": wanted.outcome,
            "ae": wanted.ae,
            "since": _local(wanted.since),
            "until": _local(wanted.until),
            "page": str(wanted.page) if wanted.page != 1 else "",
            "per_page": str(wanted.per_page) if wanted.per_page != PER_PAGE else "",
        }
        return urlencode({name: value for name, value in fields.items() if value})

    def matches(self, row: dict[str, Any]) -> bool:
        """Whether a move's row (``views.move_row``) belongs in the list these filters make."""
        if self.outcome and row["outcome"] != self.outcome:
            return False
        roles = (row["requestor_ae_title"], row["source_ae_title"], row["destination_ae_title"])
        if self.ae and self.ae not in roles:
            return False
        started = row["started_at"]
        if self.since is not None and (started is None or started < self.since.isoformat()):
            return False
        return self.until is None or (started is not None and started < self.until.isoformat())


def parse_filters(query: Any) -> Filters:
    """The filters of a query string (a mapping); ``BadFilter`` names a field that is wrong."""
    outcome = query.get("outcome", "")
    if outcome and outcome not in OUTCOMES:
        raise BadFilter(f"outcome {outcome[:40]!r} is not one of {', '.join(OUTCOMES)}")
    ae = query.get("ae", "").strip()
    if len(ae) > MAX_AE:
        raise BadFilter(f"ae: an AE title has at most {MAX_AE} characters, not {len(ae)}")
    return Filters(
        outcome=outcome,
        ae=ae,
        since=_time(query, "since"),
        until=_time(query, "until"),
        page=_number(query, "page", 1, 1_000_000),
        per_page=_number(query, "per_page", PER_PAGE, MAX_PER_PAGE),
    )


def _time(query: Any, name: str) -> dt.datetime | None:
    text = query.get(name, "")
    if not text:
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise BadFilter(f"{name} {text[:40]!r} is not a date and time (2026-11-30T12:00)") from None
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


def _number(query: Any, name: str, default: int, most: int) -> int:
    text = query.get(name, "")
    if not text:
        return default
    if not text.isdigit() or not 1 <= int(text) <= most:
        raise BadFilter(f"{name} {text[:20]!r} is not a whole number from 1 to {most}")
    return int(text)


def _local(when: dt.datetime | None) -> str:
    """A time as the form's datetime-local field shows it (UTC, to the minute or second)."""
    if when is None:
        return ""
    return when.astimezone(dt.UTC).replace(tzinfo=None).isoformat(timespec="seconds")


@dataclass(frozen=True, slots=True)
class Page:
    """One page of the list: its rows, newest first, and how many moves match in all."""

    rows: list[dict[str, Any]]
    total: int
    filters: Filters

    @property
    def pages(self) -> int:
        """How many pages the matching moves fill (at least one, empty or not)."""
        return max(1, math.ceil(self.total / self.filters.per_page))


_COLUMNS = "summary, stalls, last_event_at"


def read_page(db: Database, filters: Filters, now: dt.datetime, stall_after: dt.timedelta) -> Page:
    """The page ``filters`` ask for, newest first, by SQL over the store's indexed columns."""
    cutoff = (now - stall_after).isoformat()
    where, params = _where(filters, cutoff)
    offset = (filters.page - 1) * filters.per_page
    found = db.execute(
        f"SELECT {_COLUMNS} FROM tracker_moves {where} "
        "ORDER BY started_at DESC, move_id DESC LIMIT ? OFFSET ?",
        (*params, filters.per_page, offset),
    )
    (total,) = db.execute(f"SELECT count(*) FROM tracker_moves {where}", params).fetchone()
    # A move saved before the list had columns has none until the tracker fills them
    # (``fill_listing``, at its start): it is counted, not shown.
    rows = [_row(s, stalls, last, cutoff, stall_after) for s, stalls, last in found if s]
    return Page(rows, int(total), filters)


def _where(filters: Filters, cutoff: str) -> tuple[str, tuple[Any, ...]]:
    """The WHERE clause of ``filters`` (constant text; every value a parameter)."""
    clauses: list[str] = []
    params: list[Any] = []
    stale = "(stalls = 1 AND last_event_at < ?)"
    if filters.outcome == "stalled":
        clauses.append(stale)
        params.append(cutoff)
    elif filters.outcome in ("in_progress", "retrying"):
        clauses.append(f"outcome = ? AND NOT {stale}")
        params += [filters.outcome, cutoff]
    elif filters.outcome:
        clauses.append("outcome = ?")
        params.append(filters.outcome)
    if filters.ae:
        clauses.append("(requestor_ae = ? OR source_ae = ? OR destination_ae = ?)")
        params += [filters.ae] * 3
    if filters.since is not None:
        clauses.append("started_at >= ?")
        params.append(filters.since.isoformat())
    if filters.until is not None:
        clauses.append("started_at < ?")
        params.append(filters.until.isoformat())
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", tuple(params)


def _row(
    summary: str, stalls: int, last_event_at: str | None, cutoff: str, stall_after: dt.timedelta
) -> dict[str, Any]:
    row: dict[str, Any] = json.loads(summary)
    if stalls and last_event_at is not None and last_event_at < cutoff:
        row["outcome"] = "stalled"
    last = dt.datetime.fromisoformat(last_event_at) if last_event_at else None
    row["stalls_at"] = stalls_at(last, bool(stalls), stall_after)
    return row
