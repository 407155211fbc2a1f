"""Benchmarks behind `adaptive bench ...` (side by side in one run, medians after warm-up), and the
client side of serving: the open-loop load generator and its HTTP connection pool.

Benchmarks are not tests: they print a table and write JSON, and never assert on time.

May import: anything but cli.
"""
