"""The Storage SCU job of ``dimsebus send``: C-STORE files to a peer, capturing every response."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.pdu_primitives import A_ASSOCIATE

from dimsebus.schemas import events as ev
from dimsebus.schemas.limits import chunked
from dimsebus.schemas.status import Service, describe_status
from dimsebus.services.clock import new_id
from dimsebus.services.errors import DimsebusError
from dimsebus.services.node import pynetdicom_internals
from dimsebus.services.node.archive import Archive
from dimsebus.services.node.association import connection_handlers
from dimsebus.services.node.capture_shell import Capture
from dimsebus.services.node.config import NodeSettings
from dimsebus.services.node.contexts import storage_contexts
from dimsebus.services.node.facts import Unsent
from dimsebus.services.node.headers import Header, accepted_by, read_headers, send_file
from dimsebus.services.node.jobs import Job
from dimsebus.services.node.payload import sends_own_bytes
from dimsebus.services.node.tls import association_tls

log = logging.getLogger(__name__)


class SendError(DimsebusError):
    """The peer could not be reached, refused the association, or the association ended.

    ``unsent`` names the instances never requested, when some were (None: all of them).
    """

    def __init__(
        self,
        message: str,
        reason: ev.UnsentReason = "unreachable",
        unsent: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.reason: ev.UnsentReason = reason
        self.unsent = unsent


@dataclass(frozen=True, slots=True)
class Target:
    """A peer Storage SCP: ``AE@HOST:PORT``, and whether it speaks DICOM TLS."""

    ae_title: str
    host: str
    port: int
    tls: bool = False

    @classmethod
    def parse(cls, text: str, tls: bool = False) -> Target:
        """Parse ``AE@HOST:PORT``, or raise naming what is wrong."""
        ae_title, at, address = text.partition("@")
        host, colon, port = address.rpartition(":")
        if (
            not at
            or not colon
            or not ae_title
            or not host
            or not port.isdigit()
            or not 0 < int(port) < 65536
        ):
            raise SendError(f"--to: {text!r} is not AE@HOST:PORT (e.g. STORESCP@127.0.0.1:11112)")
        return cls(ae_title, host, int(port), tls)


@dataclass
class SendSummary:
    """What a send job did, by outcome."""

    operation: ev.Operation
    sent: int = 0
    by_category: dict[str, int] = field(default_factory=dict)
    by_status: dict[int, int] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)
    no_response: int = 0


def dicom_files(paths: Iterable[Path]) -> list[Path]:
    """Files named by ``paths``, folders walked recursively, in a stable order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            raise SendError(f"{path}: no such file or folder")
    return found


def send_files(
    settings: NodeSettings,
    capture: Capture | None,
    target: Target,
    files: list[Path],
    *,
    labels: dict[str, str] | None = None,
    on_progress: Callable[[Path, int | None], None] = lambda path, status: None,
    job: Job | None = None,
    archive: Archive | None = None,
) -> SendSummary:
    """C-STORE ``files`` on one association; every response becomes an event via ``capture``.

    ``job`` is a new send job unless given (a resend passes the original
    operation, its move originator and each instance's attempt). With an
    ``archive``, the job's peer and files are recorded so that a resend
    command can send the same files again. Without a capture (the
    benchmark's baseline) the association is set up like the node's others.
    A file whose own transfer syntax the peer accepted goes as its bytes,
    written by this thread; any other is decoded and encoded again (``payload``).
    """
    job = job or Job(ev.Operation(kind="store", id=new_id()), labels=dict(labels or {}))
    summary = SendSummary(job.operation)
    headers = list(read_headers(files, summary.unreadable, on_progress))
    if not headers:
        return summary
    if capture is not None:
        job.subjects = capture.subjects((h.file.sop_instance, h.study, h.patient) for h in headers)
    if archive is not None:
        archive.record_send(
            str(job.operation.id),
            (target.ae_title, target.host, target.port),
            [(h.file.sop_instance, h.path) for h in headers],
        )
    pynetdicom_internals.send_paths_as_stored()
    ae = AE(ae_title=settings.ae_title)
    ae.dimse_timeout, ae.acse_timeout = settings.dimse_timeout, settings.acse_timeout
    ae.connection_timeout = settings.acse_timeout  # TCP connect and TLS handshake
    ae.network_timeout, ae.maximum_pdu_size = settings.network_timeout, settings.max_pdu
    rejection = Rejection()
    handlers = capture.handlers(job) if capture else connection_handlers()
    assoc = ae.associate(
        target.host,
        target.port,
        contexts=storage_contexts((h.file.sop_class, h.file.transfer_syntax) for h in headers),
        ae_title=target.ae_title,
        evt_handlers=[*handlers, (evt.EVT_ACSE_RECV, rejection.on_acse_recv)],
        tls_args=association_tls(settings, target.host, target.tls),
    )
    try:
        _send_all(assoc, target, headers, job, summary, on_progress, rejection)
    except SendError as exc:
        if capture is not None:
            uids = exc.unsent if exc.unsent is not None else [h.file.sop_instance for h in headers]
            emit_unsent(capture, job, target.ae_title, uids, exc.reason, str(exc))
        raise
    return summary


