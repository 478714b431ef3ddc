"""The `quanttool` program (console script and `python -m quanttool`).

The CLI is imported inside the guard: loading numpy and onnx takes a noticeable fraction of a second, and a
Ctrl-C then must give one line and exit code 130 like a Ctrl-C anywhere else, not a traceback."""

import signal
import sys


def main() -> None:
    from .errors import interrupted

    try:
        from .cli import main as run

        run()
    except KeyboardInterrupt:  # while importing, or while cli.main was already printing an outcome
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        interrupted()
    finally:
        # The outcome is decided and printed: a Ctrl-C while the interpreter shuts down (joining decoder
        # threads) now ends the process quietly instead of printing a traceback.
        signal.signal(signal.SIGINT, signal.SIG_DFL)


if __name__ == "__main__":
    main()
