"""V-trace against the paper's n-step sum, against GAE(lambda) on-policy, episode boundaries and input checks."""

import math

import pytest
import torch

from hqlt.agents import compute_gae, vtrace
from hqlt.agents.rollout import Rollout

NUM_ENVS, NUM_STEPS = 3, 24


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Float64-tight comparison; torch.testing.assert_close would first import sympy (seconds)."""
    assert torch.allclose(actual, expected, rtol=1e-12, atol=1e-12), f"max |difference| {(actual - expected).abs().max():.3g}"


def random_segment(seed: int, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    """`[N, T]` inputs with terminated and truncated steps inside the segment, one step both."""
    generator = torch.Generator().manual_seed(seed)
    shape = (NUM_ENVS, NUM_STEPS)
    terminated = torch.rand(shape, generator=generator) < 0.15
    truncated = torch.rand(shape, generator=generator) < 0.15
    terminated[0, 5] = truncated[0, 5] = True
    return dict(
        log_rhos=torch.randn(shape, generator=generator, dtype=dtype),
        rewards=torch.randn(shape, generator=generator, dtype=dtype),
        values=torch.randn(shape, generator=generator, dtype=dtype),
        next_values=torch.randn(shape, generator=generator, dtype=dtype),
        terminated=terminated,
        truncated=truncated,
    )


def reference_vtrace(log_rhos, rewards, values, next_values, terminated, truncated, gamma, rho_bar, c_bar, lam=1.0):
    """The paper's n-step form, per env and step: v_s = V_s + sum_{t=s}^{end} (gamma lam)^(t-s)
    (prod_{i=s}^{t-1} c_i) delta_t, where `end` is the episode's last step in the segment (or the
    segment's last step)."""
    num_envs, num_steps = rewards.shape
    vs = torch.zeros(num_envs, num_steps, dtype=torch.float64)
    advantages = torch.zeros(num_envs, num_steps, dtype=torch.float64)
    for n in range(num_envs):
        r, v = rewards[n].tolist(), values[n].tolist()
        rho = [min(rho_bar, math.exp(x)) for x in log_rhos[n].tolist()]
        c = [min(c_bar, math.exp(x)) for x in log_rhos[n].tolist()]
        ends = (terminated[n] | truncated[n]).tolist()
        bootstrap = [0.0 if done else value for done, value in zip(terminated[n].tolist(), next_values[n].tolist())]
        delta = [rho[t] * (r[t] + gamma * bootstrap[t] - v[t]) for t in range(num_steps)]
        for s in range(num_steps):
            end = next(t for t in range(s, num_steps) if ends[t] or t == num_steps - 1)
            vs[n, s] = v[s] + sum((gamma * lam) ** (t - s) * math.prod(c[s:t]) * delta[t] for t in range(s, end + 1))
        for s in range(num_steps):
            last = ends[s] or s == num_steps - 1
            q = bootstrap[s] if last else lam * vs[n, s + 1].item() + (1 - lam) * bootstrap[s]
            advantages[n, s] = rho[s] * (r[s] + gamma * q - v[s])
    return vs, advantages


@pytest.mark.parametrize("rho_bar, c_bar, lam", [(1.0, 1.0, 1.0), (2.0, 0.5, 1.0), (0.8, 1.5, 1.0),
                                                  (math.inf, math.inf, 1.0), (1.0, 1.0, 0.9), (0.8, 1.5, 0.5)])
def test_vtrace_matches_the_papers_n_step_sum(rho_bar, c_bar, lam):
    segment = random_segment(seed=0)
    # Ratios on both sides of every finite bar, so clipping matters; both kinds of end inside every row.
    ratios = segment["log_rhos"].exp()
    assert (ratios < 0.5).any() and (ratios > 2.0).any()
    terminated, truncated = segment["terminated"][:, :-1], segment["truncated"][:, :-1]
    assert terminated.any(dim=1).all() and truncated.any(dim=1).all()

    vs, advantages = vtrace(**segment, gamma=0.9, rho_bar=rho_bar, c_bar=c_bar, gae_lambda=lam)
    expected_vs, expected_advantages = reference_vtrace(**segment, gamma=0.9, rho_bar=rho_bar, c_bar=c_bar, lam=lam)
    assert_close(vs, expected_vs)
    assert_close(advantages, expected_advantages)


def test_vtrace_returns_detached_tensors_in_the_inputs_dtype():
    segment = random_segment(seed=1, dtype=torch.float32)
    segment["values"].requires_grad_(True)
    vs, advantages = vtrace(**segment)
    assert vs.dtype == advantages.dtype == torch.float32
    assert not vs.requires_grad and not advantages.requires_grad


