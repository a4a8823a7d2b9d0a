"""GAE against hand-computed values, and the PPO update's bookkeeping."""

import pytest
import torch

from hqlt.agents import compute_gae
from hqlt.agents.ppo import explained_variance
from hqlt.agents.rollout import Rollout


def make_rollout(rewards, values, terminated, truncated, final_values, next_value) -> Rollout:
    row = lambda values, dtype=torch.float32: torch.tensor([values], dtype=dtype)  # noqa: E731
    steps = len(rewards)
    zeros = torch.zeros(1, steps)
    return Rollout(
        obs=zeros,
        prev_actions=zeros.long(),
        prev_rewards=zeros,
        resets=torch.zeros(1, steps, dtype=torch.bool),
        actions=zeros.long(),
        log_probs=zeros,
        values=row(values),
        rewards=row(rewards),
        terminated=row(terminated, torch.bool),
        truncated=row(truncated, torch.bool),
        final_values=row(final_values),
        next_values=torch.tensor([next_value]),
        states={},
    )


def test_gae_matches_hand_computation_with_terminated_and_truncated_episodes():
    # Episode A ends terminated at t=1, episode B truncated at t=3 (final obs valued 10),
    # episode C runs past the rollout end (bootstraps from next_value 7).
    rollout = make_rollout(
        rewards=[1.0, 2.0, 3.0, 4.0, 5.0],
        values=[0.5, 1.0, 1.5, 2.0, 2.5],
        terminated=[False, True, False, False, False],
        truncated=[False, False, False, True, False],
        final_values=[0.0, 0.0, 0.0, 10.0, 0.0],
        next_value=7.0,
    )
    gamma, lam = 0.9, 0.8
    # deltas: r + gamma * V(next) - V, with V(next) = 0 after termination and the final value after truncation
    d0 = 1.0 + gamma * 1.0 - 0.5
    d1 = 2.0 + 0.0 - 1.0
    d2 = 3.0 + gamma * 2.0 - 1.5
    d3 = 4.0 + gamma * 10.0 - 2.0
    d4 = 5.0 + gamma * 7.0 - 2.5
    a4 = d4
    a3 = d3  # the truncated episode ends here: nothing flows back from episode C
    a2 = d2 + gamma * lam * a3
    a1 = d1
    a0 = d0 + gamma * lam * a1
    expected = torch.tensor([[a0, a1, a2, a3, a4]])

    advantages, returns = compute_gae(rollout, gamma, lam)
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(returns, expected + rollout.values)
    assert advantages[0, 3].item() == pytest.approx(11.0)
    assert advantages[0, 2].item() == pytest.approx(3.3 + 0.72 * 11.0)


def test_gae_terminated_and_truncated_together_does_not_bootstrap():
    rollout = make_rollout([1.0], [0.5], [True], [True], [100.0], next_value=50.0)
    advantages, _ = compute_gae(rollout, 0.99, 0.95)
    assert advantages.item() == pytest.approx(0.5)


def test_gae_lambda_one_gives_discounted_returns():
    rollout = make_rollout([1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [False] * 3, [False] * 3, [0.0] * 3, next_value=2.0)
    _, returns = compute_gae(rollout, 0.5, 1.0)
    torch.testing.assert_close(returns, torch.tensor([[1 + 0.5 + 0.25 + 0.125 * 2, 1 + 0.5 + 0.25 * 2, 1 + 0.5 * 2]]))


def test_explained_variance():
    target = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert explained_variance(target, target) == pytest.approx(1.0)
    assert explained_variance(torch.zeros(4), target) == pytest.approx(0.0)
    assert explained_variance(target + 1.0, target) == pytest.approx(1.0)
    assert explained_variance(target.flip(0), target) == pytest.approx(1 - (target.flip(0) - target).var().item() / target.var().item())
