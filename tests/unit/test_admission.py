"""What the archive takes, and the C-STORE status of what it does not (PS3.4 B.2.3)."""

from __future__ import annotations

import ast
import errno
from pathlib import Path, PurePosixPath

from hypothesis import given
from hypothesis import strategies as st

from dimsebus.services.node import admission
from dimsebus.services.node.admission import Refusal
from tests.strategies import uids

CT = "1.2.840.10008.5.1.4.1.1.2"
VALID = {
    "SOPClassUID": CT,
    "SOPInstanceUID": "1.2.826.0.1.3680043.8.498.1",
    "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.2",
    "SeriesInstanceUID": "1.2.826.0.1.3680043.8.498.3",
    "TransferSyntaxUID": "1.2.840.10008.1.2.1",
}


def test_a_data_set_with_valid_uids_is_taken() -> None:
    assert admission.identity_refusal(VALID) is None
    assert admission.identity_refusal(VALID, (CT, VALID["SOPInstanceUID"])) is None


def test_each_invalid_uid_is_refused_as_not_understood_naming_its_element() -> None:
    cases = {
        "SOPInstanceUID": ("../../x", 0x00080018, "component 1 is empty"),
        "StudyInstanceUID": ("/etc/passwd", 0x0020000D, "component 1 is not digits"),
        "SeriesInstanceUID": ("1.2.03", 0x0020000E, "component 3 has a leading zero"),
        "SOPClassUID": ("1." + "2" * 298, 0x00080016, "length 300 is not 1 to 64"),
        "TransferSyntaxUID": (None, 0x00020010, "missing"),
    }
    for keyword, (value, tag, why) in cases.items():
        refusal = admission.identity_refusal({**VALID, keyword: value})
        assert refusal is not None
        assert refusal.status == 0xC000
        assert refusal.element == tag
        assert refusal.comment.startswith(f"{keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X})")
        assert refusal.comment.endswith(why), refusal.comment
        assert len(refusal.comment) <= 64


def test_a_multi_valued_or_undecodable_uid_is_not_a_uid() -> None:
    for value in (["1.2", "1.3"], b"", 12):
        refusal = admission.identity_refusal({**VALID, "SOPInstanceUID": value})
        assert refusal == Refusal(0xC000, "SOPInstanceUID (0008,0018) not a single UID", 0x00080018)


def test_a_data_set_that_is_not_the_requests_does_not_match() -> None:
    other_instance = admission.identity_refusal(VALID, (CT, "1.2.3"))
    other_class = admission.identity_refusal(
        VALID, ("1.2.840.10008.5.1.4.1.1.4", VALID["SOPInstanceUID"])
    )
    assert other_instance == Refusal(
        0xA900, "SOPInstanceUID (0008,0018) is not the Affected SOP Instance UID", 0x00080018
    )
    assert other_class is not None
    assert (other_class.status, other_class.element) == (0xA900, 0x00080016)


def test_invalid_uids_are_refused_before_a_mismatch() -> None:
    refusal = admission.identity_refusal({**VALID, "SOPInstanceUID": "x"}, (CT, "1.2.3"))
    assert refusal is not None
    assert refusal.status == 0xC000


@given(st.text(max_size=80), st.text(max_size=80))
def test_whatever_is_taken_names_a_file_inside_the_folder(study: str, instance: str) -> None:
    # given any text a peer may put in the UIDs that name the file
    values = {**VALID, "StudyInstanceUID": study, "SOPInstanceUID": instance}
    # when the archive takes it, the file's path has no way out of the folder
    if admission.identity_refusal(values) is None:
        path = PurePosixPath("files") / study / f"{instance}.dcm"
        assert path.parts == ("files", study, f"{instance}.dcm")
        assert ".." not in path.parts


@given(uids, uids)
def test_valid_uids_are_always_taken(study: str, instance: str) -> None:
    values = {**VALID, "StudyInstanceUID": study, "SOPInstanceUID": instance}
    assert admission.identity_refusal(values) is None


def test_the_same_patient_replaces_another_is_refused_unless_overwrite() -> None:
    assert admission.overwrite_refusal("P1", "P1", overwrite_instances=False) is None
    assert admission.overwrite_refusal(None, "", overwrite_instances=False) is None
    assert admission.overwrite_refusal("P1 ", "P1", overwrite_instances=False) is None
    refused = admission.overwrite_refusal("P1", "P2", overwrite_instances=False)
    assert refused is not None
    assert refused.status == 0x0111
    assert "another PatientID" in refused.comment
    assert admission.overwrite_refusal("P1", None, overwrite_instances=False) is not None
    assert admission.overwrite_refusal("P1", "P2", overwrite_instances=True) is None


def test_only_a_lack_of_space_is_out_of_resources() -> None:
    for code in (errno.ENOSPC, errno.EDQUOT):
        assert admission.write_refusal(OSError(code, "full")).status == 0xA700
    for code in (errno.ENAMETOOLONG, errno.EACCES, errno.EIO, errno.EROFS):
        refusal = admission.write_refusal(OSError(code, "nope"))
        assert refusal.status == 0x0110
        assert refusal.comment == "archive write failed: nope"
    assert admission.write_refusal(OSError()).comment == "archive write failed: OSError"


def test_a_comment_is_cut_to_64_characters() -> None:
    assert len(Refusal(0xC000, "x" * 100).comment) == 64


def test_the_decisions_import_no_io() -> None:
    # the pure decisions of the archive and of the unsolicited-response budget
    root = Path(__file__).resolve().parents[2] / "services" / "node"
    for name in ("admission.py", "unsolicited.py"):
        tree = ast.parse((root / name).read_text())
        imported = {
            node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
        } | {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        io = {
            module
            for module in imported
            if module.split(".")[0] in {"pynetdicom", "pydicom", "aio_pika", "sqlite3", "os"}
        }
        assert not io, f"{name} imports {sorted(io)}"
