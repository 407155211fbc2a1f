"""Running a trained model under a budget: params-only restore of a run, the one budgeted
inference function and its predictor, scoring a split under every budget, and exported
artifacts (`jax.export`) with their meta.json.

May import: nn, data, compute, workdir, config. Never training code.
"""
