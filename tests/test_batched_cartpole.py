"""Batched POPGym (Noisy)PositionOnlyCartPole against popgym's envs: same episodes, same everything.

Observations, rewards and flags match exactly on the CPU (atol 0). The float64 physics could part
from the reference only through torch's sin/cos, which differ from glibc's in the last bit for ~0.04%
of angles below 0.05 (~0.3% up to 0.3): none of these CPU runs meets one, and in 64 carts balanced for
600 steps the first came at step 594 and moved no observation. CUDA's sin/cos part more often: there
the float32 observations agree to ATOL (one balanced run of 200 steps differed by 1.2e-10).
"""

import copy

import numpy as np
import pytest
import torch
from gymnasium.envs.classic_control import CartPoleEnv
from popgym.envs.noisy_position_only_cartpole import NoisyPositionOnlyCartPole
from scipy import stats

import batched_reference
from batched_reference import reference_envs, run_against_reference
from hqlt.envs import make_batched, make_vector
from hqlt.envs.batched.cartpole import RESET_BOUND, BatchedNoisyPositionOnlyCartPole

LEVELS = ("Easy", "Medium", "Hard")
PLAIN = [f"popgym-PositionOnlyCartPole{level}-v0" for level in LEVELS]
NOISY = [f"popgym-NoisyPositionOnlyCartPole{level}-v0" for level in LEVELS]
EASY = PLAIN[0]
CARTPOLE = CartPoleEnv()  # for its termination thresholds
ATOL = 0.0 if batched_reference.DEVICE == "cpu" else 1e-6


def initial_state(env) -> dict:
    """Right after reset: CartPoleEnv's uniform draw."""
    return {"state": env.state}


def random_actions(rng, num_envs):
    return rng.integers(0, 2, num_envs)


def push_right(rng, num_envs):
    return np.ones(num_envs, dtype=np.int64)


class ReferenceTap:
    """Opens the two envs that run_against_reference builds to the test (it patches the harness's
    make_vector and make_batched): the noisy port gets the noise the reference envs drew, actions can
    depend on the reference states, and the ends of the port's episodes are kept (`ends`).

    popgym's add_noise_to_obs is wrapped to keep each draw (replayed on a copy of the env's generator)
    by the observation's index in its episode, num_steps, which is the port's `index`.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.singles: list = []
        self.ends: dict[str, int] = {"angle": 0, "position": 0, "time limit": 0}
        add_noise = NoisyPositionOnlyCartPole.add_noise_to_obs

        def add_noise_kept(env, obs):
            noise = copy.deepcopy(env.np_random).normal(0, env.noise_sigma).astype(np.float32)
            vars(env).setdefault("noise_of_obs", {})[env.num_steps] = noise
            return add_noise(env, obs)

        monkeypatch.setattr(NoisyPositionOnlyCartPole, "add_noise_to_obs", add_noise_kept)
        monkeypatch.setattr(batched_reference, "make_vector", self.make_vector)
        monkeypatch.setattr(batched_reference, "make_batched", self.make_batched)

    def make_vector(self, *args, **kwargs):
        vector = make_vector(*args, **kwargs)
        self.singles = reference_envs(vector)
        return vector

    def make_batched(self, *args, **kwargs):
        env = make_batched(*args, **kwargs)
        if isinstance(env, BatchedNoisyPositionOnlyCartPole):
            env.noise_source = self.reference_noise
        step = env.step

        def step_and_count_ends(actions):
            outcome = step(actions)
            self._count_ends(*outcome[2:])
            return outcome

        env.step = step_and_count_ends
        return env

    def reference_noise(self, env, index: torch.Tensor) -> torch.Tensor:
        noise = [single.noise_of_obs[i] for single, i in zip(self.singles, index.tolist())]
        return torch.as_tensor(np.stack(noise), device=env.device)

    def _count_ends(self, terminated, truncated, info) -> None:
        """Why episodes ended, told from the final observations (which noise blurs in the noisy ids)."""
        x, theta = info["final_obs"].T
        self.ends["time limit"] += int(truncated.sum())
        self.ends["position"] += int((terminated & (x.abs() > CARTPOLE.x_threshold)).sum())
        self.ends["angle"] += int((terminated & (theta.abs() > CARTPOLE.theta_threshold_radians)).sum())

    def controller(self, targets: np.ndarray):
        """sample_actions that balance each reference env's pole while driving its cart to x = targets[i]
        (0: balances to any time limit; beyond a wall: hits it within ~130 steps)."""

        def actions(rng, num_envs):
            states = np.stack([single.state for single in self.singles])
            x, x_dot, theta, theta_dot = states.T
            return (0.1 * (x - targets) + 0.3 * x_dot + 3 * theta + theta_dot > 0).astype(np.int64)

        return actions


@pytest.fixture
def tap(monkeypatch):
    return ReferenceTap(monkeypatch)


@pytest.mark.parametrize("env_id", PLAIN + NOISY)
def test_batched_cartpole_matches_reference_under_random_actions(tap, env_id):
    """The pole falls within ~10-60 steps: many episodes, all ended by the angle."""
    run_against_reference(env_id, initial_state, random_actions, steps=200, min_episodes=30, atol=ATOL)
    if env_id in PLAIN:
        assert tap.ends["angle"] >= 30


@pytest.mark.parametrize(
    "env_id, kwargs, limit",
    [
        (EASY, {}, 200),
        (NOISY[2], {}, 200),  # popgym's noisy levels keep the default max_episode_length
        (PLAIN[1], dict(max_episode_steps=150), 150),  # gymnasium's TimeLimit ends them first
        (EASY, dict(max_episode_length=150, max_episode_steps=180), 150),  # popgym's own limit does
    ],
)
def test_batched_cartpole_matches_reference_when_balanced(tap, env_id, kwargs, limit):
    """Three carts balance to the time limit, three run into a wall (x = -5 or +5): truncations and
    terminations by position."""
    drive = tap.controller(np.array([0.0, 0.0, 0.0, -5.0, 5.0, -5.0]))
    run_against_reference(env_id, initial_state, drive, steps=limit + 40, min_episodes=6, atol=ATOL, **kwargs)
    assert tap.ends["time limit"] >= 3
    assert tap.ends["position"] >= 3 or env_id in NOISY


@pytest.mark.parametrize("kwargs", [dict(max_episode_length=8), dict(max_episode_steps=8)])
def test_batched_cartpole_reports_a_time_limit_on_the_terminating_step_as_both(tap, kwargs):
    """popgym (num_steps >= max_episode_length) and gymnasium's TimeLimit truncate whether or not the
    step terminated: pushing right from seed 0's first state drops the pole on step 8, the limit."""
    run_against_reference(EASY, initial_state, push_right, num_envs=1, steps=8, atol=ATOL, **kwargs)
    assert tap.ends == {"angle": 1, "position": 0, "time limit": 1}


