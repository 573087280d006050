"""Configuration from pydantic-settings: flags override ``DIMSEBUS_*`` variables, which
override the TOML file, which overrides the defaults.

A variable's value is read as the same key's value in the TOML file would be:
``DIMSEBUS_PORT=11113`` is the integer 11113, ``DIMSEBUS_TLS__SCP=false`` a boolean,
``DIMSEBUS_LABELS='{site = "east"}'`` a table (JSON works too).
"""

from __future__ import annotations

import os
import re
import tomllib
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    Field,
    ValidationError,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from dimsebus.schemas.limits import MAX_BODY_BYTES
from dimsebus.schemas.native import error_message
from dimsebus.services.bus.brokers import parse_urls
from dimsebus.services.bus.topology import StreamRetention
from dimsebus.services.errors import ConfigError

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


def _check_amqp_url(value: str) -> str:
    """One AMQP URL or several, comma-separated (a cluster's nodes), each checked."""
    return ",".join(parse_urls(value))


def _none_if_empty(value: object) -> object:
    """An empty value (``DIMSEBUS_REPLICAS=`` from compose's default) is no value."""
    return None if value == "" else value


def _check_max_age(value: str) -> str:
    if not re.fullmatch(r"[1-9][0-9]*[YMDhms]", value):
        raise ValueError(f"{value!r} is not a RabbitMQ max-age: expected e.g. 7D, 12h or 30m")
    return value


class ServiceSettings(BaseSettings):
    """What every service needs: the broker and the event log's retention."""

    model_config = SettingsConfigDict(
        env_prefix="DIMSEBUS_", extra="forbid", env_nested_delimiter="__"
    )

    amqp_url: Annotated[str, AfterValidator(_check_amqp_url)] = Field(
        DEFAULT_AMQP_URL,
        validation_alias=AliasChoices("DIMSEBUS_AMQP_URL", "amqp_url", "AMQP_URL"),
        description="RabbitMQ URL, or several comma-separated (one per cluster node: clients "
        "move to the next when theirs dies); passwords are masked when shown",
    )
    replicas: Annotated[int | None, BeforeValidator(_none_if_empty)] = Field(
        None,
        ge=1,
        le=255,
        description="nodes the stream and each quorum queue are created on "
        "(x-initial-cluster-size, x-quorum-initial-group-size); none: the broker's default",
    )
    publish_window: int = Field(256, ge=1, le=65535, description="unconfirmed publishes in flight")
    prefetch: int = Field(64, ge=1, le=65535, description="unacked deliveries per consumer")
    max_body_bytes: int = Field(
        MAX_BODY_BYTES,
        ge=64 * 1024,
        le=128 * 1024**2,
        description="a message body over this is parked (or skipped on the log) unparsed",
    )
    log_max_age: Annotated[str, AfterValidator(_check_max_age)] = Field(
        "30D", description="x-max-age of the dimsebus.log stream"
    )
    log_max_length_bytes: int = Field(
        20 * 1024**3, ge=1, description="x-max-length-bytes of the log"
    )
    http_host: str = Field("127.0.0.1", description="address of /metrics and /healthz")
    http_port: int | None = Field(
        None, ge=0, le=65535, description="port of /metrics and /healthz; none: off"
    )

    @property
    def retention(self) -> StreamRetention:
        """The stream retention these settings ask for."""
        return StreamRetention(max_age=self.log_max_age, max_length_bytes=self.log_max_length_bytes)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, TomlEnvSource(settings_cls), TomlConfigSettingsSource(settings_cls)


class LogSettings(ServiceSettings):
    """A service that reads the log (tracker, audit, ``events tail``): how it reads it."""

    log_protocol: Literal["stream", "amqp"] = Field(
        "stream",
        description="how the log is read: RabbitMQ's stream protocol (the rabbitmq_stream "
        "plugin; a broker whose stream port does not serve it is read over AMQP, said in "
        "one line) or AMQP 0-9-1",
    )
    stream_port: int | None = Field(
        None, ge=1, le=65535, description="the broker's stream port; none: 5552, 5551 for amqps"
    )


class TomlEnvSource(EnvSettingsSource):
    """``DIMSEBUS_*`` variables, each value read as a TOML value of its key.

    pydantic-settings hands a scalar variable to the model as text and leaves the
    conversion to pydantic's lax mode; the strict DICOM types of the contract
    (``Port`` is a strict integer) refuse text, so ``DIMSEBUS_PORT``
    failed where ``port = 11113`` in the file passed. Here every value that should be a
    number or a boolean is parsed as TOML first, at the top level and under ``__``.
    """

    def prepare_field_value(
        self, field_name: str, field: FieldInfo, value: Any, value_is_complex: bool
    ) -> Any:
        prepared = super().prepare_field_value(field_name, field, value, value_is_complex)
        return as_toml(field.annotation, prepared) if isinstance(prepared, str) else prepared

    def explode_env_vars(
        self, field_name: str, field: FieldInfo, env_vars: Mapping[str, str | None]
    ) -> dict[str, Any]:
        exploded = super().explode_env_vars(field_name, field, env_vars)
        typed: dict[str, Any] = as_toml(field.annotation, exploded)
        return typed

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        """A table or an array as JSON, or else as a TOML inline table or array."""
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError:
            if not isinstance(value, str):
                raise
        try:
            return tomllib.loads(f"value = {value}")["value"]
        except tomllib.TOMLDecodeError:
            raise ValueError(
                f"DIMSEBUS_{field_name.upper()}: {value!r} is neither JSON nor a TOML value"
            ) from None


