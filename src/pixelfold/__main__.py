"""``python -m pixelfold``: the command line (see :mod:`pixelfold.cli`)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
