"""adaptive: train budget-aligned adaptive models in JAX and run them under hard budgets.

Packages by stage, lowest first (each may import only those below it; `lint-imports` checks):
config; nn, data; compute, workdir; inference; training; evaluation, serving; bench,
experiments; cli.
"""
