"""`python -m adaptive.cli` runs the `adaptive` command."""

import sys

from adaptive.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
