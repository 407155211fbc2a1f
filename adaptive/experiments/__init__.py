"""Experiments: sweeps declared beside configs, their summaries, and `adaptive reproduce`.

May import: anything but cli.
"""
