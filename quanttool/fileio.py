"""Atomic output: write to a temp file in the target folder, then rename, so a crash never leaves half a file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from .errors import QuantError


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs):
    """Open a temp file beside `path`; on success rename it over `path`, on error remove it."""
    path = Path(path)
    folder = check_output(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _file_mode(path))  # mkstemp makes 0600; give the file the mode a plain open() would
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def check_output(path: str | os.PathLike, option: str = "output") -> Path:
    """Fail before any work when `path` cannot be written: its folder is missing or it is a folder itself."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise QuantError(f"{option} {path}: {folder} {what}; create the folder or choose another path")
    if path.is_dir():
        raise QuantError(f"{option} {path}: is a folder; give a file path")
    return folder


def _file_mode(path: Path) -> int:
    """The existing file's mode, else 0666 minus the umask (os.umask can only be read by setting it)."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def check_distinct(output: str | os.PathLike, *inputs: str | os.PathLike | None, option: str = "--output") -> None:
    """Refuse an output path that would overwrite one of the inputs."""
    out = Path(output).resolve()
    for item in inputs:
        if item is not None and Path(item).resolve() == out:
            raise QuantError(f"{option} {output}: this is also an input file; choose a different output path")