@pytest.mark.parametrize("rho_bar, c_bar, lam", [(1.0, 1.0, 1.0), (1.5, 3.0, 1.0), (1.0, 1.0, 0.75), (1.5, 3.0, 0.5)])
def test_on_policy_vtrace_equals_gae(rho_bar, c_bar, lam):
    segment = random_segment(seed=2)
    values, terminated, truncated = segment["values"], segment["terminated"], segment["truncated"]
    zeros = torch.zeros_like(values)
    rollout = Rollout(
        obs=zeros,
        prev_actions=zeros.long(),
        prev_rewards=zeros,
        resets=torch.zeros_like(terminated),
        actions=zeros.long(),
        log_probs=zeros,
        values=values,
        rewards=segment["rewards"],
        terminated=terminated,
        truncated=truncated,
        final_values=torch.where(truncated, segment["next_values"], zeros),
        next_values=torch.randn(NUM_ENVS, dtype=torch.float64),
        states={},
    )
    # V of the next observation as compute_gae reads it; where terminated it is ignored, so keep noise there.
    following = torch.cat([values[:, 1:], rollout.next_values[:, None]], dim=1)
    next_values = torch.where(truncated, rollout.final_values, following)
    next_values = torch.where(terminated, segment["next_values"], next_values)

    gamma = 0.9375  # exact in float32 with every lam here: compute_gae multiplies them into a float32 mask
    gae_advantages, gae_returns = compute_gae(rollout, gamma, gae_lambda=lam)
    vs, advantages = vtrace(
        torch.zeros_like(values), rollout.rewards, values, next_values, terminated, truncated,
        gamma=gamma, rho_bar=rho_bar, c_bar=c_bar, gae_lambda=lam,
    )
    assert_close(vs, gae_returns)
    assert_close(advantages, gae_advantages)


@pytest.mark.parametrize("end_flag", ["terminated", "truncated"])
def test_traces_never_cross_an_episode_end(end_flag):
    segment = random_segment(seed=3)
    segment["terminated"].zero_()
    segment["truncated"].zero_()
    end = 10
    segment[end_flag][:, end] = True
    vs, advantages = vtrace(**segment, rho_bar=2.0, c_bar=2.0)

    # Rewrite everything of the next episode; next_values[end] is the earlier episode's final value, so it stays.
    later = {name: segment[name].clone() for name in ("log_rhos", "rewards", "values", "next_values")}
    for tensor in later.values():
        tensor[:, end + 1 :] = 100.0 * torch.randn(NUM_ENVS, NUM_STEPS - end - 1, dtype=torch.float64)
    changed_vs, changed_advantages = vtrace(**{**segment, **later}, rho_bar=2.0, c_bar=2.0)

    assert torch.equal(changed_vs[:, : end + 1], vs[:, : end + 1])
    assert torch.equal(changed_advantages[:, : end + 1], advantages[:, : end + 1])
    assert not torch.equal(changed_vs[:, end + 1 :], vs[:, end + 1 :])


@pytest.mark.parametrize("name", ["rewards", "values", "next_values", "terminated", "truncated"])
def test_vtrace_rejects_a_tensor_of_another_shape(name):
    segment = random_segment(seed=4)
    segment[name] = segment[name][:, :-1]
    with pytest.raises(ValueError, match=f"^vtrace: {name} has shape"):
        vtrace(**segment)


def test_vtrace_rejects_inputs_that_are_not_n_by_t():
    segment = {name: tensor[0] for name, tensor in random_segment(seed=4).items()}
    with pytest.raises(ValueError, match=r"^vtrace: log_rhos must be \[N, T\]"):
        vtrace(**segment)


@pytest.mark.parametrize("name", ["terminated", "truncated"])
def test_vtrace_rejects_flags_that_are_not_bool(name):
    segment = random_segment(seed=4)
    segment[name] = segment[name].float()
    with pytest.raises(ValueError, match=f"^vtrace: {name} must be a bool tensor"):
        vtrace(**segment)


@pytest.mark.parametrize(
    "name, value",
    [("rho_bar", 0.0), ("rho_bar", math.nan), ("c_bar", -1.0), ("gamma", 1.5), ("gamma", -0.1), ("gae_lambda", 1.2)],
)
def test_vtrace_rejects_bad_hyperparameters(name, value):
    with pytest.raises(ValueError, match=f"^vtrace: {name} must be"):
        vtrace(**random_segment(seed=4), **{name: value})
