"""The CloudEvents 1.0 envelope (structured JSON mode) that carries every event.

https://github.com/cloudevents/spec/blob/v1.0.2/cloudevents/spec.md
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic_core import core_schema

from dimsebus.schemas.limits import (
    MAX_DATASCHEMA_LENGTH,
    MAX_SOURCE_LENGTH,
    MAX_SUBJECT_LENGTH,
    MAX_TYPE_LENGTH,
)
from dimsebus.schemas.native import Native

SPECVERSION = "1.0"
SCHEMA_VERSION = 1
CONTENT_TYPE = "application/cloudevents+json"
DATA_CONTENT_TYPE = "application/json"

_SOURCE_PATTERN = r"^[a-z][a-z0-9+.-]*://\S+$"
# The pattern both regex engines read alike: Python's \s also holds \x1c-\x1f, Rust's not.
_SOURCE_NATIVE = r"^[a-z][a-z0-9+.-]*://[^\s\x1c-\x1f]+$"
_SOURCE_FULLMATCH = re.compile(_SOURCE_NATIVE).fullmatch


def schema_uri(event_type: str, version: int = SCHEMA_VERSION) -> str:
    """The ``dataschema`` of ``event_type``: names the JSON Schema and its version."""
    return f"urn:dimsebus:schema:{event_type}:v{version}"


def _to_utc(value: dt.datetime) -> dt.datetime:
    return value.astimezone(dt.UTC)


_AWARE: TypeAdapter[dt.datetime] = TypeAdapter(AwareDatetime)


def check_utc(value: Any) -> dt.datetime:
    """``value`` as an aware datetime in UTC, else ``ValueError`` with pydantic's reason."""
    try:
        return _to_utc(_AWARE.validate_python(value))
    except ValidationError as exc:
        raise ValueError(exc.errors(include_url=False)[0]["msg"]) from None


def check_source(value: str) -> str:
    """``value`` if it is an event's source (a URI with a scheme), else ``ValueError``."""
    if len(value) > MAX_SOURCE_LENGTH:
        raise ValueError(f"source is {len(value)} characters, over {MAX_SOURCE_LENGTH}")
    if not _SOURCE_FULLMATCH(value):
        raise ValueError(f"{value!r} is not a valid source: expected a URI like dimsebus://node/ID")
    return value


def _type_schema(validated: dict[str, Any]) -> str:
    """The ``dataschema`` of the event's type (``validated``: the fields before it)."""
    return schema_uri(str(validated.get("type", "")))


def _require_dataschema(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """``dataschema`` among the required fields, in field order, as senders must give it."""
    required = {*schema.get("required", ()), "dataschema"}
    schema["required"] = [name for name in model.model_fields if name in required]


UtcDatetime = Annotated[
    AwareDatetime,
    Native(
        "utc_datetime",
        "time",
        core_schema.union_schema(
            [  # an instant in UTC is taken as it is; one at another offset is converted
                core_schema.datetime_schema(tz_constraint=0),
                core_schema.no_info_after_validator_function(
                    _to_utc, core_schema.datetime_schema(tz_constraint="aware")
                ),
            ],
            mode="left_to_right",
        ),
        check_utc,
    ),
]
"""A timezone-aware instant, normalised to UTC (RFC 3339 on the wire)."""

Source = Annotated[
    str,
    Native(
        "event_source",
        "source",
        core_schema.str_schema(max_length=MAX_SOURCE_LENGTH, pattern=_SOURCE_NATIVE),
        check_source,
        str,
    ),
    Field(json_schema_extra={"format": "uri", "pattern": _SOURCE_PATTERN}),
]


class Model(BaseModel):
    """Base of every contract model: immutable, and unknown fields are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class CloudEvent(Model):
    """A CloudEvents 1.0 envelope; subclasses fix ``type`` and ``data``."""

    model_config = ConfigDict(frozen=True, extra="forbid", json_schema_extra=_require_dataschema)

    specversion: Literal["1.0"] = "1.0"
    id: UUID
    source: Source
    type: Annotated[str, Field(max_length=MAX_TYPE_LENGTH)]
    time: UtcDatetime
    subject: Annotated[str, Field(min_length=1, max_length=MAX_SUBJECT_LENGTH)]
    datacontenttype: Literal["application/json"] = "application/json"
    # Absent, it is the type's: a default made from the validated ``type``, not a "before"
    # validator, which would make pydantic turn a JSON body into Python objects first and
    # validate those (a fifth of a C-STORE event's validation, issue 21). Required in the
    # JSON Schema all the same (``_require_dataschema``): senders give it.
    dataschema: Annotated[
        str, Field(max_length=MAX_DATASCHEMA_LENGTH, default_factory=_type_schema)
    ]
    data: Model

    @model_validator(mode="after")
    def _check_dataschema(self) -> CloudEvent:
        expected = schema_uri(self.type)
        if self.dataschema != expected:
            raise ValueError(
                f"dataschema {self.dataschema!r} is not supported for {self.type!r}: "
                f"this version reads {expected!r}"
            )
        return self

    @property
    def routing_key(self) -> str:
        """``type``, plus ``.success``/``.warning``/``.failure``/``.cancel`` for outcomes."""
        category = getattr(self.data, "status_category", None)
        return f"{self.type}.{category}" if category else self.type

    @property
    def correlation_id(self) -> str | None:
        """The operation id the event belongs to, where there is one."""
        operation = getattr(self.data, "operation", None)
        operation_id = getattr(operation, "id", None)
        return str(operation_id) if operation_id is not None else None
