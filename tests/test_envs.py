"""The environment contract: make/make_vector over every id, SAME_STEP autoreset, spaces, wrappers, errors."""

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

import hqlt.envs
from hqlt.envs import describe_space
from hqlt.envs.tmaze import RIGHT, UP

SMALL_KWARGS = {"hqlt/PassiveVisualMatch-v0": {"distractor_steps": 20}}


def _rollout(env_id: str, seed: int, steps: int = 200, asynchronous: bool = False, **kwargs):
    """Random-action rollout of 4 envs; returns stacked obs, rewards and done flags [steps, 4, ...]."""
    kwargs = {**SMALL_KWARGS.get(env_id, {}), **kwargs}
    venv = hqlt.envs.make_vector(env_id, 4, seed=seed, asynchronous=asynchronous, **kwargs)
    obs_space = venv.single_observation_space
    obs, _ = venv.reset()
    trace = {"obs": [obs], "reward": [], "done": []}
    for _ in range(steps):
        obs, reward, terminated, truncated, info = venv.step(venv.action_space.sample())
        assert all(obs_space.contains(o) for o in obs)
        trace["obs"].append(obs)
        trace["reward"].append(reward)
        trace["done"].append(terminated | truncated)
    venv.close()
    return {k: np.stack(v) for k, v in trace.items()}


@pytest.mark.parametrize("env_id", hqlt.envs.ENV_IDS)
def test_every_env_runs_in_a_vector_and_is_reproducible(env_id):
    first = _rollout(env_id, seed=7)
    second = _rollout(env_id, seed=7)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=f"{env_id}: {key} differs under the same seed")
    spec = describe_space(hqlt.envs.make(env_id, **SMALL_KWARGS.get(env_id, {})).observation_space)
    assert spec.kind in hqlt.envs.KINDS
    assert first["obs"].shape[2:] == spec.shape


def test_different_seeds_give_different_episodes():
    a, b = _rollout("popgym-RepeatFirstEasy-v0", seed=1), _rollout("popgym-RepeatFirstEasy-v0", seed=2)
    assert not np.array_equal(a["obs"], b["obs"])


