"""Compute-aware evaluation: accuracy at a budget and accuracy-vs-budget curves, exit thresholds,
calibration of the cost model, reports, tables and plots.

May import: training and below.
"""
