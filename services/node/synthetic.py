"""Synthetic but valid CT studies from pydicom, for the demo, the tests and the benchmarks."""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

UID_ROOT = "1.2.826.0.1.3680043.8.498."


def synthetic_uid(*parts: str) -> str:
    """A deterministic UID under pydicom's root, derived from ``parts``."""
    return str(generate_uid(prefix=UID_ROOT, entropy_srcs=list(parts)))


def ct_instance(
    *, patient_id: str, study_uid: str, series_uid: str, number: int, rows: int = 16
) -> Dataset:
    """One CT image with the attributes a PACS indexes and a small pixel matrix."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = synthetic_uid(series_uid, str(number))
    ds.PatientID = patient_id
    ds.PatientName = f"SYNTHETIC^{patient_id}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = "20261126"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = f"ACC{patient_id}"[:16]
    ds.StudyDescription = "dimsebus synthetic study"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 1
    ds.Modality = "CT"
    ds.InstanceNumber = number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = rows
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    size, start = rows * rows * 2, number % 256
    ds.PixelData = (bytes(range(256)) * (size // 256 + 2))[start : start + size]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return ds


def write_study(
    folder: Path, count: int, *, patient_id: str = "P1", seed: str = "study", rows: int = 16
) -> list[Path]:
    """Write a study of ``count`` CT instances into ``folder``; returns the file paths.

    Their images are ``rows`` x ``rows``, 16 bits: small by default, for the demo and
    the tests; a CT scanner's slices are 512 x 512 (half a megabyte each).
    """
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = synthetic_uid(seed, patient_id)
    series_uid = synthetic_uid(study_uid, "series-1")
    paths = []
    for number in range(1, count + 1):
        ds = ct_instance(
            patient_id=patient_id,
            study_uid=study_uid,
            series_uid=series_uid,
            number=number,
            rows=rows,
        )
        path = folder / f"{number:06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
