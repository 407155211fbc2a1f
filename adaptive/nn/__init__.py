"""Flax NNX modules. Nothing here imports training, serving or I/O code."""
