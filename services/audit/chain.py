"""Pure: audit records, their SHA-256 hash chain, and checking it.

Each record holds one event and the facts an auditor filters by. Its hash is
SHA-256 over the canonical JSON of all its fields, the previous record's
hash included, so editing, removing or reordering any record breaks the chain
from that record on. Canonical JSON: keys sorted, no insignificant
whitespace, UTF-8 (the subset of RFC 8785 that these records need: strings,
integers, null, objects and arrays).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from dimsebus.schemas.envelope import CloudEvent

GENESIS = "0" * 64


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One event in the audit trail, chained to the one before it."""

    seq: int
    event_id: str
    event_type: str
    event_time: str
    source: str
    operation_id: str | None
    association_id: str | None
    study_uid: str | None
    sop_instance_uid: str | None
    peer_ae_title: str | None
    status: int | None
    event: dict[str, Any]
    prev_hash: str
    hash: str

    def content(self) -> dict[str, Any]:
        """Every field the hash covers: all but the hash itself."""
        fields = asdict(self)
        del fields["hash"]
        return fields


def canonical_json(value: Any) -> bytes:
    """The one byte form of ``value`` that is hashed."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest(content: dict[str, Any]) -> str:
    """SHA-256 of a record's content, in hex."""
    return hashlib.sha256(canonical_json(content)).hexdigest()


def facts_of(event: CloudEvent) -> dict[str, Any]:
    """What an auditor filters by: operation, association, study, instance, peer, status."""
    data = event.data
    operation = getattr(data, "operation", None)
    association = getattr(data, "association", None)
    # dicom.message.invalid names its association by id only: the rest may be what was invalid
    association_id = (
        association.id if association is not None else getattr(data, "association_id", None)
    )
    status = getattr(data, "status", None)
    return {
        "operation_id": str(operation.id) if operation is not None else None,
        "association_id": str(association_id) if association_id is not None else None,
        "study_uid": getattr(data, "study_instance_uid", None),
        "sop_instance_uid": getattr(data, "affected_sop_instance_uid", None),
        "peer_ae_title": association.peer_ae_title if association is not None else None,
        "status": int(status) if status is not None else None,
    }


def next_record(seq: int, prev_hash: str, event: CloudEvent) -> AuditRecord:
    """The record of ``event`` after the one numbered ``seq - 1`` with ``prev_hash``."""
    content: dict[str, Any] = {
        "seq": seq,
        "event_id": str(event.id),
        "event_type": event.type,
        "event_time": event.time.isoformat(),
        "source": event.source,
        **facts_of(event),
        "event": event.model_dump(mode="json"),
        "prev_hash": prev_hash,
    }
    return AuditRecord(**content, hash=digest(content))


@dataclass(frozen=True, slots=True)
class Verification:
    """The result of walking the chain."""

    intact: int
    broken_at: int | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        """Whether every record is intact."""
        return self.broken_at is None


def verify(records: Iterable[AuditRecord]) -> Verification:
    """Walk the records in order; the first one that breaks the chain, and why."""
    expected_seq, prev_hash, intact = 1, GENESIS, 0
    for record in records:
        if record.seq != expected_seq:
            return Verification(
                intact, record.seq, f"record {expected_seq} is missing before {record.seq}"
            )
        if record.prev_hash != prev_hash:
            return Verification(
                intact, record.seq, "its previous hash is not the hash of the record before it"
            )
        if digest(record.content()) != record.hash:
            return Verification(intact, record.seq, "its content does not match its hash")
        expected_seq, prev_hash, intact = record.seq + 1, record.hash, intact + 1
    return Verification(intact)
