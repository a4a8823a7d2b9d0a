"""Batched ports of the memory tasks: `make_batched(env_id, num_envs, device=..., seed=...)`.

Each port is a `BatchedEnv` (hqlt/envs/batched/base.py) whose state is a few tensors on any torch
device, with the semantics of `hqlt.envs.make_vector` (SAME_STEP autoreset, final observations,
episode statistics) and the spaces of `hqlt.envs.make`. `BATCHED_IDS` lists the ids that have one.
"""

from __future__ import annotations

import difflib
from typing import Any

import gymnasium as gym
import torch

from hqlt.envs.batched.base import BatchedEnv, hash_bits, to_normal, to_uniform
from hqlt.envs.batched.ports import PORTS
from hqlt.envs.checks import require_int

BATCHED_IDS: tuple[str, ...] = tuple(PORTS)
# make()'s wrapper options, which the batched ports do not apply (their policy inputs cover the
# previous action and reward).
_WRAPPER_OPTIONS = ("previous_action", "previous_action_reward", "flicker", "observation_noise")


def has_batched_port(env_id: str) -> bool:
    return env_id in PORTS


def make_batched(
    env_id: str,
    num_envs: int,
    *,
    device: torch.device | str = "cpu",
    seed: int = 0,
    max_episode_steps: int | None = None,
    **env_kwargs: Any,
) -> BatchedEnv:
    """`num_envs` envs of `env_id` as one BatchedEnv on `device`, episodes drawn from `seed`.

    `env_kwargs` are the env constructor's parameters, checked as `hqlt.envs.make` checks them (the
    port reads its constants from a reference env built with them); `max_episode_steps` replaces the
    registered time limit.
    """
    from hqlt.envs.registry import make

    if env_id not in PORTS:
        close = difflib.get_close_matches(str(env_id), BATCHED_IDS, n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(
            f"{env_id!r} has no batched port.{hint} Ids with one: {', '.join(BATCHED_IDS)}. "
            "Other envs run as gymnasium vector envs (hqlt.envs.make_vector, env.vectorization=gymnasium)."
        )
    require_int("num_envs", num_envs, 1)
    wrappers = sorted(set(env_kwargs) & set(_WRAPPER_OPTIONS))
    if wrappers:
        raise ValueError(
            f"the batched port of {env_id} does not apply make()'s wrapper option(s) {wrappers}; "
            "use hqlt.envs.make_vector (env.vectorization=gymnasium) for them"
        )
    reference = make(env_id, max_episode_steps=max_episode_steps, **env_kwargs)
    if max_episode_steps is None:
        max_episode_steps = gym.spec(env_id).max_episode_steps
    return PORTS[env_id](reference, num_envs, device=device, seed=seed, max_episode_steps=max_episode_steps)


__all__ = ["BATCHED_IDS", "BatchedEnv", "has_batched_port", "hash_bits", "make_batched", "to_normal", "to_uniform"]
