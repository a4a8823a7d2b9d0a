"""The batched env: N copies of one task as a few torch tensors on any device, stepped together.

A port subclasses `BatchedEnv` and writes `setup()` (read its constants from `self.task`, the
reference env, and allocate its state tensors) and three methods over all N rows at once:

    _start(rows, params)  begin new episodes in the rows where `rows` (bool [N]) is true, from the
                          episode parameters `params` (what `draw_episodes` returns)
    _advance(actions)     one step of every row -> reward float32 [N], terminated bool [N],
                          success float32 [N] (read where an episode terminated)
    _observe()            the current observation of every row, [N, *obs_shape]

and `draw_episodes()`, the random parameters (cue, deck order, initial pole state, ...) of the episode
each row starts next. Everything else, the gymnasium vector-env semantics of `hqlt.envs.make_vector`,
lives here once: SAME_STEP autoreset (the obs returned for a finished row is its next episode's first
obs; the last one is in info["final_obs"], valid where info["_final_obs"]), the time limit
(`max_episode_steps`, truncation) and the episode statistics (info["episode"] with gymnasium's keys:
"r" float32 [N], "l" int64 [N], "t" float32 [N] nan (not measured), "success" float32 [N]; valid
where info["_episode"]).

Two rules make `step` capturable in a CUDA graph together with a policy step: no host synchronisation
(no `.item()`, no boolean indexing, no data-dependent shapes) and every state tensor allocated once in
`__init__` and then only written in place (`copy_`, `masked_fill_`, ...), so that a replayed graph reads
and writes the same memory. `snapshot()` / `restore()` copy that state out and back (a graph's warm-up
steps must not advance the episodes).

Randomness is counter-based: every draw hashes (seed, env index, episode index, stream, element), so
the episodes of a seed are the same on every device and do not depend on how rows interleave.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import gymnasium as gym
import torch
from gymnasium.vector.utils import batch_space
from torch import Tensor

from hqlt.envs.wrappers import EPISODE_LENGTH, EPISODE_RETURN, EPISODE_SUCCESS, EPISODE_TIME

_UINT32 = 0xFFFFFFFF


def _mix32(x: Tensor) -> Tensor:
    """A 32-bit integer hash (xor-shift-multiply, full avalanche) of int64 values in [0, 2^32).

    Both multipliers are below 2^31, so every product fits in int64: exact on every device.
    """
    x = x ^ (x >> 16)
    x = (x * 0x21F0AAAD) & _UINT32
    x = x ^ (x >> 15)
    x = (x * 0x735A2D97) & _UINT32
    return x ^ (x >> 15)


def hash_bits(*words: Tensor | int) -> Tensor:
    """Uniform 32-bit values (int64 in [0, 2^32)) hashed from integer `words`, broadcast together."""
    bits: Tensor | None = None
    for word in words:
        word = (torch.as_tensor(word, dtype=torch.int64) if not isinstance(word, Tensor) else word.long()) & _UINT32
        bits = _mix32(word if bits is None else bits ^ word)
    assert bits is not None, "hash_bits needs at least one word"
    return bits


def to_uniform(bits: Tensor) -> Tensor:
    """32-bit values -> float32 uniform in [0, 1) (their top 24 bits)."""
    return (bits >> 8).float() * 2.0**-24


def to_normal(bits_a: Tensor, bits_b: Tensor) -> Tensor:
    """Two independent 32-bit values -> one standard normal float32 (Box-Muller)."""
    u1 = 1.0 - to_uniform(bits_a)  # (0, 1]: log stays finite
    u2 = to_uniform(bits_b)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)


class BatchedEnv(ABC):
    """N envs of one task on `device` (see the module docstring for what a port implements).

    reset(seed=None) -> (obs, info);  step(actions) -> (obs, reward, terminated, truncated, info)
    obs `[N, *obs_shape]` in the dtype of `single_observation_space`, reward float32 `[N]`,
    terminated/truncated bool `[N]`; actions `[N, *action_shape]` as `single_action_space` holds them
    (int64 `[N]` for Discrete). reset(seed) restarts every row at episode 0 of that seed; without a
    seed, of the seed last used, so the same episodes repeat (as `make_vector`'s envs do).

    `episode_source`, when set, replaces `draw_episodes` (a callable taking the env): how tests inject
    a reference env's episode parameters.
    """

    # Whether the task reports success; episodes of tasks that do not report nan.
    defines_success: bool = False

    def __init__(
        self,
        reference: gym.Env,
        num_envs: int,
        device: torch.device | str = "cpu",
        seed: int = 0,
        max_episode_steps: int | None = None,
    ) -> None:
        """`reference`: the env as `hqlt.envs.make` builds it; the port takes its spaces and reads its
        constants from `reference.unwrapped` (`self.task`), so that both share one definition."""
        self.env_id = reference.spec.id if reference.spec is not None else type(reference.unwrapped).__name__
        self.task = reference.unwrapped
        self.single_observation_space = reference.observation_space
        self.single_action_space = reference.action_space
        self.num_envs = num_envs
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        self.seed = int(seed)
        self.max_episode_steps = max_episode_steps
        self.episode_source: Any = None
        self.rows = torch.arange(num_envs, device=self.device)
        # hash(seed, env index), the start of every draw's key; a tensor, so that a CUDA graph captured
        # over `step` reads the seed of the latest reset.
        self.row_keys = hash_bits(self.seed, self.rows)
        self.episode = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self.elapsed = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self.episode_return = torch.zeros(num_envs, dtype=torch.float32, device=self.device)
        self._all_rows = torch.ones(num_envs, dtype=torch.bool, device=self.device)
        self.setup()

    # ------------------------------------------------------------------ what a port writes

    @abstractmethod
    def setup(self) -> None:
        """Reads the port's constants from `self.task` and allocates its state tensors `[N, ...]`, which
        are written only in place from then on."""

    @abstractmethod
    def draw_episodes(self) -> dict[str, Tensor]:
        """Parameters `{name: [N, ...]}` of the episode each row starts next (keys: `self.episode`)."""

    @abstractmethod
    def _start(self, rows: Tensor, params: dict[str, Tensor]) -> None:
        """Begins new episodes in the rows where `rows` (bool `[N]`) is true, from `params`."""

    @abstractmethod
    def _advance(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One step of every row: reward float32 `[N]`, terminated bool `[N]`, success float32 `[N]`."""

    @abstractmethod
    def _observe(self) -> Tensor:
        """The current observation of every row, `[N, *obs_shape]` (no side effects: called twice a step)."""

    def state_tensors(self) -> dict[str, Tensor]:
        """Every tensor of the env's state (the port's and the base's), by attribute name."""
        return {name: value for name, value in vars(self).items() if isinstance(value, Tensor)}

    # ------------------------------------------------------------------ randomness

    def random_bits(self, stream: int, *shape: int, step: Tensor | None = None) -> Tensor:
        """Uniform 32-bit values `[N, *shape]` for the episode each row is in (or about to start).

        Keyed by (seed, env index, `self.episode`, `stream`, element index, `step` if given): a port
        gives every kind of draw its own stream, and per-step draws (noise) pass the step counter.
        """
        per_row = (-1, *([1] * len(shape)))
        bits = hash_bits(self.row_keys, self.episode).view(per_row)
        if step is not None:
            bits = hash_bits(bits, step.view(per_row))
        element = torch.arange(math.prod(shape), device=self.device).view(1, *shape) + stream * 0x9E3779B9
        return hash_bits(bits, element)

    def random_permutations(self, stream: int, size: int) -> Tensor:
        """A uniformly random permutation of range(size) per row, int64 `[N, size]`."""
        keys = self.random_bits(stream, size) * size + torch.arange(size, device=self.device)  # ties: none
        return keys.argsort(dim=1)

    # ------------------------------------------------------------------ the vector-env API

    @property
    def observation_space(self) -> gym.Space:
        return batch_space(self.single_observation_space, self.num_envs)

    @property
    def action_space(self) -> gym.Space:
        return batch_space(self.single_action_space, self.num_envs)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Tensor, dict]:
        if seed is not None:
            self.seed = int(seed)
            self.row_keys.copy_(hash_bits(self.seed, self.rows))
        self.episode.zero_()
        return self._start_every_row(), {}

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, dict]:
        reward, terminated, success = self._advance(self._check_actions(actions))
        self.elapsed += 1
        self.episode_return += reward
        if self.max_episode_steps is None:
            truncated = torch.zeros_like(terminated)
        else:
            truncated = self.elapsed >= self.max_episode_steps  # also when terminated, as gymnasium's TimeLimit
        done = terminated | truncated
        if self.defines_success:
            success = torch.where(terminated, success, 0.0)  # a time-out is a failure
        else:
            success = torch.full_like(reward, math.nan)
        info = {
            "final_obs": self._observe(),
            "_final_obs": done,
            "episode": {
                EPISODE_RETURN: torch.where(done, self.episode_return, 0.0),
                EPISODE_LENGTH: torch.where(done, self.elapsed, 0),
                # Seconds would need the host clock: a synchronisation, and a replayed graph runs no Python.
                EPISODE_TIME: torch.full_like(reward, math.nan),
                EPISODE_SUCCESS: torch.where(done, success, math.nan),
            },
            "_episode": done,
        }
        self.episode += done
        self.elapsed.masked_fill_(done, 0)
        self.episode_return.masked_fill_(done, 0.0)
        # Draws are keyed by counters, not by a sequence: skipping them changes nothing. On the CPU,
        # where reading `done` costs no synchronisation, steps without an episode end skip the draws.
        if self.device.type != "cpu" or bool(done.any()):
            self._start(done, self._episode_parameters())
        return self._observe(), reward, terminated, truncated, info

    def next_episodes(self) -> Tensor:
        """Leaves every row's episode unreported (the caller treats it as truncated) and starts the row's next
        one, as autoreset does: the episode counters move on, so no episode repeats. Returns the first
        observations `[N, *obs_shape]`."""
        self.episode += 1
        return self._start_every_row()

    def snapshot(self) -> dict[str, Tensor]:
        """Copies of every state tensor; `restore` puts them back in place."""
        return {name: value.clone() for name, value in self.state_tensors().items()}

    def restore(self, snapshot: dict[str, Tensor]) -> None:
        for name, value in self.state_tensors().items():
            value.copy_(snapshot[name])

    def close(self) -> None:
        """Nothing to release (gymnasium's vector-env API)."""

    # ------------------------------------------------------------------ helpers

    def _start_every_row(self) -> Tensor:
        """Starts the episode `self.episode` names in every row; returns the observations."""
        self.elapsed.zero_()
        self.episode_return.zero_()
        self._start(self._all_rows, self._episode_parameters())
        return self._observe()

    def _episode_parameters(self) -> dict[str, Tensor]:
        return self.draw_episodes() if self.episode_source is None else self.episode_source(self)

    def _check_actions(self, actions: Tensor) -> Tensor:
        """Actions of the right shape, dtype and device, and on the CPU inside the action space (on a
        GPU reading the values would synchronise with the host, so there they are not checked)."""
        space = self.single_action_space
        expected_shape = (self.num_envs, *space.shape)
        if not isinstance(actions, Tensor):
            raise TypeError(f"{self.env_id} batched step takes a torch tensor of actions {list(expected_shape)}, "
                            f"got {type(actions).__name__}")
        if tuple(actions.shape) != expected_shape:
            raise ValueError(f"{self.env_id} batched step takes actions of shape {list(expected_shape)} "
                             f"({self.num_envs} envs, action space {space}), got {list(actions.shape)}")
        want_float = isinstance(space, gym.spaces.Box)
        if actions.dtype.is_floating_point != want_float or actions.dtype == torch.bool:
            kind = "a floating" if want_float else "an integer"
            raise TypeError(f"{self.env_id} batched step takes actions of {kind} dtype, got {actions.dtype}")
        if actions.device != self.device:
            raise ValueError(f"{self.env_id} batched step takes actions on {self.device}, got them on {actions.device}")
        if self.device.type == "cpu" and isinstance(space, gym.spaces.Discrete):
            low, high = int(space.start), int(space.start + space.n)
            if bool(((actions < low) | (actions >= high)).any()):
                raise ValueError(f"{self.env_id} batched step takes actions in range({low}, {high}), "
                                 f"got {sorted(set(actions.tolist()) - set(range(low, high)))[:5]}")
        return actions
