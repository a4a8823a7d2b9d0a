"""GAE against hand-computed values, PopArt, and the PPO update's bookkeeping and reward-scale invariance."""

import copy
import math

import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch import nn

from hqlt.agents import Policy, compute_gae
from hqlt.agents.popart import PopArt
from hqlt.agents.ppo import explained_variance, ppo_update
from hqlt.agents.rollout import Rollout
from hqlt.configs.schema import PPOConfig
from hqlt.memory import build_core


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


def test_popart_takes_the_first_targets_moments_then_keeps_outputs():
    torch.manual_seed(0)
    layer = PopArt(6)
    h = torch.randn(10, 6)
    normalised = nn.functional.linear(h, layer.weight, layer.bias)
    targets = 100.0 * torch.rand(32) + 50.0
    layer.update(targets)
    torch.testing.assert_close(layer.mean, targets.mean())
    torch.testing.assert_close(layer.std, targets.std(unbiased=False), rtol=1e-4, atol=0)
    torch.testing.assert_close(layer(h), normalised * layer.std + layer.mean)  # the layer itself is left as it is
    before = layer(h)
    layer.update(targets + 10.0)
    torch.testing.assert_close(layer(h), before, rtol=1e-5, atol=1e-4)
    assert targets.mean() < layer.mean < targets.mean() + 10.0


def test_popart_with_a_mask_takes_only_the_masked_targets_and_an_empty_mask_changes_nothing():
    """What DQN passes (targets whose window was not truncated), without reading the mask on the host."""
    layer, plain = PopArt(3), PopArt(3)
    plain.load_state_dict(layer.state_dict())
    targets = torch.tensor([1.0, 5.0, 1000.0, 3.0])
    mask = torch.tensor([True, True, False, True])
    assert layer.update(targets, mask) == 1.0  # the first update keeps the layer
    plain.update(targets[mask])
    torch.testing.assert_close(layer.state_dict(), plain.state_dict())
    before = {name: value.clone() for name, value in layer.state_dict().items()}
    scale = layer.update(targets, torch.zeros_like(mask))
    assert scale == 1.0
    torch.testing.assert_close(layer.state_dict(), before, rtol=0, atol=0)
    scale = layer.update(10 * targets[mask])
    torch.testing.assert_close(scale, before["moments.mean_square"].sub(before["moments.mean"] ** 2).sqrt() / layer.std)


def acted_rollout(policy: Policy, num_envs: int = 4, steps: int = 8) -> Rollout:
    """A rollout whose log-probs and values are the policy's own, with random rewards and episode ends."""
    generator = torch.Generator().manual_seed(1)
    obs = torch.rand(num_envs, steps, 5, generator=generator)
    actions = torch.randint(3, (num_envs, steps, 1), generator=generator)
    prev_actions = torch.cat([torch.zeros_like(actions[:, :1]), actions[:, :-1]], dim=1)
    terminated = torch.rand(num_envs, steps, generator=generator) < 0.2
    resets = torch.cat([torch.ones(num_envs, 1, dtype=torch.bool), terminated[:, :-1]], dim=1)
    rewards = torch.rand(num_envs, steps, generator=generator)
    prev_rewards = torch.cat([torch.zeros(num_envs, 1), rewards[:, :-1]], dim=1)
    state = policy.initial_state(num_envs)
    with torch.no_grad():
        dist, values, _ = policy(obs, prev_actions, prev_rewards, state, resets)
    return Rollout(
        obs=obs, prev_actions=prev_actions, prev_rewards=prev_rewards, resets=resets, actions=actions,
        log_probs=dist.log_prob(actions), values=values, rewards=rewards, terminated=terminated,
        truncated=torch.zeros_like(terminated), final_values=torch.zeros(num_envs, steps),
        next_values=values[:, -1], states={name: value[:, None] for name, value in state.items()},
    )


def test_ppo_update_is_invariant_to_the_reward_scale():
    # Rewards (also the reward input) and value and reward statistics x100: the same normalised
    # advantages, value loss and inputs, so the same parameters after the update.
    torch.manual_seed(0)
    obs_space = spaces.Box(0.0, 1.0, shape=(5,), dtype=np.float32)
    policy = Policy(obs_space, spaces.Discrete(3), build_core("gru", input_dim=8, hidden_dim=8), head_dim=8)
    policy.value_layer.update(torch.tensor([0.5, 1.5]))
    policy.update_reward_scale(torch.tensor([0.2, -0.7]))
    scaled_policy = copy.deepcopy(policy)
    for moments in (scaled_policy.value_layer.moments, scaled_policy.reward_scale):
        moments.mean.mul_(100.0)
        moments.mean_square.mul_(100.0**2)
    rollout = acted_rollout(policy)
    scaled = copy.deepcopy(rollout)
    for name in ("rewards", "prev_rewards", "values", "final_values", "next_values"):
        setattr(scaled, name, getattr(rollout, name) * 100.0)
    cfg = PPOConfig(num_envs=4, rollout_length=8, num_minibatches=2, update_epochs=2)
    for net, data in ((policy, rollout), (scaled_policy, scaled)):
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, eps=1e-5)
        ppo_update(net, optimizer, data, cfg, torch.Generator().manual_seed(0))
    for (name, param), scaled_param in zip(policy.named_parameters(), scaled_policy.parameters()):
        torch.testing.assert_close(scaled_param, param, rtol=1e-4, atol=1e-5, msg=name)
    torch.testing.assert_close(scaled_policy.value_layer.mean, 100.0 * policy.value_layer.mean)
    torch.testing.assert_close(scaled_policy.reward_scale.rms, 100.0 * policy.reward_scale.rms)


def test_the_entropy_floor_lifts_a_nearly_deterministic_policy():
    # A policy that nearly always picks action 0 (entropy below the floor of 5% of ln 3), with zero
    # advantages: the floor's penalty raises its entropy, the same updates without the floor do not.
    def entropies(min_entropy: float) -> tuple[float, float]:
        torch.manual_seed(0)
        obs_space = spaces.Box(0.0, 1.0, shape=(5,), dtype=np.float32)
        policy = Policy(obs_space, spaces.Discrete(3), build_core("gru", input_dim=8, hidden_dim=8), head_dim=8)
        with torch.no_grad():
            policy.action_head.net[-1].bias.copy_(torch.tensor([6.0, 0.0, 0.0]))
            policy.value_layer.weight.zero_()  # values 0 and rewards 0: advantages 0, so that the floor
            policy.value_layer.bias.zero_()    # alone moves the policy
        rollout = acted_rollout(policy)
        rollout.rewards.zero_()
        cfg = PPOConfig(num_envs=4, rollout_length=8, num_minibatches=1, update_epochs=4, ent_coef=0.0,
                        min_entropy=min_entropy)
        optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2, eps=1e-5)
        measured = []
        for _ in range(6):
            with torch.no_grad():
                dist, _, _ = policy(rollout.obs, rollout.prev_actions, rollout.prev_rewards,
                                    policy.initial_state(4), rollout.resets)
            measured.append(dist.entropy().mean().item())
            ppo_update(policy, optimizer, rollout, cfg, torch.Generator().manual_seed(0))
        return measured[0], measured[-1]

    floor = 0.05 * math.log(3)
    before, without_floor = entropies(0.0)
    _, with_floor = entropies(0.05)
    assert before < floor
    assert abs(without_floor - before) < 0.1 * before
    assert with_floor > floor
