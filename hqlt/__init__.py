"""hqlt: reinforcement learning in POMDPs with Hybrid Quadratic-Linear Transformer memory."""

__version__ = "0.1.0"
