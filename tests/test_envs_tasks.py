"""Memory tasks: T-Maze (passive/active) solved by a scripted memory policy, not by a memoryless one."""

import gymnasium as gym
import numpy as np
import pytest

import hqlt.envs
from hqlt.envs.tmaze import DOWN, LEFT, RIGHT, UP


def _tmaze_episodes(env_id: str, corridor_length: int, episodes: int, remember: bool, seed: int = 0):
    """Runs a scripted policy; with remember=False it turns up at the junction whatever the cue.
    Returns each episode's gymnasium statistics (r, l, t) and success."""
    env = gym.wrappers.RecordEpisodeStatistics(hqlt.envs.make(env_id, corridor_length=corridor_length))
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
                stats.append({**info["episode"], "success": info["success"]})
                obs, _ = env.reset()
                break
    return stats


@pytest.mark.parametrize("env_id", ["hqlt/TMazePassive-v0", "hqlt/TMazeActive-v0"])
@pytest.mark.parametrize("corridor_length", [10, 1000])
def test_tmaze_scripted_memory_policy_always_succeeds(env_id, corridor_length):
    stats = _tmaze_episodes(env_id, corridor_length, episodes=20, remember=True)
    assert all(s["success"] == 1.0 for s in stats)
    # the optimal policy is never behind schedule: no penalty, return is exactly the goal reward
    assert all(s["r"] == pytest.approx(1.0) for s in stats)
    horizon = corridor_length + (3 if env_id.endswith("Active-v0") else 1)
    assert all(s["l"] == horizon for s in stats)


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
    assert info["success"] == 0.0


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


# Passive Visual Match ------------------------------------------------------------------------------

from hqlt.envs import visual_match as vm  # noqa: E402


def _colour_in_view(obs: np.ndarray) -> int | None:
    """Index of the cue colour seen in a crop, or None."""
    for k in range(vm.NUM_COLOURS):
        if (obs == vm.PALETTE[vm.COLOUR + k]).all(axis=-1).any():
            return k
    return None


def _door_above(obs: np.ndarray) -> int | None:
    """Colour of the cell right above the agent's upper neighbour (row 0 of the crop, centre column)."""
    return _colour_in_view(obs[1:2, 2:3])


def _visual_match_episode(env, obs, distractor_steps: int, remember: bool, rng: np.random.Generator):
    cue = _colour_in_view(obs)
    for _ in range(vm.EXPLORE_STEPS + distractor_steps):
        obs, _, terminated, _, info = env.step(int(rng.integers(4)))
        assert not terminated
    # reward room: walk up to row 2 below the middle door, then check middle, left, right doors
    for _ in range(3):
        obs, *_ = env.step(vm.UP)
    wanted = cue if remember else None
    for shift in ([], [vm.LEFT] * 3, [vm.RIGHT] * 6):
        for action in shift:
            obs, _, terminated, _, info = env.step(action)
        if wanted is None or _door_above(obs) == wanted:
            obs, _, terminated, _, info = env.step(vm.UP)
            assert terminated
            return {**info["episode"], "success": info["success"]}
    raise AssertionError("the cue colour is none of the doors")


@pytest.mark.parametrize("remember", [True, False])
def test_visual_match_scripted_policies(remember):
    distractor_steps = 25
    env = gym.wrappers.RecordEpisodeStatistics(
        hqlt.envs.make("hqlt/PassiveVisualMatch-v0", distractor_steps=distractor_steps)
    )
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    stats = []
    for _ in range(150 if not remember else 40):
        stats.append(_visual_match_episode(env, obs, distractor_steps, remember, rng))
        obs, _ = env.reset()
    success = np.array([s["success"] for s in stats])
    if remember:
        assert (success == 1.0).all()
        assert all(s["r"] >= 100.0 for s in stats)
    else:  # always the middle door: chance level
        assert 0.2 < success.mean() < 0.47


def test_visual_match_reward_room_does_not_reveal_the_cue():
    env = hqlt.envs.make("hqlt/PassiveVisualMatch-v0", distractor_steps=0)
    env.reset(seed=1)
    for _ in range(vm.EXPLORE_STEPS + 3):
        obs, *_ = env.step(vm.UP)
    game = env.unwrapped
    assert game._phase == 2
    views = []
    for target in range(vm.NUM_COLOURS):
        game._target = target
        views.append(game._observe())
    assert all(np.array_equal(views[0], v) for v in views)
    assert _colour_in_view(obs) is not None  # the middle door is in view


def test_visual_match_apples_respawn():
    env = vm.PassiveVisualMatch(distractor_steps=100, apple_respawn_steps=4)
    env.reset(seed=0)
    for _ in range(vm.EXPLORE_STEPS):
        env.step(vm.UP)
    # start (row 5, col 5); an apple two cells left (col 3): eat it, walk away, wait (down is a wall)
    actions = (vm.LEFT, vm.LEFT, vm.RIGHT, vm.RIGHT, vm.LEFT, vm.DOWN, vm.LEFT)
    rewards = [env.step(a)[1] for a in actions]
    assert rewards == [0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]  # back 4 steps after being eaten


@pytest.mark.parametrize("kwargs", [{"distractor_steps": -1}, {"apple_respawn_steps": 0}])
def test_visual_match_rejects_bad_parameters(kwargs):
    with pytest.raises(ValueError, match="must be an integer >="):
        hqlt.envs.make("hqlt/PassiveVisualMatch-v0", **kwargs)
