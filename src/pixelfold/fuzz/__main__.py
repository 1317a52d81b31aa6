"""``python -m pixelfold.fuzz``: see :mod:`pixelfold.fuzz.runner`."""

from .runner import main

if __name__ == "__main__":
    raise SystemExit(main())
