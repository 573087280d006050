"""The node's settings: its DICOM identity, archive, known destinations and outbox."""

from __future__ import annotations

import contextlib
import os
import secrets
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
        SecretStr(""),
        description="HMAC key of the 'hash' policy; empty: a random key kept in the archive",
    )

    def patient_key(self) -> bytes:
        """The HMAC key for Patient IDs: the configured one, else this archive's own.

        A site that wants the same patient to hash alike on several nodes sets one key
        for all of them; otherwise each archive gets a random key on first use
        (``patient-id.key``, readable by its owner only), so hashes cannot be reversed
        by hashing candidate IDs without it.
        """
        configured = self.patient_id_key.get_secret_value()
        if configured:
            return configured.encode()
        path = self.archive_path / "patient-id.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(descriptor, "w") as key_file:
                    key_file.write(secrets.token_hex(32))
        return path.read_text().strip().encode()
