"""PopArt (van Hasselt et al. 2016): the critic learns normalised values, so rewards of any scale train alike.

The critic's output layer predicts `(value - mean) / std` for running statistics of the value
targets and returns values in reward units; `update(targets)` moves the statistics and rescales the
layer so that every value it returns stays the same ("preserving outputs precisely"). The value
loss is taken in normalised units (`(values - targets) / std`), so its gradient, and its share of
the gradient the actor and critic share, no longer grows with the square of the reward scale.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hqlt.agents import distributed

# Weight of each update's targets in the running statistics (about the last 20 updates).
STATS_WEIGHT = 0.05
MIN_STD = 1e-4


class PopArt(nn.Linear):
    """`Linear(in_dim, 1)` on normalised values: `forward(h [..., in_dim])` -> values in reward units `[..., 1]`.

    Statistics start at mean 0 and std 1 (a plain linear layer) and are bias-corrected, so the first
    update takes exactly its own targets' moments (and leaves the layer as it is). The buffers are
    part of the state dict.
    """

    def __init__(self, in_dim: int) -> None:
        super().__init__(in_dim, 1)
        nn.init.orthogonal_(self.weight, 1.0)
        nn.init.zeros_(self.bias)
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("mean_square", torch.ones(()))
        self.register_buffer("kept", torch.ones(()))  # (1 - STATS_WEIGHT) ** updates, for the bias correction

    @property
    def std(self) -> Tensor:
        return (self.mean_square - self.mean**2).clamp(min=MIN_STD**2).sqrt()

    def forward(self, h: Tensor) -> Tensor:
        return super().forward(h) * self.std + self.mean

    @torch.no_grad()
    def update(self, targets: Tensor) -> None:
        """Moves the statistics towards those of `targets` (any shape, the same on every rank) of all
        ranks together, so that every rank keeps the same statistics; later updates keep the outputs."""
        old_mean, old_std, first = self.mean.clone(), self.std, self.kept == 1.0
        mean, mean_square = distributed.all_reduce_mean(torch.stack([targets.mean(), (targets**2).mean()]))
        # bias-corrected exponential average: the first update's weight is 1, replacing the initial (0, 1)
        self.kept.mul_(1.0 - STATS_WEIGHT)
        weight = STATS_WEIGHT / (1.0 - self.kept)
        self.mean.lerp_(mean, weight)
        self.mean_square.lerp_(mean_square, weight)
        # An untrained critic's outputs are not worth keeping: preserved through a small first std they
        # would become huge normalised errors (a value gradient 150x the policy's on T-Maze 20).
        self.weight.mul_(torch.where(first, 1.0, old_std / self.std))
        self.bias.copy_(torch.where(first, self.bias, (old_std * self.bias + old_mean - self.mean) / self.std))
