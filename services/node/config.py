"""The node's settings: its DICOM identity, archive, known destinations and outbox."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from schemas.dicom import AETitle, Port
from services.settings import ServiceSettings


class Destination(BaseModel):
    """A known move destination: where its Storage SCP listens."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field(min_length=1)
    port: Port


class NodeSettings(ServiceSettings):
    """``dimsebus node`` and ``dimsebus send``: TOML, then DIMSEBUS_*, then flags."""

    node_id: str = Field(
        default_factory=socket.gethostname, min_length=1, pattern=r"^[A-Za-z0-9_.-]+$"
    )
    ae_title: AETitle = "DIMSEBUS"
    host: str = "0.0.0.0"
    port: Port = 11112
    archive_path: Path = Path("var/archive")
    outbox_path: Path = Path("var/node-outbox.sqlite")
    destinations: dict[AETitle, Destination] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    dimse_timeout: float = Field(30.0, gt=0, description="seconds to wait for a DIMSE response")
    acse_timeout: float = Field(30.0, gt=0)
    network_timeout: float = Field(60.0, gt=0)
    max_pdu: int = Field(0, ge=0, description="maximum PDU size offered; 0 = unlimited")
    patient_id_policy: Literal["omit", "hash", "keep"] = Field(
        "hash", description="what of the Patient ID leaves the node in events"
    )
    patient_id_key: SecretStr = Field(
        SecretStr(""), description="HMAC key of the 'hash' policy; set one per site"
    )
