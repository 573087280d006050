"""Strict DICOM value types (PS3.5 6.2, PS3.7 Annex E) as pydantic annotations.

pydantic-core checks each type itself, with no Python call per value: a replay
validates a few of them in every event, 20,000 events a second (issue 21). A value it
rejects is one error of the type's own code (``dicom_uid``, ``dicom_ae_title``...);
``error_message`` explains it in the words of the Python check the type mirrors,
naming the bad value: ``association.peer_ae_title: 'A\\B' is not a valid AE title: it
contains a backslash``. Every formatter of a ``ValidationError`` shown to an operator
goes through ``error_message``; ``str(exc)`` gives the type's one-line summary.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import GetCoreSchemaHandler, WithJsonSchema
from pydantic_core import ErrorDetails, core_schema

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


_EXPLAIN: dict[str, Callable[[Any], str]] = {}
"""Each DICOM type's error code, and what says why a value is not one of its values."""


@dataclass(frozen=True, eq=False)  # hashed by identity: Annotated metadata is hashed
class _Native:
    """A DICOM value type checked by pydantic-core, explained by the Python ``check``.

    ``schema`` must accept exactly the values of ``kind`` that ``check`` accepts, and
    give what ``check`` returns (a property test holds the two together); ``check``
    only runs to explain a rejection.
    """

    code: str
    name: str
    kind: type
    schema: core_schema.CoreSchema
    check: Callable[[Any], object]

    def __post_init__(self) -> None:
        _EXPLAIN[self.code] = self.explain

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.custom_error_schema(
            self.schema,
            custom_error_type=self.code,
            custom_error_message=f"Input is not a valid {self.name}",
        )

    def explain(self, value: Any) -> str:
        """Why ``value`` is not one of this type's values, naming it."""
        if not isinstance(value, self.kind) or isinstance(value, bool):
            what = "a string" if self.kind is str else "an integer"
            return f"{value!r} is not a valid {self.name}: it is not {what}"
        try:
            self.check(value)
        except ValueError as exc:
            return str(exc)
        return f"{value!r} is not a valid {self.name}"  # pragma: no cover - the two agree


def error_message(error: ErrorDetails) -> str:
    """``error``'s message; for a DICOM value type, why its value is not one, naming it."""
    explain = _EXPLAIN.get(error["type"])
    return explain(error.get("input")) if explain else error["msg"]


def _strict_int(name: str, code: str, low: int, high: int, *, odd: bool = False) -> _Native:
    schema: core_schema.CoreSchema = core_schema.int_schema(strict=True, ge=low, le=high)
    if odd:  # a look-up in a set of the odd values, in pydantic-core
        schema = core_schema.chain_schema(
            [schema, core_schema.literal_schema(list(range(low | 1, high + 1, 2)))]
        )
    return _Native(code, name, int, schema, _range_check(name, low, high, odd=odd))


def _padded_ae_title(value: str) -> str:
    return check_ae_title(_strip_ae_padding(value))


UID = Annotated[
    str,
    _Native(
        "dicom_uid",
        "UID",
        str,
        core_schema.str_schema(strict=True, max_length=UID_MAX_LENGTH, pattern=_UID_PATTERN),
        check_uid,
    ),
    WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 64, "pattern": _UID_PATTERN}),
]
"""A DICOM unique identifier: digits and dots, no empty or leading-zero component."""

AETitle = Annotated[
    str,
    _Native(
        "dicom_ae_title",
        "AE title",
        str,
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
    ),
    WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 16, "pattern": _AE_PATTERN}),
]
"""An application entity title, stored without its insignificant padding."""

MessageID = Annotated[
    int,
    _strict_int("message id", "dicom_message_id", 0, MESSAGE_ID_MAX),
    WithJsonSchema({"type": "integer", "minimum": 0, "maximum": MESSAGE_ID_MAX}),
]
"""A DIMSE Message ID (PS3.7 E.1): unique per association only, wraps at 65535."""

PresentationContextID = Annotated[
    int,
    _strict_int("presentation context id", "dicom_presentation_context_id", 1, 255, odd=True),
    WithJsonSchema({"type": "integer", "minimum": 1, "maximum": 255, "not": {"multipleOf": 2}}),
]
"""A presentation context id (PS3.8 9.3.2.2): odd, 1 to 255."""

StatusCode = Annotated[
    int,
    _strict_int("status", "dicom_status", 0, STATUS_MAX),
    WithJsonSchema({"type": "integer", "minimum": 0, "maximum": STATUS_MAX}),
]
"""A DIMSE status (PS3.7 Annex C), 0x0000 to 0xFFFF."""

Port = Annotated[
    int,
    _strict_int("TCP port", "tcp_port", 0, 65535),
    WithJsonSchema({"type": "integer", "minimum": 0, "maximum": 65535}),
]
"""A TCP port number."""