def _send_all(
    assoc: Any,
    target: Target,
    headers: list[Header],
    job: Job,
    summary: SendSummary,
    on_progress: Callable[[Path, int | None], None],
    rejection: Rejection,
) -> None:
    """Every C-STORE on ``assoc``; a SendError names those never requested."""
    peer = f"{target.ae_title}@{target.host}:{target.port}"
    if not assoc.is_established:
        what = (
            f"rejected the association ({rejection.result})"
            if rejection.result
            else "did not accept an association"
        )
        raise SendError(f"{peer} {what}", rejection.reason)
    pynetdicom_internals.write_file_requests_on_caller(assoc)
    accepted = accepted_by(assoc)
    try:
        for number, header in enumerate(headers):
            if not assoc.is_established:  # aborted, by the peer or for a broken response
                raise _ended(peer, headers, number)
            as_bytes = sends_own_bytes(header.file, accepted)
            try:
                status = _store_one(assoc, header.path, as_bytes, number, job.move_originator)
            except RuntimeError:  # pynetdicom: it ended between the check and the request
                if assoc.is_established:
                    raise
                raise _ended(peer, headers, number) from None
            _count(summary, status)
            on_progress(header.path, status)
    finally:
        if assoc.is_established:
            assoc.release()


def _ended(peer: str, headers: list[Header], number: int) -> SendError:
    """The association ended before request ``number``: it and the rest were never sent."""
    return SendError(
        f"{peer}: the association ended after {number} of {len(headers)} C-STOREs",
        "association_lost",
        unsent=[header.file.sop_instance for header in headers[number:]],
    )


def emit_unsent(
    capture: Capture,
    job: Job,
    destination: str,
    uids: list[str],
    reason: ev.UnsentReason,
    detail: str,
) -> None:
    """``dicom.cstore.unsent`` for a job's instances never requested, by attempt and chunk."""
    by_attempt: dict[int, list[str]] = defaultdict(list)
    for uid in uids:
        by_attempt[job.attempts.get(uid, 1)].append(uid)
    log.warning("%d instance(s) of %s not sent: %s", len(uids), job.operation.id, detail)
    capture.spool(
        *(
            Unsent(
                capture.stamp(),
                job.operation,
                destination,
                tuple(chunk),
                attempt,
                job.move_originator,
                {**capture.labels, **job.labels},
                reason,
                detail,
            )
            for attempt, attempt_uids in sorted(by_attempt.items())
            for chunk in chunked(sorted(attempt_uids))
        )
    )


class Rejection:
    """Remembers an A-ASSOCIATE-RJ's result, for the reason of an unsent job."""

    def __init__(self) -> None:
        self.result: str | None = None

    def on_acse_recv(self, event: evt.Event) -> None:
        """Note a rejection (result 1 permanent, 2 transient; PS3.8 9.3.4)."""
        primitive = getattr(event, "primitive", None)
        result = getattr(primitive, "result", None)
        if isinstance(primitive, A_ASSOCIATE) and result in (1, 2):
            self.result = "permanent" if result == 1 else "transient"

    @property
    def reason(self) -> ev.UnsentReason:
        """Why nothing was sent."""
        if self.result == "permanent":
            return "rejected_permanent"
        return "rejected_transient" if self.result == "transient" else "unreachable"


def message_id(number: int) -> int:
    """The Message ID of the ``number``-th request (from 0): 1..65535, then wraps (PS3.7 E.1).

    pynetdicom sends every request with Message ID 1 unless told otherwise; an
    association's ids must tell its requests apart for the (association, id) join.
    """
    return number % 0xFFFF + 1


def _store_one(
    assoc: Any, path: Path, as_bytes: bool, number: int, originator: ev.MoveOriginator | None
) -> int | None:
    """One C-STORE of ``path``: its own bytes if ``as_bytes``, else decoded and encoded again
    (``headers.send_file``)."""
    extra: dict[str, Any] = {"msg_id": message_id(number)}
    if originator is not None:
        extra |= {"originator_aet": originator.ae_title, "originator_id": originator.message_id}
    return _status(send_file(assoc.send_c_store, path, as_bytes, **extra))


def _status(response: Dataset) -> int | None:
    return int(response.Status) if "Status" in response else None


def _count(summary: SendSummary, status: int | None) -> None:
    summary.sent += 1
    if status is None:
        summary.no_response += 1
        return
    category = describe_status(status, Service.STORAGE).category.value
    summary.by_category[category] = summary.by_category.get(category, 0) + 1
    summary.by_status[status] = summary.by_status.get(status, 0) + 1
