"""Configuration from pydantic-settings: flags override ``DIMSEBUS_*`` variables, which
override the TOML file, which overrides the defaults.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, AliasChoices, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from schemas.limits import MAX_BODY_BYTES
from services.bus.topology import StreamRetention
from services.errors import ConfigError

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


def _check_amqp_url(value: str) -> str:
    if not re.match(r"^amqps?://", value):
        raise ValueError(f"{value!r} is not an AMQP URL: it must start with amqp:// or amqps://")
    return value


def _check_max_age(value: str) -> str:
    if not re.fullmatch(r"[1-9][0-9]*[YMDhms]", value):
        raise ValueError(f"{value!r} is not a RabbitMQ max-age: expected e.g. 7D, 12h or 30m")
    return value


class ServiceSettings(BaseSettings):
    """What every service needs: the broker and the event log's retention."""

    model_config = SettingsConfigDict(env_prefix="DIMSEBUS_", extra="forbid")

    amqp_url: Annotated[str, AfterValidator(_check_amqp_url)] = Field(
        DEFAULT_AMQP_URL,
        validation_alias=AliasChoices("amqp_url", "DIMSEBUS_AMQP_URL", "AMQP_URL"),
        description="RabbitMQ URL; the password is masked when shown",
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
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls)


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
        raise ConfigError(describe_config_error(exc, config_file)) from exc
    except ValueError as exc:  # a TOML syntax error
        raise ConfigError(f"{config_file}: {exc}") from exc


def describe_config_error(exc: ValidationError, config_file: Path | None) -> str:
    """One line per bad setting, naming the field and the value."""
    where = f"{config_file}: " if config_file else ""
    problems = []
    for error in exc.errors(include_url=False):
        field = ".".join(str(part) for part in error["loc"])
        problems.append(f"{field}: {error['msg']} (got {error.get('input')!r})")
    return where + "; ".join(problems)


def masked(settings: BaseSettings) -> Mapping[str, Any]:
    """The settings as JSON data, with URL passwords as ``***`` and secrets as ``**********``."""
    return {name: _mask(value) for name, value in settings.model_dump(mode="json").items()}


def _mask(value: Any) -> Any:
    if isinstance(value, str):
        return re.sub(r"(://[^:/@]+:)[^@]+@", r"\1***@", value)
    if isinstance(value, dict):
        return {key: _mask(item) for key, item in value.items()}
    return value
