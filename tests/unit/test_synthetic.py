"""Synthetic CT studies: valid files, deterministic, of the size asked for."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread

from dimsebus.services.node.synthetic import write_study


def test_a_study_of_ct_slices_has_the_size_of_a_scanner_s(tmp_path: Path) -> None:
    # given two instances of 512 x 512, as a CT scanner makes them
    paths = write_study(tmp_path, 2, rows=512)
    # then each is a CT image of half a megabyte of pixels, its own pattern
    first, second = (dcmread(p) for p in paths)
    assert (first.Rows, first.Columns, first.BitsAllocated) == (512, 512, 16)
    assert len(first.PixelData) == 512 * 512 * 2
    assert first.PixelData[:3] == bytes([1, 2, 3])  # instance 1 starts at 1
    assert second.PixelData[:3] == bytes([2, 3, 4])
    assert first.SOPInstanceUID != second.SOPInstanceUID


def test_the_same_seed_writes_the_same_study(tmp_path: Path) -> None:
    # given the same study written twice
    once = write_study(tmp_path / "a", 3, seed="s")
    twice = write_study(tmp_path / "b", 3, seed="s")
    # then the files are byte for byte the same
    assert [p.read_bytes() for p in once] == [p.read_bytes() for p in twice]
