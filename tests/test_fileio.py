"""Atomic output: the file appears whole or not at all, with the mode a plain open() would give it."""

import os

import pytest

from quanttool.errors import QuantError
from quanttool.fileio import atomic_open, check_distinct, write_bytes


def test_new_file_gets_umask_mode_and_existing_file_keeps_its_mode(tmp_path):
    umask = os.umask(0o022)
    try:
        write_bytes(tmp_path / "a.bin", b"x")
        assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o644
        (tmp_path / "b.bin").write_bytes(b"old")
        os.chmod(tmp_path / "b.bin", 0o600)
        write_bytes(tmp_path / "b.bin", b"new")
        assert (tmp_path / "b.bin").read_bytes() == b"new"
        assert (tmp_path / "b.bin").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(umask)


def test_failure_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "t.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as handle:
            handle.write("half")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt"]


def test_missing_folder_and_output_equal_to_input(tmp_path):
    with pytest.raises(QuantError, match="does not exist"):
        write_bytes(tmp_path / "nope" / "x.bin", b"")
    (tmp_path / "m.onnx").write_bytes(b"")
    with pytest.raises(QuantError, match="--output"):
        check_distinct(tmp_path / "m.onnx", tmp_path / "m.onnx")
