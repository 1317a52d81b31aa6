"""``python -m pixelfold.bench``: the benchmark suite's command line (the same as ``pixelfold bench``)."""

import sys

from .runner import main

if __name__ == "__main__":
    sys.exit(main())
