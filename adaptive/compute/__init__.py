"""What computation costs: FLOPs and MACs per step and per expert, budgets (units, ceilings,
per-request caps), the fitted latency/energy/cost model, and side-by-side timing.

May import: nn, config.
"""
