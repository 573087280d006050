"""Pure: what the contract rejects, salvaged as ``dicom.message.invalid`` instead of lost.

A peer can put anything on the wire: a Status of the wrong length, a
multi-valued Error Comment, a UID with a leading zero, an AE title with a
backslash. None of it may raise out of a pynetdicom handler, where the event
would be lost; this module turns it into values and events the contract
accepts. Nothing here touches a socket or a clock: ids and times come in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from uuid import UUID

from pydantic import ValidationError

from dimsebus.schemas import events as ev
from dimsebus.schemas.dicom import MESSAGE_ID_MAX, STATUS_MAX, check_ae_title, check_uid
from dimsebus.schemas.envelope import CloudEvent
from dimsebus.schemas.native import error_message
from dimsebus.services.node.stamp import Stamp

ERROR_LIMIT = 4096
VALUE_LIMIT = 1024
UID_LIMIT = 256
MAX_FIELDS = 64
NAMED_LIMIT = 16  # values an event names out of a list; the rest are counted
UNKNOWN_AE_TITLE = "UNKNOWN"


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A command-set element whose bytes do not decode as its VR (e.g. an odd-length US)."""

    error: str

    def __repr__(self) -> str:
        return f"<unreadable: {self.error}>"


def text(value: str, limit: int) -> str:
    """``value`` cut to ``limit`` characters, with lone surrogates escaped so JSON can hold it."""
    return value[:limit].encode("utf-8", "backslashreplace").decode("utf-8")[:limit]


def shown(value: object, limit: int = VALUE_LIMIT) -> str:
    """A string as it is, anything else as its ``repr()``: for messages about a raw value."""
    return text(value, limit) if isinstance(value, str) else represented(value, limit)


def represented(value: object, limit: int = VALUE_LIMIT) -> str:
    """``repr(value)``, truncated; even an object whose ``repr`` fails gets one."""
    try:
        return text(repr(value), limit)
    except Exception as exc:  # a peer's value must not take the event down with it
        return f"<{type(value).__name__} whose repr() failed: {type(exc).__name__}>"


def describe_error(exc: ValidationError, limit: int = 5) -> str:
    """One clause per problem, each naming the field path and the rejected value."""
    clauses = [
        f"{'.'.join(str(part) for part in error['loc']) or 'body'}: {error_message(error)} "
        f"(got {shown(error.get('input'), 200)})"
        for error in exc.errors(include_url=False)[:limit]
    ]
    if exc.error_count() > limit:
        clauses.append(f"... and {exc.error_count() - limit} more")
    return "; ".join(clauses)


def status_problem(status: object) -> str | None:
    """Why a C-STORE-RSP's Status cannot be used (PS3.7 C.1), or None if it is 0 to 0xFFFF."""
    if number_in(status, 0, STATUS_MAX) is not None:
        return None
    return f"C-STORE-RSP Status is {represented(status, 200)}"


def comment_text(value: object) -> str | None:
    """Error Comment (0000,0902) as text: a backslash in it made pydicom split it in values."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Sequence) and all(isinstance(part, str) for part in value):
        return "\\".join(value)
    return shown(value)


def number_in(value: object, low: int, high: int) -> int | None:
    """``value`` if it is an integer (not a bool) from ``low`` to ``high``, else None."""
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return value
    return None


def message_id_or_none(value: object) -> int | None:
    """``value`` if it is a valid DIMSE Message ID (PS3.7 E.1), else None."""
    return number_in(value, 0, MESSAGE_ID_MAX)


def rendered(fields: Mapping[str, object]) -> dict[str, str]:
    """Raw command-set values by keyword, each as its truncated ``repr()``."""
    return {text(name, 64): represented(value) for name, value in list(fields.items())[:MAX_FIELDS]}


@dataclass(frozen=True, slots=True)
class InvalidFacts:
    """What a ``dicom.message.invalid`` says, its peer values already made text (``invalid_facts``).

    Plain values only, so that a shell can spool them and its relay make the event
    (``dimsebus.services.node.facts``).
    """

    message: str
    error: str
    association_id: UUID | None = None
    message_id: int | None = None
    affected_sop_instance_uid: str | None = None
    operation: ev.Operation | None = None
    fields: dict[str, str] = field(default_factory=dict)
    count: int | None = None


def invalid_facts(
    message: str,
    error: str,
    *,
    association_id: UUID | None = None,
    message_id: object = None,
    sop_instance_uid: object = None,
    operation: ev.Operation | None = None,
    fields: Mapping[str, object] | None = None,
    count: int | None = None,
) -> InvalidFacts:
    """The facts of a ``dicom.message.invalid`` from raw values; never fails on them."""
    uid = shown(sop_instance_uid, UID_LIMIT) if sop_instance_uid not in (None, "") else None
    return InvalidFacts(
        message=text(message, 64) or "unknown",
        error=text(error, ERROR_LIMIT) or "no error text",
        association_id=association_id,
        message_id=message_id_or_none(message_id),
        affected_sop_instance_uid=uid,
        operation=operation,
        fields=rendered(fields or {}),
        count=count,
    )


def invalid_subject(facts: InvalidFacts) -> str:
    """The subject of ``facts``' event: the instance, else the association, else the message."""
    if facts.affected_sop_instance_uid:
        return facts.affected_sop_instance_uid
    return str(facts.association_id) if facts.association_id else facts.message


