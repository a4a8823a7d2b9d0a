"""The four observation kinds of the environment contract and the one function describing a space.

Kinds (what the policy encoder sees):
  "discrete": int array of shape (len(nvec),), element i in range(nvec[i]) (Discrete n -> nvec (n,))
  "box":      float array of `shape` with bounds `low`/`high`
  "image":    uint8 RGB array [H, W, C] in 0..255
  "grid":     int array [H, W, C], channel c in range(nvec[c]) (MiniGrid object/colour/state view)

`to_contract_space` turns any gymnasium observation space (Discrete, MultiBinary, Tuple, Dict, ...)
into one of these kinds, with the function converting its observations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from gymnasium import spaces

KINDS = ("discrete", "box", "image", "grid")


@dataclass(frozen=True)
class SpaceSpec:
    """What a policy needs to know about an observation or action space.

    kind:  one of KINDS.
    shape: shape of one observation/action (discrete: (len(nvec),); image/grid: (H, W, C)).
    nvec:  category counts (discrete: per element; grid: per channel); None for box/image.
    low, high: float bounds of a box (arrays of `shape`); 0/255 arrays for an image; None otherwise.
    """

    kind: str
    shape: tuple[int, ...]
    nvec: tuple[int, ...] | None = None
    low: np.ndarray | None = None
    high: np.ndarray | None = None


def describe_space(space: spaces.Space) -> SpaceSpec:
    """Describes an observation or action space as one of the contract's kinds.

    Accepts Discrete, MultiDiscrete (1-D, or 3-D for a grid), Tuple of Discretes, MultiBinary and Box
    (uint8 [H, W, C] with C in (1, 3, 4) is an image, anything else a float box). Pass a single env's
    space (`venv.single_observation_space`), not a batched one.
    """
    if isinstance(space, spaces.Discrete):
        return SpaceSpec("discrete", (1,), nvec=(int(space.n),))
    if isinstance(space, spaces.MultiBinary):
        size = int(np.prod(space.shape))
        return SpaceSpec("discrete", (size,), nvec=(2,) * size)
    if isinstance(space, spaces.MultiDiscrete):
        nvec = np.asarray(space.nvec)
        if nvec.ndim == 1:
            return SpaceSpec("discrete", nvec.shape, nvec=tuple(int(n) for n in nvec))
        if _is_grid(space):
            return SpaceSpec("grid", nvec.shape, nvec=tuple(int(n) for n in nvec[0, 0]))
        raise ValueError(
            f"MultiDiscrete with nvec shape {nvec.shape} is neither a vector (1-D) nor a grid "
            "(3-D with the same category counts in every cell)"
        )
    if isinstance(space, spaces.Tuple) and all(isinstance(s, spaces.Discrete) for s in space.spaces):
        nvec = tuple(int(s.n) for s in space.spaces)
        return SpaceSpec("discrete", (len(nvec),), nvec=nvec)
    if isinstance(space, spaces.Box):
        if _is_image(space):
            return SpaceSpec("image", space.shape, low=space.low.astype(np.float32), high=space.high.astype(np.float32))
        return SpaceSpec("box", space.shape, low=space.low.astype(np.float32), high=space.high.astype(np.float32))
    raise ValueError(
        f"cannot describe {space}: the contract's kinds are {KINDS}, built from Discrete, MultiDiscrete, "
        "Tuple of Discretes, MultiBinary or Box; hqlt.envs.make flattens other Tuple/Dict observations"
    )


def _is_image(space: spaces.Box) -> bool:
    return space.dtype == np.uint8 and len(space.shape) == 3 and space.shape[-1] in (1, 3, 4)


def _is_grid(space: spaces.Space) -> bool:
    """A 3-D MultiDiscrete with the same category counts in every cell."""
    if not isinstance(space, spaces.MultiDiscrete):
        return False
    nvec = np.asarray(space.nvec)
    return nvec.ndim == 3 and bool((nvec == nvec[:1, :1, :]).all())


def _is_discrete_leaf(space: spaces.Space) -> bool:
    return isinstance(space, (spaces.Discrete, spaces.MultiBinary)) or (
        isinstance(space, spaces.MultiDiscrete) and np.asarray(space.nvec).ndim == 1
    )


def _discrete_leaf(space: spaces.Space) -> tuple[np.ndarray, Callable[[Any], np.ndarray]]:
    """(nvec, obs -> int64 vector with element i in range(nvec[i])) for a Discrete-like space."""
    if isinstance(space, spaces.Discrete):
        start = int(space.start)
        return np.array([space.n], dtype=np.int64), lambda obs: np.array([int(obs) - start], dtype=np.int64)
    if isinstance(space, spaces.MultiBinary):
        size = int(np.prod(space.shape))
        return np.full(size, 2, dtype=np.int64), lambda obs: np.asarray(obs, dtype=np.int64).reshape(-1)
    start = np.asarray(space.start, dtype=np.int64)
    return np.asarray(space.nvec, dtype=np.int64), lambda obs: np.asarray(obs, dtype=np.int64) - start


def to_contract_space(space: spaces.Space) -> tuple[spaces.Space, Callable[[Any], Any]]:
    """Maps a gymnasium observation space to a contract kind: returns (new_space, convert_obs).

    A grid (3-D MultiDiscrete) and a uint8 image Box are kept; Discrete/MultiBinary/MultiDiscrete and
    Tuple/Dict made only of them -> MultiDiscrete (kind discrete); other Box -> float32 Box; other
    Tuple/Dict -> float32 Box via gymnasium's flatten (discrete parts one-hot).
    """
    if isinstance(space, spaces.Box):
        if _is_image(space):
            return space, lambda obs: obs
        box = spaces.Box(space.low.astype(np.float32), space.high.astype(np.float32), dtype=np.float32)
        return box, lambda obs: np.asarray(obs, dtype=np.float32)
    if _is_grid(space):
        return space, lambda obs: obs
    if _is_discrete_leaf(space):
        nvec, convert = _discrete_leaf(space)
        return spaces.MultiDiscrete(nvec), convert
    if isinstance(space, (spaces.Tuple, spaces.Dict)):
        leaves = list(space.spaces.values() if isinstance(space, spaces.Dict) else space.spaces)
        if all(_is_discrete_leaf(leaf) for leaf in leaves):
            parts = [_discrete_leaf(leaf) for leaf in leaves]
            keys = list(space.spaces) if isinstance(space, spaces.Dict) else range(len(leaves))

            def convert(obs: Any) -> np.ndarray:
                return np.concatenate([fn(obs[key]) for key, (_, fn) in zip(keys, parts)])

            return spaces.MultiDiscrete(np.concatenate([nvec for nvec, _ in parts])), convert
        flat = spaces.flatten_space(space)
        box = spaces.Box(flat.low.astype(np.float32), flat.high.astype(np.float32), dtype=np.float32)
        return box, lambda obs: spaces.flatten(space, obs).astype(np.float32)
    raise ValueError(f"observation space {space} has no contract kind; supported: Box, Discrete, "
                     "MultiDiscrete, MultiBinary and Tuple/Dict of them")