_SCALARS = (int, float, bool)


def as_toml(annotation: Any, value: Any) -> Any:
    """``value`` with each text that ``annotation`` wants as a number or boolean parsed as TOML.

    Text that is not such a TOML value stays as it is, for the model to reject by name.
    """
    if get_origin(annotation) is Annotated:
        return as_toml(get_args(annotation)[0], value)
    if get_origin(annotation) in (Union, types.UnionType):
        members = [arg for arg in get_args(annotation) if arg is not type(None)]
        if isinstance(value, str):
            return _scalar(value) if all(_base(m) in _SCALARS for m in members) else value
        for member in members:
            if isinstance(value, dict) and _holds_mapping(member):
                return as_toml(member, value)
        return value
    if isinstance(value, str):
        return _scalar(value) if _base(annotation) in _SCALARS else value
    if isinstance(value, dict):
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return {key: as_toml(_field_type(annotation, key), item) for key, item in value.items()}
        if get_origin(annotation) is dict:
            item_type = get_args(annotation)[-1]
            return {key: as_toml(item_type, item) for key, item in value.items()}
    return value


def _scalar(text: str) -> Any:
    try:
        parsed = tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text
    return parsed if isinstance(parsed, _SCALARS) else text


def _base(annotation: Any) -> Any:
    return _base(get_args(annotation)[0]) if get_origin(annotation) is Annotated else annotation


def _holds_mapping(annotation: Any) -> bool:
    base = _base(annotation)
    return get_origin(base) is dict or (isinstance(base, type) and issubclass(base, BaseModel))


def _field_type(model: type[BaseModel], key: str) -> Any:
    """The annotation of ``model``'s field named ``key`` (any case); Any if it has none."""
    for name, field in model.model_fields.items():
        if name.lower() == key.lower():
            return field.annotation
    return Any


S = TypeVar("S", bound=ServiceSettings)


def load_settings(cls: type[S], config_file: Path | None = None, **flags: Any) -> S:
    """Settings of ``cls`` from file, environment and the flags that were given."""
    if config_file is not None and not config_file.is_file():
        raise ConfigError(f"--config: {str(config_file)!r} is not a readable file")
    given = {name: value for name, value in flags.items() if value is not None}
    source = cls
    if config_file is not None:
        source = type(
            cls.__name__, (cls,), {"model_config": {**cls.model_config, "toml_file": config_file}}
        )
    try:
        return source(**given)
    except ValidationError as exc:
        raise ConfigError(describe_config_error(exc, config_file, set(given))) from exc
    except SettingsError as exc:  # a variable's table or array that does not parse
        raise ConfigError(str(exc.__cause__ or exc)) from exc
    except ValueError as exc:  # a TOML syntax error
        raise ConfigError(f"{config_file}: {exc}") from exc


def describe_config_error(
    exc: ValidationError, config_file: Path | None, flags: set[str] | frozenset[str] = frozenset()
) -> str:
    """One part per bad setting, naming where it came from, the field and the value."""
    problems = []
    for error in exc.errors(include_url=False):
        loc = [str(part) for part in error["loc"]]
        where = _origin(loc, config_file, flags)
        field = ".".join(loc)
        shown = _mask(error.get("input"))  # a URL's password is not shown, even in an error
        problems.append(f"{where}{field}: {error_message(error)} (got {shown!r})")
    return "; ".join(problems)


def _origin(loc: list[str], config_file: Path | None, flags: set[str] | frozenset[str]) -> str:
    """``DIMSEBUS_X: `` if a variable set the value at ``loc``, ``FILE: `` if the file did."""
    if loc and loc[0] in flags:
        return ""
    names = {name.upper() for name in os.environ}
    for depth in range(len(loc), 0, -1):
        variable = "DIMSEBUS_" + "__".join(loc[:depth]).upper()
        if variable in names:
            return f"{variable}: "
    return f"{config_file}: " if config_file else ""


def masked(settings: BaseSettings) -> Mapping[str, Any]:
    """The settings as JSON data, with URL passwords as ``***`` and secrets as ``**********``."""
    return {name: _mask(value) for name, value in settings.model_dump(mode="json").items()}


def _mask(value: Any) -> Any:
    if isinstance(value, str):
        return re.sub(r"(://[^:/@]+:)[^@]+@", r"\1***@", value)
    if isinstance(value, dict):
        return {key: _mask(item) for key, item in value.items()}
    return value
