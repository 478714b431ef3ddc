"""Atomic output: the file appears whole or not at all, with the mode a plain open() would give it."""

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from quanttool.errors import QuantError, UsageError
from quanttool.fileio import atomic_open, check_output, check_outputs, write_bytes


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
        check_outputs({"--output": tmp_path / "m.onnx"}, [tmp_path / "m.onnx"])


def test_check_outputs_sees_through_every_spelling_and_link(tmp_path):
    """The same file by '..', by a symlinked folder, by a symlink to it and by a hard link is refused as an
    output; so is any path inside an input folder, and the target of a symlink found in an input folder."""
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model")
    images = tmp_path / "images"
    images.mkdir()
    (images / "0.png").write_bytes(b"png")
    outside = tmp_path / "photos"
    outside.mkdir()
    (outside / "p.png").write_bytes(b"linked image")
    (images / "p.png").symlink_to(outside / "p.png")
    (tmp_path / "alias").symlink_to(tmp_path)
    (tmp_path / "imgalias").symlink_to(images)
    (tmp_path / "link.onnx").symlink_to(model)
    os.link(model, tmp_path / "hard.onnx")
    refused = {
        tmp_path / "sub" / ".." / "m.onnx": "also the input",  # 'sub' need not exist for realpath
        tmp_path / "alias" / "m.onnx": "also the input",
        tmp_path / "link.onnx": "also the input",
        tmp_path / "hard.onnx": "also the input",
        images / "0.png": "inside the input folder",
        images / "new.json": "inside the input folder",
        tmp_path / "imgalias" / "new.json": "inside the input folder",
        outside / "p.png": "also the input",
    }
    (tmp_path / "sub").mkdir()
    for out, reason in refused.items():
        with pytest.raises(UsageError, match=reason):
            check_outputs({"--json": out}, [model], folders=[images])
    check_outputs({"--json": tmp_path / "new.json"}, [model], folders=[images])  # a fresh path is fine
    with pytest.raises(UsageError, match="--report .*also the --json file"):
        check_outputs({"--json": tmp_path / "r.out", "--report": tmp_path / "alias" / "r.out"}, [model])
    assert model.read_bytes() == b"model" and (outside / "p.png").read_bytes() == b"linked image"


def test_unwritable_or_special_output_is_refused_before_writing(tmp_path):
    with pytest.raises(QuantError, match="--params /proc/p.json: cannot write into /proc"):
        check_output("/proc/p.json", "--params")  # even root cannot create files in /proc
    with pytest.raises(QuantError, match="not a regular file"):
        check_output("/dev/null", "--output")  # root could otherwise replace the device node
    if os.geteuid() != 0:  # permissions only bind other users
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(QuantError, match="cannot write into"):
            check_output(locked / "x.scale", "--output")
    check_output(tmp_path / "fine.scale")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "locked") == []  # the probe left nothing


def _in_subprocess(code, preexec_fn=None):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=preexec_fn,
                          cwd=Path(__file__).resolve().parents[1])


def test_full_disk_is_one_error_naming_the_file(tmp_path):
    """A file-size limit makes the kernel refuse the write the way a full disk does (EFBIG instead of ENOSPC):
    a real failing write, mapped to one QuantError line naming the output; the temp file is removed."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer instead of failing the write
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))

    target = tmp_path / "big.bin"
    result = _in_subprocess(f"from quanttool.fileio import write_bytes\n"
                            f"from quanttool.errors import QuantError\n"
                            f"try:\n    write_bytes({str(target)!r}, bytes(100_000))\n"
                            f"except QuantError as exc:\n    print(exc)\n", preexec_fn=limit)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"cannot write {target}: File too large; free some space or write to another location"
    assert list(tmp_path.iterdir()) == []


def test_temp_file_of_a_killed_run_is_removed_by_the_next_write(tmp_path):
    """SIGKILL mid-write leaves `.NAME.quanttool-PID-XXXX.tmp`; the next write into that folder removes it
    (its process is gone and it is older than this process). A temp of a live process is kept."""
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old model")
    result = _in_subprocess(f"import os, signal\nfrom quanttool.fileio import atomic_open\n"
                            f"with atomic_open({str(target)!r}, 'wb') as handle:\n"
                            f"    handle.write(bytes(5000)); handle.flush()\n"
                            f"    os.kill(os.getpid(), signal.SIGKILL)\n")
    assert result.returncode == -signal.SIGKILL
    left = [p.name for p in tmp_path.iterdir() if p != target]
    assert len(left) == 1 and left[0].startswith(".model.onnx.quanttool-") and left[0].endswith(".tmp")
    assert (tmp_path / left[0]).stat().st_size == 5000 and target.read_bytes() == b"old model"  # old file whole
    live = tmp_path / f".other.json.quanttool-{os.getppid()}-abcdefgh.tmp"  # pytest's parent: alive
    live.write_bytes(b"in progress")
    os.utime(live, (0, 0))
    stranger = tmp_path / ".notes.txt.12345678.tmp"  # not quanttool's naming: never touched
    stranger.write_bytes(b"")
    os.utime(stranger, (0, 0))
    os.utime(tmp_path / left[0], (0, 0))  # older than this process, as a file from an earlier run is
    write_bytes(tmp_path / "params.json", b"{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, stranger.name, "params.json",
                                                                 "model.onnx"])
