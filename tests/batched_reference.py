"""Fidelity harness for batched ports: a port against its reference vector env, step by step.

`run_against_reference` steps `hqlt.envs.make_vector(env_id, ...)` and `make_batched(env_id, ...)`
with the same actions, the batched env's episode parameters injected from the reference envs, and
checks every returned value, the final observations and the episode statistics across autoresets.
The port runs on HQLT_TEST_DEVICE (default cpu; `HQLT_TEST_DEVICE=cuda` for the GPU run).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch

from hqlt.envs import make_batched, make_vector

DEVICE = os.environ.get("HQLT_TEST_DEVICE", "cpu")


def reference_envs(vector_env) -> list:
    """The unwrapped single envs inside a `make_vector` env."""
    return [env.unwrapped for env in vector_env.env.envs]


def run_against_reference(
    env_id: str,
    read_parameters: Callable[[object], dict[str, object]],
    sample_actions: Callable[[np.random.Generator, int], np.ndarray],
    num_envs: int = 6,
    steps: int = 300,
    seed: int = 0,
    min_episodes: int = 1,
    device: str = DEVICE,
    atol: float = 0.0,
    **kwargs,
) -> int:
    """Asserts that the port reproduces the reference for `steps` steps; returns the episodes compared.

    read_parameters(unwrapped reference env) -> the port's episode parameters of the episode that
    env is in (`{name: value}`, one row; stacked over envs). sample_actions(rng, num_envs) -> actions.
    atol: tolerance for float observations and rewards (0: exact).
    """
    reference = make_vector(env_id, num_envs, seed, **kwargs)
    batched = make_batched(env_id, num_envs, device=device, seed=seed, **kwargs)
    singles = reference_envs(reference)

    def inject(env) -> dict[str, torch.Tensor]:
        rows = [read_parameters(single) for single in singles]
        return {name: torch.as_tensor(np.stack([row[name] for row in rows]), device=env.device) for name in rows[0]}

    batched.episode_source = inject

    def check(name: str, ours: torch.Tensor, theirs, t: int, mask=None) -> None:
        theirs = np.asarray(theirs)
        ours = ours.cpu().numpy()
        if mask is not None:
            ours, theirs = ours[mask], theirs[mask]
        assert ours.shape == theirs.shape, f"{name} at step {t}: shape {ours.shape} vs reference {theirs.shape}"
        if np.issubdtype(theirs.dtype, np.floating):
            np.testing.assert_allclose(ours, theirs, rtol=0, atol=atol, err_msg=f"{name} at step {t}")
        else:
            np.testing.assert_array_equal(ours, theirs, err_msg=f"{name} at step {t}")

    ref_obs, _ = reference.reset(seed=seed)
    obs, _ = batched.reset(seed=seed)
    assert obs.dtype == torch.from_numpy(np.asarray(ref_obs)).dtype, f"obs dtype {obs.dtype} vs {ref_obs.dtype}"
    assert batched.single_observation_space == reference.single_observation_space
    assert batched.single_action_space == reference.single_action_space
    check("reset obs", obs, ref_obs, -1)
    rng = np.random.default_rng(seed)
    episodes = 0
    for t in range(steps):
        actions = sample_actions(rng, num_envs)
        ref_obs, ref_reward, ref_terminated, ref_truncated, ref_info = reference.step(actions)
        obs, reward, terminated, truncated, info = batched.step(torch.as_tensor(actions, device=batched.device))
        check("obs", obs, ref_obs, t)
        check("reward", reward, np.asarray(ref_reward, dtype=np.float32), t)
        check("terminated", terminated, ref_terminated, t)
        check("truncated", truncated, ref_truncated, t)
        done = ref_terminated | ref_truncated
        check("_final_obs", info["_final_obs"], done, t)
        check("_episode", info["_episode"], done, t)
        if done.any():
            final = np.stack([ref_info["final_obs"][i] for i in np.flatnonzero(done)])
            ours_final = info["final_obs"][torch.as_tensor(done, device=batched.device)]
            check("final_obs", ours_final, final, t)
            for key in ("r", "l", "success"):  # "t", seconds, is not measured by batched envs
                expected = ref_info["episode"][key][done]
                got = info["episode"][key][torch.as_tensor(done, device=batched.device)]
                if key == "r":
                    np.testing.assert_allclose(got.cpu().numpy(), expected, rtol=1e-5, atol=1e-5 + atol * 1e3,
                                               err_msg=f"episode return at step {t}")
                else:
                    check(f"episode {key}", got.double() if key == "success" else got, expected, t)
            episodes += int(done.sum())
    assert episodes >= min_episodes, f"only {episodes} episodes ended in {steps} steps; compare more of them"
    return episodes
