"""Strict DICOM value types (PS3.5 6.2, PS3.7 Annex E) as pydantic annotations.

Each validator raises ``ValueError`` naming the bad value; pydantic adds the
field's location, so a rejected event reads ``association.peer_ae_title:
'A\\B' is not a valid AE title: ...``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Strict, WithJsonSchema

UID_MAX_LENGTH = 64
AE_TITLE_MAX_LENGTH = 16
MESSAGE_ID_MAX = 0xFFFF
STATUS_MAX = 0xFFFF

_UID_PATTERN = r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$"
_AE_PATTERN = r"^(?=.*[^ ])[\x20-\x5b\x5d-\x7e]{1,16}$"
_UID_FULLMATCH = re.compile(_UID_PATTERN).fullmatch
_AE_FULLMATCH = re.compile(_AE_PATTERN).fullmatch


def check_uid(value: str) -> str:
    """Return ``value`` if it is a valid UID (PS3.5 9.1), else raise ``ValueError``."""
    if len(value) <= UID_MAX_LENGTH and _UID_FULLMATCH(value):
        return value  # the common case; the loop below only explains rejections
    if not 1 <= len(value) <= UID_MAX_LENGTH:
        raise ValueError(f"{value!r} is not a valid UID: length {len(value)} is not 1 to 64")
    for index, component in enumerate(value.split("."), start=1):
        if not component:
            raise ValueError(f"{value!r} is not a valid UID: component {index} is empty")
        if not component.isascii() or not component.isdigit():
            raise ValueError(f"{value!r} is not a valid UID: component {index} is not digits")
        if len(component) > 1 and component[0] == "0":
            raise ValueError(f"{value!r} is not a valid UID: component {index} has a leading zero")
    return value


def _strip_ae_padding(value: Any) -> Any:
    # AE titles are space padded on the wire (PS3.5 6.2: leading and trailing
    # spaces are not significant), so "STORESCP  " and "STORESCP" are one title.
    return value.strip(" ") if isinstance(value, str) and value.strip(" ") else value


def check_ae_title(value: str) -> str:
    """Return ``value`` if it is a valid AE title (PS3.5 6.2, VR AE), else raise."""
    if _AE_FULLMATCH(value):
        return value
    if not 1 <= len(value) <= AE_TITLE_MAX_LENGTH:
        raise ValueError(f"{value!r} is not a valid AE title: length {len(value)} is not 1 to 16")
    if not value.strip(" "):
        raise ValueError(f"{value!r} is not a valid AE title: it is only spaces")
    for char in value:
        if char == "\\":
            raise ValueError(f"{value!r} is not a valid AE title: it contains a backslash")
        if not " " <= char <= "~":
            raise ValueError(
                f"{value!r} is not a valid AE title: character {char!r} is a control "
                "character or outside the default character repertoire"
            )
    return value


def _check_range(name: str, low: int, high: int, *, odd: bool = False) -> AfterValidator:
    def check(value: int) -> int:
        if not low <= value <= high:
            raise ValueError(f"{value} is not a valid {name}: it is not {low} to {high}")
        if odd and value % 2 == 0:
            raise ValueError(f"{value} is not a valid {name}: it must be odd")
        return value

    return AfterValidator(check)


UID = Annotated[
    str,
    Strict(),
    AfterValidator(check_uid),
    WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 64, "pattern": _UID_PATTERN}),
]
"""A DICOM unique identifier: digits and dots, no empty or leading-zero component."""

AETitle = Annotated[
    str,
    Strict(),
    BeforeValidator(_strip_ae_padding),
    AfterValidator(check_ae_title),
    WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 16, "pattern": _AE_PATTERN}),
]
"""An application entity title, stored without its insignificant padding."""

MessageID = Annotated[
    int,
    Strict(),
    _check_range("message id", 0, MESSAGE_ID_MAX),
    WithJsonSchema({"type": "integer", "minimum": 0, "maximum": MESSAGE_ID_MAX}),
]
"""A DIMSE Message ID (PS3.7 E.1): unique per association only, wraps at 65535."""

PresentationContextID = Annotated[
    int,
    Strict(),
    _check_range("presentation context id", 1, 255, odd=True),
    WithJsonSchema({"type": "integer", "minimum": 1, "maximum": 255, "not": {"multipleOf": 2}}),
]
"""A presentation context id (PS3.8 9.3.2.2): odd, 1 to 255."""

StatusCode = Annotated[
    int,
    Strict(),
    _check_range("status", 0, STATUS_MAX),
    WithJsonSchema({"type": "integer", "minimum": 0, "maximum": STATUS_MAX}),
]
"""A DIMSE status (PS3.7 Annex C), 0x0000 to 0xFFFF."""

Port = Annotated[
    int,
    Strict(),
    _check_range("TCP port", 0, 65535),
    WithJsonSchema({"type": "integer", "minimum": 0, "maximum": 65535}),
]
"""A TCP port number."""
