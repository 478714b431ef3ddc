"""Files: outputs checked before any work, written atomically, never over an input; inputs read only when
they are regular files.

Each output is written to a temp file in the target folder, then renamed, so a crash never leaves half a file.
The temp files are named `.NAME.quanttool-PID-XXXXXXXX.tmp`; one left by a killed run (its process gone, the
file older than this process) is removed the next time quanttool writes into that folder.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
import time
from pathlib import Path
from typing import Iterable, Mapping

from .errors import QuantError, UsageError, info

TEMP_MARK = ".quanttool-"
_STARTED = time.time()  # temp files older than this process and of a dead process are stale


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs):
    """Open a temp file beside `path`; on success rename it over `path`, on error remove it. An OSError
    (disk full, no permission) becomes one QuantError line naming `path`."""
    path = Path(path)
    folder = _folder(path, "output")
    remove_stale_temps(folder)
    try:
        fd, tmp = _temp_file(path, folder)
    except OSError as exc:
        raise write_error(path, exc) from exc
    try:
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _file_mode(path))  # mkstemp makes 0600; give the file the mode a plain open() would
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise write_error(path, exc) from exc
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def open_regular(path: str | os.PathLike):
    """Open an input file for binary reading, only if it is a regular file. It is opened without blocking and
    the open file is checked, so a FIFO or device given as an input (or swapped in after a folder was
    listed) cannot hang the run or feed it endless bytes. OSError otherwise ('not a regular file')."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_text(path: str | os.PathLike) -> str:
    """A UTF-8 text input (a leading BOM, which Windows editors write, is dropped); OSError and
    UnicodeDecodeError are the caller's to word."""
    with open_regular(path) as handle:
        return handle.read().decode("utf-8-sig")


def write_error(path: Path, exc: OSError) -> QuantError:
    """One line for a failed write: the path, the system's reason and what to do about it."""
    reason = exc.strerror or type(exc).__name__
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG):
        fix = "free some space or write to another location"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "choose a location you can write to"
    else:
        fix = "check the location or choose another path"
    return QuantError(f"cannot write {path}: {reason}; {fix}")


def _temp_file(path: Path, folder: Path) -> tuple[int, str]:
    # The name is cut so that an output name near the file system's 255-byte limit still gets a temp file.
    return tempfile.mkstemp(prefix=f".{path.name[:100]}{TEMP_MARK}{os.getpid()}-", suffix=".tmp", dir=folder)


def _folder(path: Path, option: str) -> Path:
    """The folder `path` goes into; QuantError when it is missing, or `path` is a folder or a special file."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise QuantError(f"{option} {path}: {folder} {what}; create the folder or choose another path")
    if path.is_dir():
        raise QuantError(f"{option} {path}: is a folder; give a file path")
    with contextlib.suppress(OSError):
        if not stat.S_ISREG(os.stat(path).st_mode):  # a device or FIFO would be replaced by a plain file
            raise QuantError(f"{option} {path}: exists and is not a regular file; give a file path")
    return folder


def check_output(path: str | os.PathLike, option: str = "output") -> Path:
    """Fail before any work when `path` cannot be written: its folder is missing or not writable (tried by
    creating and removing a temp file: permissions, read-only mounts and root all answer truthfully)."""
    path = Path(path)
    folder = _folder(path, option)
    try:
        fd, tmp = _temp_file(path, folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise QuantError(f"{option} {path}: cannot write into {folder} ({exc.strerror or exc}); "
                         f"choose a location you can write to") from None
    return folder


def remove_stale_temps(folder: Path) -> None:
    """Remove temp files a killed quanttool run left in `folder`: named by quanttool, older than this
    process, and their process no longer running (another run writing there keeps its file)."""
    removed = []
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            pid = _temp_pid(entry.name)
            if pid is None or pid == os.getpid() or _running(pid):
                continue
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < _STARTED:
                    os.unlink(entry.path)
                    removed.append(entry.name)
    if removed:
        info(f"removed {len(removed)} temporary file(s) an interrupted run left in {folder} (e.g. {removed[0]})")


def _temp_pid(name: str) -> int | None:
    """The process id in a quanttool temp file name `.NAME.quanttool-PID-XXXXXXXX.tmp`, else None."""
    if not (name.startswith(".") and name.endswith(".tmp")) or TEMP_MARK not in name:
        return None
    pid, sep, rest = name.rpartition(TEMP_MARK)[2].partition("-")
    return int(pid) if sep and pid.isdigit() and len(rest) > len(".tmp") else None


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True  # exists (another user's) or cannot tell: keep the file
    return True


def _file_mode(path: Path) -> int:
    """The existing file's mode, else 0666 minus the umask (os.umask can only be read by setting it)."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _identities(path: Path) -> set:
    """Every way to tell that two spellings name the same file: the fully resolved path, the resolved folder
    plus the name (the directory entry a rename replaces), and the inode when it exists (hard links)."""
    keys = {os.path.realpath(path), os.path.join(os.path.realpath(path.parent), path.name)}
    with contextlib.suppress(OSError, ValueError):
        st = os.stat(path)
        keys.add((st.st_dev, st.st_ino))
    return keys


def _inside(path: Path, folder_real: str) -> bool:
    return any(Path(p).is_relative_to(folder_real) for p in (os.path.realpath(path),
                                                             os.path.join(os.path.realpath(path.parent), path.name)))


def linked_files(folder: Path) -> Iterable[Path]:
    """The symlinks inside `folder`, at any depth (linked folders are not entered, as discovery does not).
    scandir tells links apart without a system call per file, so a large image folder costs little."""
    pending = [folder]
    while pending:
        with contextlib.suppress(OSError), os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.is_symlink():
                    yield Path(entry.path)
                elif entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)


def check_outputs(outputs: Mapping[str, str | os.PathLike | None], inputs: Iterable[str | os.PathLike | None] = (),
                  folders: Iterable[str | os.PathLike] = ()) -> None:
    """Before any work: every output can be written, no two outputs are the same file, no output is an input
    file, and none lies inside an input folder (where it would replace an image, or be read as one next
    time). Paths are compared after resolving symlinks and '..', and by inode, so no spelling gets around it;
    a symlink inside an input folder protects the file it points to as well. An output that cannot be
    written is a QuantError (exit 1); one that collides with an input or another output is a UsageError."""
    folders = [Path(f) for f in folders]
    taken: dict = {}
    for item in [*inputs, *(link for folder in folders for link in linked_files(folder))]:
        if item is not None:
            for key in _identities(Path(item)):
                taken.setdefault(key, f"the input {item}")
    reals = [(folder, os.path.realpath(folder)) for folder in folders]
    for option, out in outputs.items():
        if out is None:
            continue
        out = Path(out)
        keys = _identities(out)
        clash = next((taken[key] for key in keys if key in taken), None)
        if clash:
            raise UsageError(f"{option} {out}: this is also {clash}; choose a different output path")
        for folder, real in reals:
            if _inside(out, real):
                raise UsageError(f"{option} {out}: inside the input folder {folder}; outputs never go among the "
                                 f"images (they could replace one or be read as one); choose another folder")
        check_output(out, option)  # after the clash checks: the probe must not write among the inputs
        for key in keys:
            taken[key] = f"the {option} file"

