"""`dimsebus archive import` as an operator runs it: the C-STORE's checks, a line per skip."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread

from dimsebus.services.node.synthetic import ct_instance, synthetic_uid, write_study

pytestmark = pytest.mark.integration


def dimsebus(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dimsebus.services", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "80", "PATH": "/usr/bin:/bin"},
    )


def config(tmp_path: Path, overwrite: bool = False) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(
        f'archive_path = "{tmp_path / "archive"}"\n'
        f'outbox_path = "{tmp_path / "outbox.sqlite"}"\n'
        f"overwrite_instances = {'true' if overwrite else 'false'}\n"
    )
    return path


def write(folder: Path, name: str, patient_id: str = "P1", **uids: str) -> Path:
    """A CT file in ``folder``, its UIDs (by keyword) as given: valid or not."""
    study = synthetic_uid("import", patient_id)
    ds = ct_instance(
        patient_id=patient_id, study_uid=study, series_uid=synthetic_uid(study, "s"), number=1
    )
    for keyword, value in uids.items():
        setattr(ds, keyword, value)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    ds.save_as(path, enforce_file_format=True)
    return path


def skipped_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("skipped ")]


def test_import_skips_what_a_c_store_would_refuse_one_line_each(tmp_path: Path) -> None:
    # given a folder with two good files and four a C-STORE would refuse
    good = write_study(tmp_path / "in", 2, patient_id="P1", seed="import")
    taken = str(dcmread(good[0]).SOPInstanceUID)
    write(tmp_path / "in", "letters.dcm", SOPInstanceUID="1.2.826.0.1.3680043.8.498.ABC")
    write(tmp_path / "in", "traversal.dcm", StudyInstanceUID="../../escaped")
    write(tmp_path / "in", "other-patient.dcm", "P2", SOPInstanceUID=taken)
    (tmp_path / "in" / "notes.txt").write_text("not DICOM")
    # when they are imported
    result = dimsebus("archive", "import", "--config", str(config(tmp_path)), str(tmp_path / "in"))
    # then the good ones are, and each other file is one line naming it and why
    assert result.returncode == 0, result.stderr
    assert "imported 2 of 6 files" in result.stdout
    assert "Traceback" not in result.stderr
    lines = skipped_lines(result.stderr)
    assert len(lines) == 4, result.stderr
    by_file = {Path(line.split()[1].rstrip(":")).name: line for line in lines}
    assert "SOPInstanceUID (0008,0018) component 9 is not digits" in by_file["letters.dcm"]
    assert "StudyInstanceUID (0020,000D)" in by_file["traversal.dcm"]
    assert "another PatientID" in by_file["other-patient.dcm"]
    assert "not a readable DICOM file" in by_file["notes.txt"]
    assert not list(tmp_path.rglob("*escaped*"))
    (held,) = (tmp_path / "archive" / "files").rglob(f"{taken}.dcm")
    assert dcmread(held).PatientID == "P1"


def test_import_of_nothing_importable_exits_non_zero(tmp_path: Path) -> None:
    # given only files a C-STORE would refuse
    write(tmp_path / "in", "a.dcm", SOPInstanceUID="1." + "2" * 298)
    write(tmp_path / "in", "b.dcm", SeriesInstanceUID="1.02")
    # when they are imported
    result = dimsebus("archive", "import", "--config", str(config(tmp_path)), str(tmp_path / "in"))
    # then it says so, a line per file, and exits 2
    assert result.returncode == 2, result.stdout
    assert "imported 0 of 2 files" in result.stdout
    assert len(skipped_lines(result.stderr)) == 2
    assert "Traceback" not in result.stderr


def test_import_with_overwrite_replaces_another_patients_instance(tmp_path: Path) -> None:
    # given an archive holding instance X of P1, and a config that allows overwriting
    uid = "1.2.826.0.1.3680043.8.498.5"
    first = write(tmp_path / "p1", "x.dcm", "P1", SOPInstanceUID=uid)
    second = write(tmp_path / "p2", "x.dcm", "P2", SOPInstanceUID=uid)
    path = config(tmp_path, overwrite=True)
    assert dimsebus("archive", "import", "--config", str(path), str(first)).returncode == 0
    # when P2's X is imported
    result = dimsebus("archive", "import", "--config", str(path), str(second))
    # then it replaces P1's, whose file (in P1's study folder) is gone
    assert result.returncode == 0, result.stderr
    (held,) = (tmp_path / "archive" / "files").rglob("*.dcm")
    assert dcmread(held).PatientID == "P2"
