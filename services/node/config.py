"""The node's settings: its DICOM identity, archive, known destinations and outbox."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from dimsebus.schemas.dicom import AETitle, Port
from dimsebus.services.settings import ServiceSettings

Service = Literal["echo", "store", "find", "move", "get"]
"""What a peer may ask of the node: C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET."""


class Destination(BaseModel):
    """A known move destination: where its Storage SCP listens, and whether over TLS."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field(min_length=1)
    port: Port
    tls: bool = Field(False, description="open its associations over DICOM TLS ([tls])")


class Access(BaseModel):
    """What the node checks of every association it accepts (secure by default)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    check_called_ae: bool = Field(
        True, description="reject an association to another called AE title than ae_title"
    )
    unknown_peers: frozenset[Service] = Field(
        frozenset({"echo"}), description="what a calling AE title not under [peers] may do"
    )


class Peer(BaseModel):
    """A calling AE title the node knows: where it may connect from and what it may do."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str | None = Field(None, min_length=1, description="the peer must connect from here")
    allow: frozenset[Service] = Field(frozenset({"echo"}), description="services it may use")


class Tls(BaseModel):
    """DICOM TLS (PS3.15 B.1, BCP 195): the node's certificate, key and trusted CAs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    certificate: Path = Field(description="PEM certificate (chain) of the node")
    key: Path = Field(description="PEM private key of the certificate")
    ca: Path | None = Field(None, description="PEM CA bundle that peers' certificates chain to")
    require_client_certificate: bool = Field(
        False, description="the SCP refuses a TLS peer without a certificate signed by ca"
    )
    scp: bool = Field(True, description="the node's own SCP port speaks TLS")
    key_password: SecretStr | None = Field(
        None, description="password of an encrypted key (never prompted for)"
    )
    check_hostname: bool = Field(
        False,
        description="the node's TLS associations also check that the peer's certificate "
        "names the host dialled (DICOM peers are usually trusted by their CA chain alone)",
    )


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
    max_pdu: int = Field(
        131072,
        ge=4096,
        le=16 * 1024**2,
        description="maximum PDU length the node receives; a longer PDU is aborted unread",
    )
    max_associations: int = Field(64, ge=1, le=1024, description="associations at once")
    max_associations_per_host: int = Field(
        16,
        ge=1,
        le=1024,
        description="associations at once from one IP address (an IPv6 one: from its /64)",
    )
    access: Access = Field(default_factory=Access)
    peers: dict[AETitle, Peer] = Field(default_factory=dict)
    tls: Tls | None = None
    overwrite_instances: bool = Field(
        False, description="store an instance already held under another Patient ID"
    )
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