@pytest.mark.parametrize("asynchronous", [False, True])
def test_same_step_autoreset_final_obs_and_episode_stats(asynchronous):
    """Truncated episodes expose their last obs; stats add up across autoresets; resets = done[t-1]."""
    venv = hqlt.envs.make_vector("CartPole-v1", 2, seed=0, asynchronous=asynchronous, max_episode_steps=7)
    obs, _ = venv.reset()
    returns, lengths, ends = np.zeros(2), np.zeros(2, dtype=int), 0
    for t in range(30):
        # pushing left then right keeps the pole up for 7 steps: every episode is truncated
        actions = np.full(2, t % 2)
        obs, reward, terminated, truncated, info = venv.step(actions)
        returns += reward
        lengths += 1
        done = terminated | truncated
        assert np.array_equal(info.get("_final_obs", np.zeros(2, bool)), done)
        assert np.array_equal(info.get("_episode", np.zeros(2, bool)), done)
        for i in np.flatnonzero(done):
            assert truncated[i] and not terminated[i]
            assert info["final_obs"][i].shape == (4,) and not np.array_equal(info["final_obs"][i], obs[i])
            assert info["episode"]["r"][i] == returns[i] and info["episode"]["l"][i] == lengths[i] == 7
            assert np.isnan(info["episode"]["success"][i])
            returns[i], lengths[i] = 0.0, 0
            ends += 1
    assert ends == 2 * (30 // 7)
    venv.close()


def test_resets_follow_terminations_without_dummy_steps():
    """resets[t] = done[t-1] marks exactly the first obs of each episode (the passive T-Maze cue)."""
    venv = hqlt.envs.make_vector("hqlt/TMazePassive-v0", 3, seed=0, corridor_length=2)
    obs, _ = venv.reset()
    resets = np.ones(3, dtype=bool)
    for _ in range(60):
        np.testing.assert_array_equal(obs[:, :2].sum(axis=1) == 1, resets)
        obs, _, terminated, truncated, info = venv.step(venv.action_space.sample())
        resets = terminated | truncated
        if resets.any():
            np.testing.assert_array_equal(info["_final_obs"], resets)
    venv.close()


def test_episode_success_for_envs_that_define_it():
    venv = hqlt.envs.make_vector("MiniGrid-MemoryS7-v0", 2, seed=0, max_episode_steps=5)
    venv.reset()
    for _ in range(5):
        _, _, terminated, truncated, info = venv.step(np.array([0, 1]))  # turning in place never succeeds
    assert info["_episode"].all() and (info["episode"]["success"] == 0.0).all()
    venv.close()


def test_cleanrl_style_loop_reads_gymnasiums_episode_keys():
    """CleanRL logs info["episode"]["r"/"l"/"t"] of the envs marked in info["_episode"]: make_vector
    reports them as gymnasium's vector RecordEpisodeStatistics does, plus "success"."""
    venv = hqlt.envs.make_vector("hqlt/TMazePassive-v0", 3, seed=0, corridor_length=2)
    venv.reset()
    returns, lengths, episodes = np.zeros(3), np.zeros(3, dtype=int), 0
    for _ in range(20):
        _, reward, terminated, truncated, infos = venv.step(venv.action_space.sample())
        returns += reward
        lengths += 1
        if "episode" in infos:
            stats = infos["episode"]
            assert set(stats) == {"r", "l", "t", "success"}
            dtypes = [stats[key].dtype for key in ("r", "l", "t", "success")]
            assert dtypes == [np.float64, np.int64, np.float64, np.float64]  # as gymnasium's wrapper
            for i in np.flatnonzero(infos["_episode"]):
                assert stats["r"][i] == pytest.approx(returns[i]) and stats["l"][i] == lengths[i]
                assert stats["t"][i] > 0.0 and stats["success"][i] in (0.0, 1.0)
                episodes += 1
        done = terminated | truncated
        returns[done], lengths[done] = 0.0, 0
    assert episodes >= 3 * (20 // 3)  # the horizon is 3 steps
    venv.close()


def test_gymnasiums_record_episode_statistics_wraps_an_hqlt_env():
    """CleanRL's make_env: gym.wrappers.RecordEpisodeStatistics(env) around hqlt.envs.make, alone and in
    a NEXT_STEP (gymnasium's default) vector env; the success is in info["success"] at episode end."""
    env = gym.wrappers.RecordEpisodeStatistics(hqlt.envs.make("hqlt/TMazePassive-v0", corridor_length=2))
    env.reset(seed=0)
    for action in (RIGHT, RIGHT, UP):  # on schedule to the junction, then up: no penalty
        _, reward, terminated, _, info = env.step(action)
    assert terminated and info["success"] in (0.0, 1.0)
    assert info["episode"]["r"] == reward == info["success"] and info["episode"]["l"] == 3
    cartpole = gym.wrappers.RecordEpisodeStatistics(hqlt.envs.make("CartPole-v1", max_episode_steps=2))
    cartpole.reset(seed=0)
    cartpole.step(0)
    *_, truncated, info = cartpole.step(1)
    assert truncated and info["episode"]["l"] == 2 and np.isnan(info["success"])  # CartPole defines no success
    venv = gym.vector.SyncVectorEnv(
        [lambda: gym.wrappers.RecordEpisodeStatistics(hqlt.envs.make("hqlt/TMazePassive-v0", corridor_length=2))] * 2
    )
    venv.reset(seed=0)
    for _ in range(3):
        *_, infos = venv.step(np.full(2, RIGHT))
    assert infos["_episode"].all() and (infos["episode"]["l"] == 3).all()
    np.testing.assert_allclose(infos["episode"]["r"], -0.5)  # a step behind schedule at the end: penalty 1/2
    venv.close()


@pytest.mark.parametrize("vectorization", ["gymnasium", "batched"])
def test_episode_statistics_have_gymnasiums_keys_in_both_vectorizations(vectorization):
    """Batched envs report the same keys as tensors: "t" is nan there (seconds would need the host clock)."""
    envs = hqlt.envs.make_envs("hqlt/TMazePassive-v0", 2, 0, vectorization=vectorization, corridor_length=2)
    envs.reset(seed=0)
    actions = np.full(2, RIGHT) if vectorization == "gymnasium" else torch.full((2,), RIGHT)
    for _ in range(3):
        *_, info = envs.step(actions)
    stats = info["episode"]
    assert set(stats) == {"r", "l", "t", "success"} and info["_episode"].all()
    assert stats["r"].tolist() == [-0.5, -0.5] and stats["l"].tolist() == [3, 3]  # a step behind at the end
    assert stats["success"].tolist() == [0.0, 0.0]
    if vectorization == "batched":
        dtypes = [torch.float32, torch.int64, torch.float32, torch.float32]
        assert [stats[key].dtype for key in ("r", "l", "t", "success")] == dtypes
        assert stats["t"].isnan().all()
    else:
        assert (stats["t"] > 0.0).all()
    envs.close()


def test_describe_space_kinds():
    assert describe_space(spaces.Discrete(5)) == hqlt.envs.SpaceSpec("discrete", (1,), nvec=(5,))
    spec = describe_space(spaces.MultiDiscrete([3, 4]))
    assert (spec.kind, spec.shape, spec.nvec) == ("discrete", (2,), (3, 4))
    spec = describe_space(spaces.Tuple((spaces.Discrete(2), spaces.Discrete(4))))
    assert (spec.kind, spec.nvec) == ("discrete", (2, 4))
    spec = describe_space(spaces.Box(-1.0, 2.0, shape=(3,)))
    assert spec.kind == "box" and spec.shape == (3,) and (spec.low == -1).all() and (spec.high == 2).all()
    spec = describe_space(spaces.Box(0, 255, shape=(5, 5, 3), dtype=np.uint8))
    assert (spec.kind, spec.shape) == ("image", (5, 5, 3))
    spec = describe_space(hqlt.envs.make("MiniGrid-MemoryS7-v0").observation_space)
    assert (spec.kind, spec.shape, spec.nvec) == ("grid", (7, 7, 3), (11, 6, 3))
    with pytest.raises(ValueError, match="cannot describe"):
        describe_space(spaces.Tuple((spaces.Box(0, 1, (2,)), spaces.Discrete(3))))


def test_make_flattens_tuple_observations():
    env = hqlt.envs.make("popgym-AutoencodeEasy-v0")
    assert env.observation_space == spaces.MultiDiscrete([2, 4])
    obs, _ = env.reset(seed=0)
    assert obs.shape == (2,) and env.observation_space.contains(obs)


def test_popgym_previous_action_convention():
    env = hqlt.envs.make("popgym-RepeatPreviousEasy-v0", previous_action=True)
    assert describe_space(env.observation_space).nvec == (4, 4)  # (card, previous action)
    obs, _ = env.reset(seed=0)
    assert obs[1] == 0  # null action after reset
    obs, *_ = env.step(3)
    assert obs[1] == 3
    env = hqlt.envs.make("popgym-PositionOnlyCartPoleEasy-v0", previous_action=True)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.shape == (4,) and obs[2:].tolist() == [1.0, 0.0]  # one-hot null action
    obs, *_ = env.step(1)
    assert obs[2:].tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="previous_action appends to vector observations"):
        hqlt.envs.make("MiniGrid-MemoryS7-v0", previous_action=True)


@pytest.mark.parametrize("option", ["previous_action", "previous_action_reward"])
def test_previous_action_options_on_every_vector_env(option):
    """Both previous-action inputs work on every env with vector observations, spaces stay honest."""
    for env_id in hqlt.envs.ENV_IDS:
        kind = describe_space(hqlt.envs.make(env_id, **SMALL_KWARGS.get(env_id, {})).observation_space).kind
        if kind not in ("discrete", "box"):
            continue
        env = hqlt.envs.make(env_id, **{option: True})
        assert describe_space(env.observation_space).kind in ("discrete", "box")
        obs, _ = env.reset(seed=0)
        env.action_space.seed(0)
        for _ in range(5):
            assert env.observation_space.contains(obs), (env_id, obs)
            obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                obs, _ = env.reset()


def test_mask_observation_keeps_indices():
    full = gym.make("CartPole-v1")
    masked = hqlt.envs.make("hqlt/CartPolePositionOnly-v0")
    obs_full, _ = full.reset(seed=4)
    obs_masked, _ = masked.reset(seed=4)
    np.testing.assert_array_equal(obs_masked, obs_full[[0, 2]])
    np.testing.assert_array_equal(masked.observation_space.high, full.observation_space.high[[0, 2]])
    obs_full, *_ = full.step(1)
    obs_masked, *_ = masked.step(1)
    np.testing.assert_array_equal(obs_masked, obs_full[[0, 2]])
    pendulum = hqlt.envs.make("hqlt/PendulumPositionOnly-v0")
    assert pendulum.observation_space.shape == (2,)
    with pytest.raises(ValueError, match="indices must be"):
        hqlt.envs.MaskObservation(gym.make("CartPole-v1"), [0, 4])


def test_flicker_rate_and_blank_observations():
    env = hqlt.envs.make("CartPole-v1", flicker=0.3)
    env.reset(seed=0)
    blanks, steps = 0, 4000
    for _ in range(steps):
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        blanks += not obs.any()
        assert env.observation_space.contains(obs)
        if terminated or truncated:
            env.reset()
    assert abs(blanks / steps - 0.3) < 0.03


def test_observation_noise_statistics():
    base = hqlt.envs.make("hqlt/TMazePassive-v0", corridor_length=3)
    noisy = hqlt.envs.make("hqlt/TMazePassive-v0", corridor_length=3, observation_noise=0.5)
    noise = []
    for seed in range(500):
        noise.append(noisy.reset(seed=seed)[0] - base.reset(seed=seed)[0])
    noise = np.concatenate(noise)
    assert abs(noise.mean()) < 0.05 and abs(noise.std() - 0.5) < 0.05


def test_previous_action_reward_values():
    env = hqlt.envs.make("hqlt/TMazePassive-v0", corridor_length=3, previous_action_reward=True)
    assert env.observation_space.shape == (3 + 4 + 1,)
    obs, _ = env.reset(seed=0)
    assert obs[3:].tolist() == [0.0] * 5
    obs, reward, *_ = env.step(2)  # left into the wall: penalty
    assert obs[3:7].tolist() == [0, 0, 1, 0] and obs[7] == pytest.approx(reward) and reward < 0
    obs, reward, *_ = env.step(0)
    assert obs[3:7].tolist() == [1, 0, 0, 0] and obs[7] == pytest.approx(reward)
    env = hqlt.envs.make("popgym-BattleshipEasy-v0", previous_action_reward=True)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.shape == (2 + 8 + 8 + 1,) and obs[:2].sum() == 1  # one-hot obs
    obs, reward, *_ = env.step(np.array([2, 5]))
    assert obs[2:18].tolist() == np.eye(8)[2].tolist() + np.eye(8)[5].tolist() and obs[18] == reward
    pendulum = hqlt.envs.make("Pendulum-v1", previous_action_reward=True)
    pendulum.reset(seed=0)
    obs, reward, *_ = pendulum.step(np.array([1.5], dtype=np.float32))
    assert obs[3] == pytest.approx(1.5) and obs[4] == pytest.approx(reward)


def test_unknown_env_id_lists_families():
    with pytest.raises(ValueError, match=r"unknown env id 'hqlt/TMazePasive-v0'.*Did you mean.*TMazePassive") as err:
        hqlt.envs.make("hqlt/TMazePasive-v0")
    for family in hqlt.envs.FAMILIES:
        assert family.name in str(err.value) and family.ids[0] in str(err.value)
    with pytest.raises(ValueError, match="unknown env id"):
        hqlt.envs.make_vector("NoSuchEnv-v0", 2, seed=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"flicker": 1.5}, r"Flicker p is a probability and must be in \[0, 1\]"),
        ({"flicker": -0.1}, r"must be in \[0, 1\]"),
        ({"observation_noise": -1.0}, "sigma must be >= 0"),
        ({"max_episode_steps": 0}, "max_episode_steps must be an integer >= 1"),
        ({"corridor_length": -1}, "corridor_length must be an integer >= 1"),
        ({"penalty": -0.1}, "penalty is a cost and must be >= 0"),
        ({"corridor_lenght": 5}, r"does not take parameter\(s\) \['corridor_lenght'\]; its parameters are"),
    ],
)
def test_invalid_parameters_fail_clearly(kwargs, message):
    with pytest.raises(ValueError, match=message):
        hqlt.envs.make("hqlt/TMazePassive-v0", **kwargs)


def test_wrappers_reject_observations_they_cannot_handle():
    with pytest.raises(ValueError, match="Flicker needs a Box observation space"):
        hqlt.envs.make("popgym-RepeatFirstEasy-v0", flicker=0.1)
    with pytest.raises(ValueError, match="PreviousActionReward appends to vector observations"):
        hqlt.envs.make("hqlt/PassiveVisualMatch-v0", previous_action_reward=True)


def test_make_vector_rejects_bad_num_envs():
    with pytest.raises(ValueError, match="num_envs must be an integer >= 1"):
        hqlt.envs.make_vector("CartPole-v1", 0, seed=0)


def test_minigrid_and_pygame_are_imported_only_for_minigrid_ids():
    """Runs without MiniGrid need no pygame (the GPU machine's wheels leave it out unless carried)."""
    code = (
        "import sys, hqlt.agents, hqlt.envs\n"
        "hqlt.envs.make('hqlt/TMazePassive-v0')\n"
        "assert 'minigrid' not in sys.modules and 'pygame' not in sys.modules\n"
        "hqlt.envs.make('MiniGrid-MemoryS7-v0')\n"
        "assert 'minigrid' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
