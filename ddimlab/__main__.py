"""`python -m ddimlab ...`: see `ddimlab.cli`."""
from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
