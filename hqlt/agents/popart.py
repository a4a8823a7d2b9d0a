"""Running statistics that make the learner invariant to the reward scale.

PopArt (van Hasselt et al. 2016): the critic learns normalised values, so rewards of any scale train
alike. The critic's output layer predicts `(value - mean) / std` for running statistics of the value
targets and returns values in reward units; `update(targets)` moves the statistics and rescales the
layer so that every value it returns stays the same ("preserving outputs precisely"). The value
loss is taken in normalised units (`(values - targets) / std`), so its gradient, and its share of
the gradient the actor and critic share, no longer grows with the square of the reward scale.

The policy's reward input is divided by the rewards' running root mean square (`RunningMoments.rms`)
for the same reason: a penalty of 0.001 per step is as visible to the memory as a reward of 100.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hqlt.agents import distributed

# Weight of each update's data in the running statistics (about the last 20 updates).
STATS_WEIGHT = 0.05
MIN_STD = 1e-4


class RunningMoments(nn.Module):
    """Bias-corrected exponential averages of the mean and mean square of what `update` sees, over
    all ranks. They start at mean 0 and mean square 1 (std and rms 1); the first update takes exactly
    its own data's moments. The buffers are part of the state dict."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("mean_square", torch.ones(()))
        self.register_buffer("kept", torch.ones(()))  # (1 - STATS_WEIGHT) ** updates, for the bias correction

    @property
    def std(self) -> Tensor:
        return (self.mean_square - self.mean**2).clamp(min=MIN_STD**2).sqrt()

    @property
    def rms(self) -> Tensor:
        return self.mean_square.clamp(min=MIN_STD**2).sqrt()

    @property
    def updated(self) -> Tensor:
        """Bool scalar: whether `update` has run."""
        return self.kept < 1.0

    @torch.no_grad()
    def update(self, values: Tensor, mask: Tensor | None = None) -> None:
        """Moves the statistics towards those of `values` (any shape; only where the bool `mask` of the same
        shape holds, if given) of all ranks together, so that every rank keeps the same statistics. A mask
        that holds nowhere leaves them as they are (no host synchronisation either way)."""
        weights = torch.ones_like(values) if mask is None else mask.to(values.dtype)
        count = weights.sum()
        moments = torch.stack([(weights * values).sum(), (weights * values**2).sum()]) / count.clamp(min=1)
        mean, mean_square = distributed.all_reduce_mean(moments)
        moved = count > 0
        kept = torch.where(moved, self.kept * (1.0 - STATS_WEIGHT), self.kept)
        weight = torch.where(moved, STATS_WEIGHT / (1.0 - kept), 0.0)  # the first update's weight is 1
        self.kept.copy_(kept)
        self.mean.lerp_(mean, weight)
        self.mean_square.lerp_(mean_square, weight)


class PopArt(nn.Linear):
    """`Linear(in_dim, 1)` on normalised values: `forward(h [..., in_dim])` -> values in reward units `[..., 1]`.

    Statistics start at mean 0 and std 1 (a plain linear layer), so the first update takes exactly its
    own targets' moments (and leaves the layer as it is).
    """

    def __init__(self, in_dim: int) -> None:
        super().__init__(in_dim, 1)
        nn.init.orthogonal_(self.weight, 1.0)
        nn.init.zeros_(self.bias)
        self.moments = RunningMoments()

    @property
    def mean(self) -> Tensor:
        return self.moments.mean

    @property
    def std(self) -> Tensor:
        return self.moments.std

    def forward(self, h: Tensor) -> Tensor:
        return super().forward(h) * self.std + self.mean

    @torch.no_grad()
    def update(self, targets: Tensor, mask: Tensor | None = None) -> Tensor:
        """Moves the statistics towards those of `targets` (see `RunningMoments.update`); later updates
        keep the outputs. Returns the factor the layer's weight was scaled by (old std / new std; 1 at
        the first update), for layers whose outputs are in the same normalised units."""
        old_mean, old_std, first = self.mean.clone(), self.std, ~self.moments.updated
        self.moments.update(targets, mask)
        # An untrained critic's outputs are not worth keeping: preserved through a small first std they
        # would become huge normalised errors (a value gradient 150x the policy's on T-Maze 20).
        scale = torch.where(first, 1.0, old_std / self.std)
        self.weight.mul_(scale)
        self.bias.copy_(torch.where(first, self.bias, (old_std * self.bias + old_mean - self.mean) / self.std))
        return scale
