"""`python -m ddimlab ...` and the `ddimlab` command: see `ddimlab.cli`."""
import os
import signal
import sys


def run() -> int:
    """The entry point. Importing the command line (torch) takes seconds, so the import happens inside
    the Ctrl-C handler: an interrupt then exits 130 with one line, as it does during the work. A current folder that
    was deleted is said first: torch's import then stops the process with "oneMKL FATAL ERROR: Cannot load
    libtorch_cpu.so" (a relative --out could not be written either)."""
    try:
        os.getcwd()
    except FileNotFoundError:
        print("ddimlab: error: the current folder no longer exists (it was deleted or moved): cd to a folder that "
              "exists and run again", file=sys.stderr)
        return 1
    try:
        from .cli import main
    except KeyboardInterrupt:
        print("ddimlab: interrupted", file=sys.stderr)
        return 130
    status = main()
    # The work is done and written; a Ctrl-C while the interpreter shuts down (torch's exit handlers take
    # a moment) ends the process at once instead of printing a traceback from an exit handler.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    return status


if __name__ == "__main__":
    raise SystemExit(run())
