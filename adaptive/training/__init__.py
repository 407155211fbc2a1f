"""Training: `train_and_evaluate`, the pure train step, losses, optimizer, the device mesh and
metric writers (metrics.jsonl, wandb, progress).

May import: inference and below.
"""
