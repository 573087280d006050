"""The envelope's source and times, checked by pydantic-core as their Python checks do."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from dimsebus.schemas.envelope import Source, UtcDatetime, check_source, check_utc
from dimsebus.schemas.native import error_message


class Probe(BaseModel):
    source: Source = "dimsebus://node/a"
    time: UtcDatetime = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _native(field: str, value: Any) -> Any:
    """What pydantic-core makes of ``value`` in ``field``, from JSON: the value, or None."""
    try:
        return getattr(Probe.model_validate_json(json.dumps({field: value})), field)
    except ValidationError as exc:
        code = exc.errors()[0]["type"]
    assert code in {"event_source", "utc_datetime"}  # the type's own error, explained
    return None


def _python(check: Any, value: Any) -> Any:
    try:
        return check(value)
    except ValueError:
        return None


_SOURCES = st.from_regex(r"\A[a-z][a-z0-9+.-]{0,5}://\S{0,12}\Z") | st.text(max_size=20)


@given(value=_SOURCES)
def test_source_checked_natively_as_in_python(value: str) -> None:
    assert _native("source", value) == _python(check_source, value)


@given(
    when=st.datetimes(min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(9998, 12, 31)),
    offset=st.integers(min_value=-14 * 60, max_value=14 * 60) | st.none(),
)
def test_time_checked_natively_as_in_python(when: dt.datetime, offset: int | None) -> None:
    if offset is not None:
        when = when.replace(tzinfo=dt.timezone(dt.timedelta(minutes=offset)))
    native, python = _native("time", when.isoformat()), _python(check_utc, when.isoformat())
    assert native == python
    assert native is None or native.utcoffset() == dt.timedelta(0)


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("source", "node-a", "'node-a' is not a valid source: expected a URI like dimsebus://"),
        ("source", "dimsebus://" + "a" * 3000, "characters, over"),
        ("time", "2026-01-01T00:00:00", "Input should have timezone info"),
        ("time", "noon", "Input should be a valid datetime"),
    ],
)
def test_rejections_are_explained(field: str, value: str, why: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Probe.model_validate_json(json.dumps({field: value}))
    assert why in error_message(caught.value.errors()[0])
