"""What a run's workdir holds and how it is written safely: checkpoints (the only orbax user),
config.json, run.json, atomic writes and one-line errors for paths that cannot be written.

May import: config.
"""
