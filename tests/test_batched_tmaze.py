"""Batched T-Maze against hqlt.envs.tmaze.TMaze: same episodes, same everything."""

import numpy as np
import pytest
import torch
from scipy import stats

from batched_reference import run_against_reference
from hqlt.envs import make_batched


def goal_side(env):
    return {"goal_up": env._goal_up}


def mostly_right(rng, num_envs):
    """Right with probability 0.7, else any action: reaches the junction, turns both ways, idles."""
    return np.where(rng.random(num_envs) < 0.7, 0, rng.integers(0, 4, num_envs))


@pytest.mark.parametrize("env_id", ["hqlt/TMazePassive-v0", "hqlt/TMazeActive-v0"])
@pytest.mark.parametrize("kwargs", [dict(corridor_length=4), dict(corridor_length=9, penalty=0.3, goal_reward=2.0)])
def test_batched_tmaze_matches_reference(env_id, kwargs):
    run_against_reference(env_id, goal_side, mostly_right, steps=400, min_episodes=100, **kwargs)


def test_batched_tmaze_goal_side_is_a_fair_coin():
    env = make_batched("hqlt/TMazePassive-v0", 2000, seed=3, corridor_length=2)
    ups = 0
    obs, _ = env.reset()
    ups += int(obs[:, 0].sum())
    for _ in range(3):  # right, right, up: every episode ends and the next begins
        for action in (0, 0, 1):
            obs, *_ = env.step(torch.full((env.num_envs,), action))
        ups += int(obs[:, 0].sum())
    total = 4 * env.num_envs
    assert stats.binomtest(ups, total, 0.5).pvalue > 1e-3

