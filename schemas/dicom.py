"""Strict DICOM value types (PS3.5 6.2, PS3.7 Annex E) as pydantic annotations.

pydantic-core checks each type itself, with no Python call per value: a replay
validates a few of them in every event, 20,000 events a second (issue 21). A value it
rejects is one error of the type's own code (``dicom_uid``, ``dicom_ae_title``...),
which ``native.error_message`` explains in the words of the Python check the type
mirrors, naming the bad value: ``association.peer_ae_title: 'A\\B' is not a valid AE
title: it contains a backslash``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import WithJsonSchema
from pydantic_core import core_schema

from dimsebus.schemas.native import Native

UID_MAX_LENGTH = 64
AE_TITLE_MAX_LENGTH = 16
MESSAGE_ID_MAX = 0xFFFF
STATUS_MAX = 0xFFFF

_UID_PATTERN = r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$"
_AE_PATTERN = r"^(?=.*[^ ])[\x20-\x5b\x5d-\x7e]{1,16}$"
# An AE title as stored, without padding: what pydantic-core matches with no Python call
# (its regex engine has no look-ahead). A padded title takes the Python path.
_AE_UNPADDED = r"^[\x21-\x5b\x5d-\x7e](?:[\x20-\x5b\x5d-\x7e]{0,14}[\x21-\x5b\x5d-\x7e])?$"
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


def _range_check(name: str, low: int, high: int, *, odd: bool = False) -> Callable[[int], int]:
    def check(value: int) -> int:
        if not low <= value <= high:
            raise ValueError(f"{value} is not a valid {name}: it is not {low} to {high}")
        if odd and value % 2 == 0:
            raise ValueError(f"{value} is not a valid {name}: it must be odd")
        return value

    return check


def _strict_int(code: str, name: str, low: int, high: int, *, odd: bool = False) -> Native:
    schema: core_schema.CoreSchema = core_schema.int_schema(strict=True, ge=low, le=high)
    if odd:  # a look-up in a set of the odd values, in pydantic-core
        schema = core_schema.chain_schema(
            [schema, core_schema.literal_schema(list(range(low | 1, high + 1, 2)))]
        )
    return Native(code, name, schema, _range_check(name, low, high, odd=odd), int)


def _padded_ae_title(value: str) -> str:
    return check_ae_title(_strip_ae_padding(value))


UID = Annotated[
    str,
    Native(
        "dicom_uid",
        "UID",
        core_schema.str_schema(strict=True, max_length=UID_MAX_LENGTH, pattern=_UID_PATTERN),
        check_uid,
        str,
    ),
    WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 64, "pattern": _UID_PATTERN}),
]
"""A DICOM unique identifier: digits and dots, no empty or leading-zero component."""

AETitle = Annotated[
    str,
    Native(
        "dicom_ae_title",
        "AE title",
        core_schema.union_schema(
            [
                core_schema.str_schema(strict=True, pattern=_AE_UNPADDED),
                core_schema.no_info_after_validator_function(
                    _padded_ae_title, core_schema.str_schema(strict=True)
                ),
            ],
            mode="left_to_right",
        ),
        _padded_ae_title,
        str,
    ),
    WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 16, "pattern": _AE_PATTERN}),
]
"""An application entity title, stored without its insignificant padding."""

MessageID = Annotated[
    int,
    _strict_int("dicom_message_id", "message id", 0, MESSAGE_ID_MAX),
    WithJsonSchema({"type": "integer", "minimum": 0, "maximum": MESSAGE_ID_MAX}),
]
"""A DIMSE Message ID (PS3.7 E.1): unique per association only, wraps at 65535."""

PresentationContextID = Annotated[
    int,
    _strict_int("dicom_presentation_context_id", "presentation context id", 1, 255, odd=True),
    WithJsonSchema({"type": "integer", "minimum": 1, "maximum": 255, "not": {"multipleOf": 2}}),
]
"""A presentation context id (PS3.8 9.3.2.2): odd, 1 to 255."""

StatusCode = Annotated[
    int,
    _strict_int("dicom_status", "status", 0, STATUS_MAX),
    WithJsonSchema({"type": "integer", "minimum": 0, "maximum": STATUS_MAX}),
]
"""A DIMSE status (PS3.7 Annex C), 0x0000 to 0xFFFF."""

Port = Annotated[
    int,
    _strict_int("tcp_port", "TCP port", 0, 65535),
    WithJsonSchema({"type": "integer", "minimum": 0, "maximum": 65535}),
]
"""A TCP port number."""
