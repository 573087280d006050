"""The strict DICOM value types reject bad values with messages naming field and value."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from dimsebus.schemas.dicom import (
    UID,
    AETitle,
    MessageID,
    PresentationContextID,
    StatusCode,
    check_ae_title,
    check_uid,
)
from dimsebus.schemas.native import error_message


class Probe(BaseModel):
    uid: UID = "1.2.3"
    ae: AETitle = "STORESCP"
    message_id: MessageID = 1
    context_id: PresentationContextID = 1
    status: StatusCode = 0


def _error(field: str, value: Any) -> str:
    with pytest.raises(ValidationError) as caught:
        Probe.model_validate({field: value})
    (error,) = caught.value.errors()
    assert error["loc"] == (field,)  # pydantic names the field
    return error_message(error)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "length 0 is not 1 to 64"),
        ("1." + "2" * 63, "length 65 is not 1 to 64"),
        ("1..2", "component 2 is empty"),
        ("1.2.", "component 3 is empty"),
        (".1", "component 1 is empty"),
        ("1.02.3", "component 2 has a leading zero"),
        ("1.2a.3", "component 2 is not digits"),
        ("1.²", "component 2 is not digits"),
    ],
)
def test_bad_uid(value: str, why: str) -> None:
    assert f"{value!r} is not a valid UID: {why}" in _error("uid", value)


@pytest.mark.parametrize("value", ["0", "1.2.840.10008.1.1", "1.0.0", "2." + "9" * 62])
def test_good_uid(value: str) -> None:
    assert Probe(uid=value).uid == value


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "length 0 is not 1 to 16"),
        ("A" * 17, "length 17 is not 1 to 16"),
        ("AE\\TITLE", "contains a backslash"),
        ("AE\tTITLE", "control character"),
        ("AÉ", "outside the default character repertoire"),
        ("    ", "only spaces"),
    ],
)
def test_bad_ae_title(value: str, why: str) -> None:
    text = _error("ae", value)
    assert "is not a valid AE title" in text
    assert why in text


def test_ae_title_padding_is_not_significant() -> None:
    assert Probe(ae="  STORESCP ").ae == "STORESCP"


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("message_id", -1, "-1 is not a valid message id: it is not 0 to 65535"),
        ("message_id", 65536, "65536 is not a valid message id: it is not 0 to 65535"),
        ("context_id", 0, "0 is not a valid presentation context id: it is not 1 to 255"),
        ("context_id", 257, "257 is not a valid presentation context id: it is not 1 to 255"),
        ("context_id", 2, "2 is not a valid presentation context id: it must be odd"),
        ("status", -1, "-1 is not a valid status: it is not 0 to 65535"),
        ("status", 0x10000, "65536 is not a valid status: it is not 0 to 65535"),
    ],
)
def test_bad_integer(field: str, value: int, why: str) -> None:
    assert why in _error(field, value)


@pytest.mark.parametrize("field", ["message_id", "context_id", "status"])
@pytest.mark.parametrize("value", ["1", 1.0, True])
def test_integers_are_strict(field: str, value: object) -> None:
    _error(field, value)


def _python_check(check: Any, value: Any) -> Any:
    """What the Python check makes of ``value``: the stored value, or None if it rejects it."""
    try:
        return check(value)
    except ValueError:
        return None


def _native(field: str, value: Any) -> Any:
    """What pydantic-core makes of ``value`` in ``field``, from JSON: the value, or None."""
    try:
        return getattr(Probe.model_validate_json(json.dumps({field: value})), field)
    except ValidationError as exc:
        code = exc.errors()[0]["type"]
    assert code.startswith("dicom_")  # the type's own error, which error_message explains
    return None


_UID_TEXT = st.text(alphabet="0123456789.", max_size=70) | st.text(max_size=8)
_AE_TEXT = st.text(alphabet=st.characters(codec="latin-1"), max_size=20) | st.text(
    alphabet=" AZ\\", max_size=18
)


@given(value=_UID_TEXT)
def test_uid_checked_natively_as_in_python(value: str) -> None:
    # pydantic-core checks UIDs with no Python call; the Python check explains rejections
    assert _native("uid", value) == _python_check(check_uid, value)


@given(value=_AE_TEXT)
def test_ae_title_checked_natively_as_in_python(value: str) -> None:
    expected = _python_check(check_ae_title, value.strip(" ") or value)
    assert _native("ae", value) == expected


@given(value=st.integers(min_value=-2, max_value=0x10001))
def test_integers_checked_natively_as_in_python(value: int) -> None:
    odd = value % 2 == 1
    assert _native("message_id", value) == (value if 0 <= value <= 0xFFFF else None)
    assert _native("status", value) == (value if 0 <= value <= 0xFFFF else None)
    assert _native("context_id", value) == (value if 1 <= value <= 255 and odd else None)
