"""Benchmarks behind `adaptive bench ...`: side by side in one run, medians after warm-up.

Benchmarks are not tests: they print a table and write JSON, and never assert on time.
"""
