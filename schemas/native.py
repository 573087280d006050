"""Contract types that pydantic-core checks itself, and their errors in words.

A Python validator costs a call per value, and a replay validates about ten such
values in every event, 20,000 events a second (issue 21). A ``Native`` type gives
pydantic-core a schema that accepts exactly what its Python ``check`` accepts; the check
runs only to explain a rejection. pydantic reports the rejection as one error of the
type's own code, and ``error_message`` turns it into the check's words, naming the value:
every formatter of a ``ValidationError`` shown to an operator goes through it
(``str(exc)`` gives the type's one-line summary, ``Input is not a valid UID``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import GetCoreSchemaHandler
from pydantic_core import ErrorDetails, core_schema

_EXPLAIN: dict[str, Callable[[Any], str]] = {}
"""Each native type's error code, and what says why a value is not one of its values."""


@dataclass(frozen=True, eq=False)  # hashed by identity: Annotated metadata is hashed
class Native:
    """A type checked by pydantic-core with ``schema``, explained by the Python ``check``.

    ``schema`` must accept exactly the values ``check`` accepts, and give what ``check``
    returns (property tests hold the two together). ``check`` raises ``ValueError``
    naming the value; it is given only values of ``kind``, where a kind is required.
    """

    code: str
    name: str
    schema: core_schema.CoreSchema
    check: Callable[[Any], object]
    kind: type | None = None

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
        if self.kind is not None and (not isinstance(value, self.kind) or isinstance(value, bool)):
            what = "a string" if self.kind is str else "an integer"
            return f"{value!r} is not a valid {self.name}: it is not {what}"
        try:
            self.check(value)
        except ValueError as exc:
            return str(exc)
        return f"{value!r} is not a valid {self.name}"  # pragma: no cover - the two agree


def error_message(error: ErrorDetails) -> str:
    """``error``'s message; for a native type, why its value is not one, naming it."""
    explain = _EXPLAIN.get(error["type"])
    return explain(error.get("input")) if explain else error["msg"]
