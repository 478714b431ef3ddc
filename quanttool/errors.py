"""User-facing errors and warnings: one line each, naming the file, tensor or option and the fix."""

from __future__ import annotations

import sys


class QuantError(Exception):
    """A problem with the user's data or model. The CLI prints it on one line and exits with `exit_code`."""

    exit_code = 1


class UsageError(QuantError):
    """A bad option or option combination (exit code 2, like click's own usage errors)."""

    exit_code = 2


def first_line(exc: BaseException) -> str:
    """Library messages (onnxruntime, onnx) run over many lines; the first says what went wrong."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _note(text: str) -> None:
    """One line on stderr (stdout carries the command's result), without breaking a tqdm progress bar."""
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr)


def info(message: str) -> None:
    _note(f"quanttool: {message}")


def warn(message: str) -> None:
    _note(f"quanttool: warning: {message}")
