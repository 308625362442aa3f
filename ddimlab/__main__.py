"""`python -m ddimlab ...` and the `ddimlab` command: see `ddimlab.cli`."""
import sys


def run() -> int:
    """The entry point. Importing the command line (torch) takes seconds, so the import happens inside
    the Ctrl-C handler: an interrupt then exits 130 with one line, as it does during the work."""
    try:
        from .cli import main
    except KeyboardInterrupt:
        print("ddimlab: interrupted", file=sys.stderr)
        return 130
    return main()


if __name__ == "__main__":
    raise SystemExit(run())