def invalid_of(facts: InvalidFacts, stamp: Stamp) -> CloudEvent:
    """``dicom.message.invalid`` of ``facts``, under ``stamp``."""
    data = ev.MessageInvalidData(
        message=facts.message,
        association_id=facts.association_id,
        message_id=facts.message_id,
        affected_sop_instance_uid=facts.affected_sop_instance_uid,
        operation=facts.operation,
        error=facts.error,
        fields=facts.fields,
        count=facts.count,
        at=stamp.time,
    )
    subject = invalid_subject(facts)
    return ev.MessageInvalid.model_validate(
        {
            "id": stamp.id,
            "source": stamp.source,
            "time": stamp.time,
            "subject": subject,
            "data": data,
        }
    )


def invalid_event(
    message: str,
    error: str,
    stamp: Stamp,
    *,
    association_id: UUID | None = None,
    message_id: object = None,
    sop_instance_uid: object = None,
    operation: ev.Operation | None = None,
    fields: Mapping[str, object] | None = None,
    count: int | None = None,
) -> CloudEvent:
    """``dicom.message.invalid``: built from raw values, so it never fails on them.

    ``count`` is how many messages alike the event stands for, when more than one.
    """
    facts = invalid_facts(
        message,
        error,
        association_id=association_id,
        message_id=message_id,
        sop_instance_uid=sop_instance_uid,
        operation=operation,
        fields=fields,
        count=count,
    )
    return invalid_of(facts, stamp)


def split_uids(values: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``values`` as (the valid UIDs, the rest), each in order (PS3.5 9.1)."""
    valid: list[str] = []
    invalid: list[str] = []
    for value in values:
        try:
            valid.append(check_uid(value))
        except (ValueError, TypeError):
            invalid.append(value)
    return tuple(valid), tuple(invalid)


def left_out_facts(
    message: str,
    element: str,
    invalid: Sequence[str],
    *,
    association_id: UUID | None = None,
    message_id: object = None,
    operation: ev.Operation | None = None,
) -> InvalidFacts:
    """The facts of a ``dicom.message.invalid`` naming, once, the values left out of a list.

    E.g. SOP Instance UIDs an archive filled before it validated them, in a final
    C-MOVE-RSP's Failed SOP Instance UID List: its event goes out without them.
    """
    named = invalid[:NAMED_LIMIT]
    more = f" and {len(invalid) - len(named)} more" if len(invalid) > len(named) else ""
    return invalid_facts(
        message,
        f"{len(invalid)} value(s) of {element} are not valid UIDs (PS3.5 9.1) and were left "
        f"out of the event: {', '.join(shown(value, UID_LIMIT) for value in named)}{more}",
        association_id=association_id,
        message_id=message_id,
        operation=operation,
        fields={f"{element}[{index}]": value for index, value in enumerate(named)},
        count=len(invalid),
    )


def left_out_event(
    message: str,
    element: str,
    invalid: Sequence[str],
    stamp: Stamp,
    *,
    association_id: UUID | None = None,
    message_id: object = None,
    operation: ev.Operation | None = None,
) -> CloudEvent:
    """``dicom.message.invalid`` naming, once, the values left out of a UID list."""
    facts = left_out_facts(
        message,
        element,
        invalid,
        association_id=association_id,
        message_id=message_id,
        operation=operation,
    )
    return invalid_of(facts, stamp)


def ae_title_or_substitute(raw: object) -> tuple[str, str | None]:
    """A valid AE title for ``raw``, and why it had to be substituted (None if it did not).

    Characters outside the AE repertoire (controls, backslash, non-ASCII) become
    ``?`` and the title is cut to 16 characters, so ``STORE\\SCP`` is still
    recognisable as ``STORE?SCP``. A missing or blank title is ``UNKNOWN``, as
    before negotiation, and is not reported.
    """
    title = raw.decode("latin-1") if isinstance(raw, bytes) else "" if raw is None else str(raw)
    title = title.strip(" ")
    if not title:
        return UNKNOWN_AE_TITLE, None
    try:
        return check_ae_title(title), None
    except ValueError as exc:
        repertoire = "".join(c if " " <= c <= "~" and c != "\\" else "?" for c in title)
        substitute = repertoire[:16].strip(" ") or UNKNOWN_AE_TITLE
        return substitute, f"{text(str(exc), 512)}; recorded as {substitute!r}"


def association_ref(
    association_id: UUID,
    role: ev.Role,
    titles: tuple[object, object],
    peer_host: object,
    peer_port: object,
) -> tuple[ev.AssociationRef, dict[str, str]]:
    """The association's handle, and each AE title (local, peer) that had to be substituted."""
    (local, local_problem), (peer, peer_problem) = map(ae_title_or_substitute, titles)
    ref = ev.AssociationRef(
        id=association_id,
        role=role,
        local_ae_title=local,
        peer_ae_title=peer,
        peer_host=text(str(peer_host or ""), 253) or "unknown",
        peer_port=number_in(peer_port, 0, 65535) or 0,
    )
    problems = {"local_ae_title": local_problem, "peer_ae_title": peer_problem}
    return ref, {name: problem for name, problem in problems.items() if problem}


def substitution_facts(
    ref: ev.AssociationRef, problems: Mapping[str, str], raw: Mapping[str, object]
) -> InvalidFacts:
    """The facts of a ``dicom.message.invalid`` for AE titles that were substituted."""
    return invalid_facts(
        "A-ASSOCIATE",
        "; ".join(f"{name}: {problem}" for name, problem in problems.items()),
        association_id=ref.id,
        fields=raw,
    )


def substitution_event(
    ref: ev.AssociationRef, problems: Mapping[str, str], raw: Mapping[str, object], stamp: Stamp
) -> CloudEvent:
    """``dicom.message.invalid`` for an A-ASSOCIATE whose AE titles were substituted."""
    return invalid_of(substitution_facts(ref, problems, raw), stamp)
