"""Flax NNX modules: backbones and blocks, halting policies, routing, experts and their dispatch.

May import: config. Nothing here imports training, serving or I/O code.
"""
