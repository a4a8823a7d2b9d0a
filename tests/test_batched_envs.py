"""make_batched and the BatchedEnv base: errors, reproducible randomness, time limits, spaces."""

import numpy as np
import pytest
import torch
from scipy import stats

from batched_reference import run_against_reference
from hqlt.envs import BATCHED_IDS, make, make_batched, make_envs
from hqlt.envs.batched import hash_bits, to_normal, to_uniform

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def test_an_id_without_port_names_the_ids_with_one():
    with pytest.raises(ValueError, match="has no batched port") as error:
        make_batched("MiniGrid-MemoryS7-v0", 4)
    assert all(env_id in str(error.value) for env_id in BATCHED_IDS)


def test_bad_parameters_fail_as_make_does():
    with pytest.raises(ValueError) as ours:
        make_batched("hqlt/TMazePassive-v0", 4, corridor_lenght=5)
    with pytest.raises(ValueError) as theirs:
        make("hqlt/TMazePassive-v0", corridor_lenght=5)
    assert str(ours.value) == str(theirs.value)
    with pytest.raises(ValueError, match="corridor_length must be an integer >= 1"):
        make_batched("hqlt/TMazePassive-v0", 4, corridor_length=0)
    with pytest.raises(ValueError, match="num_envs must be an integer >= 1"):
        make_batched("hqlt/TMazePassive-v0", 0)
    with pytest.raises(ValueError, match="wrapper option"):
        make_batched("hqlt/TMazePassive-v0", 4, flicker=0.5)


def test_actions_of_the_wrong_shape_dtype_or_device_are_refused():
    env = make_batched("hqlt/TMazePassive-v0", 4)
    env.reset()
    with pytest.raises(ValueError, match=r"shape \[4\]"):
        env.step(torch.zeros(4, 1, dtype=torch.int64))
    with pytest.raises(TypeError, match="integer dtype"):
        env.step(torch.zeros(4))
    with pytest.raises(TypeError, match="torch tensor"):
        env.step(np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError, match=r"actions in range\(0, 4\), got \[4, 7\]"):
        env.step(torch.tensor([0, 4, 7, 1]))


def test_make_envs_picks_the_batched_port_where_one_exists():
    assert type(make_envs("hqlt/TMazePassive-v0", 2, 0)).__name__ == "BatchedTMaze"
    assert type(make_envs("hqlt/TMazePassive-v0", 2, 0, vectorization="gymnasium")).__name__ == "LiftEpisodeStats"
    assert type(make_envs("hqlt/TMazePassive-v0", 2, 0, asynchronous=True)).__name__ == "LiftEpisodeStats"
    assert type(make_envs("CartPole-v1", 2, 0)).__name__ == "LiftEpisodeStats"
    with pytest.raises(ValueError, match="has no batched port"):
        make_envs("CartPole-v1", 2, 0, vectorization="batched")
    with pytest.raises(ValueError, match="valid choices: auto, batched, gymnasium"):
        make_envs("CartPole-v1", 2, 0, vectorization="numpy")


def test_a_time_limit_truncates_as_make_vector_does():
    """Active T-Maze 3: the earliest turn is at step 4, the task's horizon at 6, the limit at 5."""
    run_against_reference(
        "hqlt/TMazeActive-v0", lambda env: {"goal_up": env._goal_up},
        lambda rng, n: np.where(rng.random(n) < 0.6, 0, rng.integers(0, 4, n)),
        steps=300, min_episodes=50, corridor_length=3, max_episode_steps=5,
    )


@pytest.mark.parametrize("device", DEVICES)
def test_episodes_repeat_for_a_seed_and_differ_between_seeds(device):
    def first_obs(seed, reset_seed=None):
        env = make_batched("hqlt/TMazePassive-v0", 256, device=device, seed=seed, corridor_length=1)
        env.reset(seed=reset_seed)
        cues = []
        for _ in range(5):  # right then up ends every episode: each obs is a new episode's cue
            env.step(torch.zeros(256, dtype=torch.int64, device=device))
            obs, *_ = env.step(torch.ones(256, dtype=torch.int64, device=device))
            cues.append(obs[:, 0].cpu())
        return torch.stack(cues)

    assert torch.equal(first_obs(3), first_obs(3))
    assert torch.equal(first_obs(3), first_obs(5, reset_seed=3))
    assert not torch.equal(first_obs(3), first_obs(4))


def test_hashed_randomness_is_uniform_and_normal():
    keys = torch.arange(200_000)
    bits = hash_bits(7, keys, 3)
    assert int(bits.min()) >= 0 and int(bits.max()) < 2**32
    assert stats.kstest(to_uniform(bits).numpy(), "uniform").pvalue > 1e-3
    assert stats.chisquare(np.bincount((bits % 10).numpy(), minlength=10)).pvalue > 1e-3
    # neighbouring keys are independent: no correlation between consecutive draws
    uniform = to_uniform(bits).numpy()
    assert abs(np.corrcoef(uniform[:-1], uniform[1:])[0, 1]) < 0.01
    normal = to_normal(hash_bits(7, keys, 1), hash_bits(7, keys, 2)).numpy()
    assert stats.kstest(normal, "norm").pvalue > 1e-3


@pytest.mark.parametrize("env_id", BATCHED_IDS)
def test_spaces_are_those_of_make_and_steps_are_fixed_shape(env_id):
    reference = make(env_id)
    env = make_batched(env_id, 3)
    assert env.single_observation_space == reference.observation_space
    assert env.single_action_space == reference.action_space
    obs, _ = env.reset()
    assert obs.shape == (3, *reference.observation_space.shape)
    assert env.observation_space.contains(obs.numpy())
    for _ in range(3):
        actions = torch.as_tensor(np.stack([env.single_action_space.sample() for _ in range(3)]))
        obs, reward, terminated, truncated, info = env.step(actions)
        assert env.observation_space.contains(obs.numpy())
        assert reward.dtype == torch.float32 and terminated.dtype == truncated.dtype == torch.bool
        assert info["final_obs"].shape == obs.shape and info["_episode"].shape == (3,)


def test_snapshot_and_restore_put_the_episodes_back():
    env = make_batched("hqlt/TMazeActive-v0", 8, corridor_length=3)
    env.reset()
    actions = torch.tensor([0, 1, 2, 3, 0, 0, 2, 0])
    env.step(actions)
    saved = env.snapshot()
    after = [env.step(actions)[0] for _ in range(4)]
    env.restore(saved)
    again = [env.step(actions)[0] for _ in range(4)]
    assert all(torch.equal(a, b) for a, b in zip(after, again))
