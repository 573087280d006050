"""The CloudEvents 1.0 envelope (structured JSON mode) that carries every event.

https://github.com/cloudevents/spec/blob/v1.0.2/cloudevents/spec.md
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)

from dimsebus.schemas.limits import (
    MAX_DATASCHEMA_LENGTH,
    MAX_SOURCE_LENGTH,
    MAX_SUBJECT_LENGTH,
    MAX_TYPE_LENGTH,
)

SPECVERSION = "1.0"
SCHEMA_VERSION = 1
CONTENT_TYPE = "application/cloudevents+json"
DATA_CONTENT_TYPE = "application/json"

_SOURCE_PATTERN = r"^[a-z][a-z0-9+.-]*://\S+$"


def schema_uri(event_type: str, version: int = SCHEMA_VERSION) -> str:
    """The ``dataschema`` of ``event_type``: names the JSON Schema and its version."""
    return f"urn:dimsebus:schema:{event_type}:v{version}"


def _to_utc(value: dt.datetime) -> dt.datetime:
    return value.astimezone(dt.UTC)


def _check_source(value: str) -> str:
    if not re.match(_SOURCE_PATTERN, value):
        raise ValueError(f"{value!r} is not a valid source: expected a URI like dimsebus://node/ID")
    return value


def _type_schema(validated: dict[str, Any]) -> str:
    """The ``dataschema`` of the event's type (``validated``: the fields before it)."""
    return schema_uri(str(validated.get("type", "")))


def _require_dataschema(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """``dataschema`` among the required fields, in field order, as senders must give it."""
    required = {*schema.get("required", ()), "dataschema"}
    schema["required"] = [name for name in model.model_fields if name in required]


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]
"""A timezone-aware instant, normalised to UTC (RFC 3339 on the wire)."""

Source = Annotated[
    str,
    AfterValidator(_check_source),
    Field(
        max_length=MAX_SOURCE_LENGTH,
        json_schema_extra={"format": "uri", "pattern": _SOURCE_PATTERN},
    ),
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
