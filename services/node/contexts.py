"""Presentation contexts to propose for a set of instances (PS3.8 9.3.2.2)."""

from __future__ import annotations

from collections.abc import Iterable

from pynetdicom import build_context
from pynetdicom.presentation import PresentationContext

from dimsebus.services.errors import DimsebusError

# Every Storage SCP must accept Implicit VR Little Endian (PS3.5 10.1); Explicit is common.
FALLBACK_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
MAX_CONTEXTS = 128


def storage_contexts(instances: Iterable[tuple[str, str]]) -> list[PresentationContext]:
    """One context per SOP class, offering each instance's stored transfer syntax first."""
    syntaxes: dict[str, list[str]] = {}
    for sop_class, syntax in instances:
        offered = syntaxes.setdefault(sop_class, [])
        if syntax not in offered:
            offered.append(syntax)
    if len(syntaxes) > MAX_CONTEXTS:
        raise DimsebusError(
            f"{len(syntaxes)} SOP classes need more than the {MAX_CONTEXTS} presentation "
            "contexts of one association"
        )
    return [
        build_context(sop_class, offered + [ts for ts in FALLBACK_SYNTAXES if ts not in offered])
        for sop_class, offered in syntaxes.items()
    ]
