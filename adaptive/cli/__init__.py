"""The `adaptive` command: its argument parser and the handlers of each subcommand.

May import: everything.
"""

from adaptive.cli.main import main

__all__ = ["main"]
