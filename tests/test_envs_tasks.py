"""Memory tasks: T-Maze (passive/active) solved by a scripted memory policy, not by a memoryless one."""

import numpy as np
import pytest

import hqlt.envs
from hqlt.envs.tmaze import DOWN, LEFT, RIGHT, UP


def _tmaze_episodes(env_id: str, corridor_length: int, episodes: int, remember: bool, seed: int = 0):
    """Runs a scripted policy; with remember=False it turns up at the junction whatever the cue."""
    env = hqlt.envs.make(env_id, corridor_length=corridor_length)
    active = env_id.endswith("Active-v0")
    stats = []
    obs, _ = env.reset(seed=seed)
    for _ in range(episodes):
        cue_up = obs[0] == 1.0 if obs[:2].any() else None
        steps = 0
        while True:
            if active and steps == 0:
                action = LEFT
            elif obs[2] == 1.0:  # at the junction
                action = UP if (cue_up if remember else True) else DOWN
            else:
                action = RIGHT
            obs, reward, terminated, truncated, info = env.step(action)
            steps += 1
            if cue_up is None and obs[:2].any():
                cue_up = obs[0] == 1.0
            if terminated or truncated:
                stats.append(info["episode"])
                obs, _ = env.reset()
                break
    return stats


@pytest.mark.parametrize("env_id", ["hqlt/TMazePassive-v0", "hqlt/TMazeActive-v0"])
@pytest.mark.parametrize("corridor_length", [10, 1000])
def test_tmaze_scripted_memory_policy_always_succeeds(env_id, corridor_length):
    stats = _tmaze_episodes(env_id, corridor_length, episodes=20, remember=True)
    assert all(s["success"] == 1.0 for s in stats)
    # the optimal policy is never behind schedule: no penalty, return is exactly the goal reward
    assert all(s["return"] == pytest.approx(1.0) for s in stats)
    horizon = corridor_length + (3 if env_id.endswith("Active-v0") else 1)
    assert all(s["length"] == horizon for s in stats)


@pytest.mark.parametrize("env_id", ["hqlt/TMazePassive-v0", "hqlt/TMazeActive-v0"])
def test_tmaze_memoryless_policy_succeeds_about_half(env_id):
    stats = _tmaze_episodes(env_id, corridor_length=10, episodes=400, remember=False)
    rate = np.mean([s["success"] for s in stats])
    assert 0.4 < rate < 0.6


def test_tmaze_cue_only_at_oracle_and_penalty_when_idle():
    env = hqlt.envs.make("hqlt/TMazePassive-v0", corridor_length=5)
    obs, _ = env.reset(seed=3)
    assert obs[:2].sum() == 1.0 and obs[2] == 0.0
    obs, reward, terminated, _, _ = env.step(LEFT)  # wall: stays at the oracle, but the cue is gone
    assert obs.tolist() == [0.0, 0.0, 0.0]
    assert reward == pytest.approx(-1 / 5) and not terminated
    for _ in range(5):
        obs, reward, terminated, truncated, info = env.step(RIGHT)
    # the horizon (corridor_length + 1 steps) ends the episode before the agent can turn
    assert obs[2] == 1.0 and terminated and not truncated
    assert info["episode"]["success"] == 0.0


def test_tmaze_active_cue_is_fetched_one_step_behind_start():
    env = hqlt.envs.make("hqlt/TMazeActive-v0", corridor_length=4)
    obs, _ = env.reset(seed=0)
    assert obs.tolist() == [0.0, 0.0, 0.0]
    obs, _, _, _, _ = env.step(LEFT)
    assert obs[:2].sum() == 1.0


@pytest.mark.parametrize("bad", [0, -3, 2.5, "10"])
def test_tmaze_rejects_bad_corridor_length(bad):
    with pytest.raises(ValueError, match="corridor_length must be an integer >= 1"):
        hqlt.envs.make("hqlt/TMazePassive-v0", corridor_length=bad)