@pytest.mark.parametrize("env_id, limit", [(PLAIN[1], 400), (PLAIN[2], 600)])
def test_batched_cartpole_time_limit_is_the_shorter_of_popgyms_and_max_episode_steps(env_id, limit):
    assert make_batched(env_id, 1).max_episode_steps == limit
    assert make_batched(env_id, 1, max_episode_steps=limit + 1).max_episode_steps == limit
    assert make_batched(env_id, 1, max_episode_steps=limit - 1).max_episode_steps == limit - 1


def test_batched_cartpole_initial_states_are_uniform():
    env = make_batched(EASY, 20000, seed=1)
    env.reset()
    states = env.state.numpy()
    assert (states >= -RESET_BOUND).all() and (states < RESET_BOUND).all()
    for component in states.T:
        assert stats.kstest(component, stats.uniform(-RESET_BOUND, 2 * RESET_BOUND).cdf).pvalue > 1e-3


@pytest.mark.parametrize("env_id", NOISY)
def test_batched_cartpole_noise_is_normal_with_the_references_std(env_id):
    """The noise on observations 0 (reset), 1 and 2 of 2000 episodes: N(0, noise_sigma) per
    component, fresh for every observation (consecutive ones uncorrelated)."""
    env = make_batched(env_id, 2000, seed=2)
    env.reset()
    noise = [env.noise.clone()]
    for _ in range(2):
        env.step(torch.zeros(env.num_envs, dtype=torch.int64))
        noise.append(env.noise.clone())
    noise = torch.stack(noise).numpy()  # [observation, env, component]
    for component, std in enumerate(env.task.noise_sigma):
        assert stats.kstest(noise[..., component].ravel(), stats.norm(0, std).cdf).pvalue > 1e-3
        assert stats.pearsonr(noise[0, :, component], noise[1, :, component]).pvalue > 1e-3
        assert stats.pearsonr(noise[1, :, component], noise[2, :, component]).pvalue > 1e-3
