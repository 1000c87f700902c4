"""``python -m sagecute.perf [options]``: same as ``python -m sagecute bench``."""

import sys

from sagecute.perf.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
