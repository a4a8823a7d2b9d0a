"""Action spaces: distributions, previous-action inputs and conversion to env actions.

Discrete and MultiDiscrete actions are int64 `[..., len(nvec)]` (one categorical per element);
Box actions are float32 `[..., *shape]` flattened to `[..., A]` (a diagonal Gaussian with a
state-independent log-std). The env receives Box actions clipped to the bounds; the stored action
is the sampled one, so that its log-probability stays exact.
"""

from __future__ import annotations

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn
from torch.distributions import Normal

from hqlt.agents.encoders import OneHot


def epsilon_mixture(log_probs: Tensor, epsilons: Tensor) -> Tensor:
    """log((1 - eps) p + eps / n): normalised log-probs `[..., n]` mixed with the uniform distribution,
    epsilons broadcasting to `[..., 1]` (0 leaves a row as it is)."""
    return torch.logaddexp(log_probs + torch.log1p(-epsilons), (epsilons / log_probs.shape[-1]).log())


class ActionDistribution:
    """Independent categoricals (`logits` split by `nvec`) or a diagonal Gaussian (`mean`, `std`).

    All methods work on any leading dims `[...]`; log_prob and entropy sum over action elements.
    The categoricals are written out (normalised log-probabilities, Gumbel-max sampling) rather than
    built from torch.distributions.Categorical: a fifth of its cost per acting step.
    """

    def __init__(self, params: Tensor, nvec: tuple[int, ...] | None, log_std: Tensor | None = None) -> None:
        if nvec is not None:
            self.log_probs = [logits.log_softmax(-1) for logits in params.split(list(nvec), dim=-1)]
        else:
            self.gaussian = Normal(params, log_std.expand_as(params).exp(), validate_args=False)
        self.nvec = nvec

    def sample(self) -> Tensor:
        if self.nvec is not None:
            # Gumbel-max: log p + Gumbel noise (-log of an Exp(1) draw) peaks at an exact sample.
            noisy = [log_p - torch.empty_like(log_p).exponential_().log() for log_p in self.log_probs]
            return torch.stack([values.argmax(-1) for values in noisy], dim=-1)
        return self.gaussian.sample()

    def mode(self) -> Tensor:
        if self.nvec is not None:
            return torch.stack([log_p.argmax(-1) for log_p in self.log_probs], dim=-1)
        return self.gaussian.mean

    def log_prob(self, actions: Tensor) -> Tensor:
        if self.nvec is not None:
            return sum(log_p.gather(-1, actions[..., i, None])[..., 0] for i, log_p in enumerate(self.log_probs))
        return self.gaussian.log_prob(actions).sum(-1)

    def explored(self, epsilons: Tensor) -> ActionDistribution:
        """Each categorical mixed with the uniform one, epsilons `[...]` (the leading dims); discrete actions only."""
        mixed = [epsilon_mixture(log_p, epsilons.unsqueeze(-1)) for log_p in self.log_probs]
        return ActionDistribution(torch.cat(mixed, dim=-1), self.nvec)

    def entropy(self) -> Tensor:
        if self.nvec is not None:
            return sum(-(log_p.exp() * log_p).sum(-1) for log_p in self.log_probs)
        return self.gaussian.entropy().sum(-1)


class ActionHead(nn.Module):
    """Actor head and everything else that depends on the action space.

    `forward(h [..., in_dim])` gives the ActionDistribution; `encode(actions)` the previous-action
    input `[..., input_dim]`; `to_env(actions)` the numpy actions the vector env takes.
    """

    def __init__(self, space: spaces.Space, in_dim: int, hidden_dim: int) -> None:
        super().__init__()
        if isinstance(space, (spaces.Discrete, spaces.MultiDiscrete)):
            self.nvec: tuple[int, ...] | None = (
                (int(space.n),) if isinstance(space, spaces.Discrete) else tuple(int(n) for n in np.ravel(space.nvec))
            )
            self.start = np.asarray(space.start)
            self.action_shape: tuple[int, ...] = (len(self.nvec),)
            self.action_dtype = torch.int64
            self.one_hot = OneHot(self.nvec)
            self.input_dim = self.one_hot.out_dim
            num_params = sum(self.nvec)
            self.log_std = None
        elif isinstance(space, spaces.Box):
            self.nvec = None
            size = int(np.prod(space.shape))
            self.low, self.high = space.low.reshape(-1), space.high.reshape(-1)
            self.action_shape = (size,)
            self.action_dtype = torch.float32
            self.input_dim = size
            num_params = size
            self.log_std = nn.Parameter(torch.zeros(size))
        else:
            raise ValueError(f"unsupported action space {space}; supported: Discrete, MultiDiscrete, Box")
        self.space = space
        self.net = nn.Sequential(
            init_layer(nn.Linear(in_dim, hidden_dim)),
            nn.Tanh(),
            init_layer(nn.Linear(hidden_dim, num_params), gain=0.01),
        )

    def forward(self, h: Tensor) -> ActionDistribution:
        return ActionDistribution(self.net(h), self.nvec, self.log_std)

    @property
    def max_entropy(self) -> float | None:
        """The entropy of the uniform distribution over the actions (nats); None for continuous actions."""
        return None if self.nvec is None else float(np.log(self.nvec).sum())

    def encode(self, actions: Tensor) -> Tensor:
        """actions `[..., *action_shape]` -> previous-action input `[..., input_dim]` (one-hot for discrete)."""
        if self.nvec is not None:
            return self.one_hot(actions)
        return actions.float()

    def to_env(self, actions: np.ndarray) -> np.ndarray:
        """Batched actions `[N, *action_shape]` -> what the vector env's step takes."""
        if isinstance(self.space, spaces.Discrete):
            return actions[:, 0] + self.start
        if isinstance(self.space, spaces.MultiDiscrete):
            return actions.reshape(len(actions), *self.space.shape) + self.start
        return np.clip(actions, self.low, self.high).reshape(len(actions), *self.space.shape)


def init_layer(layer: nn.Linear, gain: float = float(np.sqrt(2))) -> nn.Linear:
    """Orthogonal weights and zero bias (the usual PPO initialisation; small gain on policy logits)."""
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer
