"""How a file's data set goes into its C-STORE-RQ: its own bytes, or decoded and encoded again.

A file whose transfer syntax the peer accepted for its SOP class is sent as the bytes
after its file meta (PS3.10 7.1): nothing is decoded, nothing copied into a new
encoding, which is most of the cost of a large image. Any other file is read with
pydicom and encoded by pynetdicom in the accepted syntax, as before. Pure: the
sender (``sender.py``) reads the facts and acts on the answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Set
from dataclasses import dataclass

# PS3.5 A.1, A.2, A.3, A.5: the uncompressed syntaxes and how each is encoded
# (implicit VR, little endian). Every compressed syntax is explicit VR little endian
# (PS3.5 A.4); a syntax not known here is sent as its bytes only if it is the file's
# and accepted, its encoding then being the peer's business as much as ours.
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
_ENCODINGS = {
    IMPLICIT_VR_LITTLE_ENDIAN: (True, True),
    "1.2.840.10008.1.2.2": (False, False),  # Explicit VR Big Endian (retired)
}
_EXPLICIT_LITTLE = (False, True)

Encoding = tuple[bool | None, bool | None]
"""(implicit VR, little endian) as pydicom found the data set; None where it cannot tell."""


@dataclass(frozen=True, slots=True)
class StoredFile:
    """What the sender read of a file before sending it (file meta and data set header)."""

    sop_class: str
    sop_instance: str
    transfer_syntax: str
    meta_sop_class: str | None
    meta_sop_instance: str | None
    encoding: Encoding


def syntax_encoding(transfer_syntax: str) -> tuple[bool, bool]:
    """(implicit VR, little endian) of a transfer syntax (PS3.5 10.1, Annex A)."""
    return _ENCODINGS.get(transfer_syntax, _EXPLICIT_LITTLE)


def readable_as_stored(file: StoredFile) -> bool:
    """Whether the file's bytes say what the request will say they are.

    pynetdicom takes the request's Affected SOP Class and Instance UID from the file
    meta (Media Storage SOP Class/Instance UID) when it sends the bytes, and the
    events record those: they must be the data set's. A data set whose encoding is not
    its file meta's transfer syntax (a mislabelled file) is left to pydicom, which
    reads it as it is and encodes it as the syntax says.
    """
    found = tuple(
        expected if seen is None else seen
        for seen, expected in zip(file.encoding, syntax_encoding(file.transfer_syntax), strict=True)
    )
    return (
        file.meta_sop_class == file.sop_class
        and file.meta_sop_instance == file.sop_instance
        and found == syntax_encoding(file.transfer_syntax)
    )


def accepted_syntaxes(contexts: Iterable[tuple[str, str, bool]]) -> frozenset[tuple[str, str]]:
    """(SOP class, transfer syntax) pairs the node may send under: accepted, SCU role.

    ``contexts``: each accepted presentation context's abstract syntax, its transfer
    syntax, and whether the node may act as SCU on it (PS3.7 D.3.3.4).
    """
    return frozenset((sop_class, syntax) for sop_class, syntax, as_scu in contexts if as_scu)


def sends_own_bytes(file: StoredFile, accepted: Set[tuple[str, str]]) -> bool:
    """Whether ``file`` goes as its bytes: its own syntax was accepted for its SOP class.

    Otherwise (another syntax was accepted, or the file is not ``readable_as_stored``)
    it is decoded and encoded in the accepted syntax, as pynetdicom converts.
    """
    return (file.sop_class, file.transfer_syntax) in accepted and readable_as_stored(file)
