"""User-facing errors and warnings: one line each, naming the file, tensor or option and the fix."""

from __future__ import annotations

import sys
from typing import NoReturn


class QuantError(Exception):
    """A problem with the user's data or model. The CLI prints it on one line and exits with `exit_code`."""

    exit_code = 1


class UsageError(QuantError):
    """A bad option or option combination (exit code 2, like click's own usage errors)."""

    exit_code = 2


MAX_MESSAGE = 600  # characters of one printed message: a 10 MB tensor name must not make a 10 MB line


def one_line(text: object, limit: int = MAX_MESSAGE) -> str:
    """A message as quanttool prints it: one line (whitespace runs, newlines included, become one space),
    other non-printable characters escaped (a file or tensor name cannot move the cursor or end the line),
    and at most about `limit` characters. A longer one keeps its start (the file or tensor) and its end (the
    fix) and says how long it was; cleaning only the kept ends keeps a huge name cheap."""
    text = str(text)
    if len(text) <= limit:
        clean = _printable(text)
        if len(clean) <= limit:
            return clean
    half = limit // 2
    head = _printable(text[:limit])[:half]
    tail = _printable(text[-limit:])[-half:]
    return f"{head} [... {len(text)} characters shortened ...] {tail}"


def _printable(text: str) -> str:
    text = " ".join(text.split())
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def first_line(exc: BaseException) -> str:
    """Library messages (onnxruntime, onnx) run over many lines; the first says what went wrong."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def interrupted() -> NoReturn:
    """Ctrl-C at any point, even while the modules load: one line and exit code 130 (128 + SIGINT)."""
    sys.stderr.write("\nquanttool: interrupted\n")
    sys.exit(130)


def _note(text: str) -> None:
    """One line on stderr (stdout carries the command's result), without breaking a tqdm progress bar."""
    from tqdm import tqdm

    tqdm.write(one_line(text), file=sys.stderr)


def info(message: str) -> None:
    _note(f"quanttool: {message}")


def warn(message: str) -> None:
    _note(f"quanttool: warning: {message}")
