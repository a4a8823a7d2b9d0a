"""Observation encoders, one per contract kind (hqlt.envs.describe_space).

    discrete -> one-hot of every element, concatenated          [B, sum(nvec)]
    box      -> the flattened values (the policy's MLP follows)  [B, prod(shape)]
    image    -> small strided CNN over RGB in [0, 1]             [B, features]
    grid     -> one-hot per channel (object/colour/state), CNN   [B, features]

Each encoder maps a batch of observations `[B, *shape]` to features `[B, out_dim]`; the policy adds
the previous action and reward and mixes everything with an MLP.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hqlt.envs import SpaceSpec


class OneHot(nn.Module):
    """One-hot of every element: int `[..., len(nvec)]` with element i in range(nvec[i]) -> float `[..., sum(nvec)]`.

    The offsets live in a buffer (moved with the module, not saved), so that a call makes no
    host-to-device copy and can be captured in a CUDA graph.
    """

    def __init__(self, nvec: tuple[int, ...]) -> None:
        super().__init__()
        self.nvec = tuple(nvec)
        self.out_dim = sum(self.nvec)
        self.register_buffer("offsets", torch.tensor((0, *self.nvec[:-1])).cumsum(0), persistent=False)

    def forward(self, values: Tensor) -> Tensor:
        hot = torch.zeros(*values.shape[:-1], self.out_dim, device=values.device)
        return hot.scatter_(-1, values.long() + self.offsets, 1.0)


class BoxEncoder(nn.Module):
    """Flattened float values: `[B, *shape]` -> `[B, prod(shape)]`."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.out_dim = int(torch.tensor(shape).prod())

    def forward(self, obs: Tensor) -> Tensor:
        return obs.float().flatten(1)


class ConvEncoder(nn.Module):
    """Two 3x3 convolutions over `[B, H, W, C]` views; `one_hot_nvec` turns categorical grids into channels.

    image: uint8 RGB scaled to [0, 1], stride 2 (pictures are larger than MiniGrid's 7x7 grid);
    grid:  one-hot of every channel (MiniGrid object, colour, state), stride 1.
    """

    def __init__(self, shape: tuple[int, ...], one_hot_nvec: tuple[int, ...] | None, channels: int = 32) -> None:
        super().__init__()
        self.one_hot = OneHot(one_hot_nvec) if one_hot_nvec is not None else None
        in_channels = self.one_hot.out_dim if self.one_hot is not None else shape[-1]
        stride = 1 if one_hot_nvec is not None else 2
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=stride, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            self.out_dim = self.net(torch.zeros(1, in_channels, *shape[:2])).shape[1]

    def forward(self, obs: Tensor) -> Tensor:
        if self.one_hot is not None:
            pixels = self.one_hot(obs)
        else:
            pixels = obs.float() / 255.0
        return self.net(pixels.permute(0, 3, 1, 2))


def build_encoder(spec: SpaceSpec) -> nn.Module:
    """The encoder for an observation space described by `describe_space`; it has `out_dim`."""
    if spec.kind == "discrete":
        return OneHot(spec.nvec)
    if spec.kind == "box":
        return BoxEncoder(spec.shape)
    if spec.kind == "image":
        return ConvEncoder(spec.shape, one_hot_nvec=None)
    if spec.kind == "grid":
        return ConvEncoder(spec.shape, one_hot_nvec=spec.nvec)
    raise ValueError(f"no encoder for observation kind {spec.kind!r}; kinds: discrete, box, image, grid")

