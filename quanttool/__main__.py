"""The `quanttool` program (console script and `python -m quanttool`).

Everything is imported inside the guard: loading the CLI takes a noticeable fraction of a second, and a
Ctrl-C then must give one line and exit code 130 like a Ctrl-C anywhere else, not a traceback."""


def main() -> None:
    try:
        from .cli import main as run

        run()
    except KeyboardInterrupt:  # while importing, or while cli.main was already printing an outcome
        _quiet_interrupts()
        from .errors import interrupted

        interrupted()
    finally:
        # The outcome is decided and printed: a Ctrl-C while the interpreter shuts down (joining decoder
        # threads) now ends the process quietly instead of printing a traceback.
        _quiet_interrupts()


def _quiet_interrupts() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


if __name__ == "__main__":
    main()
