"""Atomic writes keep working for the longest names a filesystem allows (aligned crops and
annotated copies are named after the user's photos)."""

from __future__ import annotations

from pathlib import Path

from glae.fileio import atomic_write_bytes, create_new

LONGEST = "é" * 124 + "abc.jpg"  # 124 × 2 + 7 = 255 bytes in UTF-8, the most a name may hold


def test_atomic_write_gives_a_255_byte_name_its_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    assert len(LONGEST.encode()) == 255
    atomic_write_bytes(tmp_path / LONGEST, b"crop")
    atomic_write_bytes(tmp_path / LONGEST, b"second crop")
    assert [(path.name, path.read_bytes()) for path in tmp_path.iterdir()] == [(LONGEST, b"second crop")]


def test_create_new_writes_a_255_byte_name_once_and_never_over_it(tmp_path: Path) -> None:
    assert create_new(tmp_path / LONGEST, b"copy")
    assert not create_new(tmp_path / LONGEST, b"another copy")
    assert [(path.name, path.read_bytes()) for path in tmp_path.iterdir()] == [(LONGEST, b"copy")]
