"""`CapturedStep` around `Policy.act` (the collector's acting on CUDA): captured acting, with the state
stepped in place in the step's buffers, equals plain eager acting over many steps with resets, and
sampling draws fresh random numbers at every call.

With a GPU every test runs as a CUDA graph (graph=True) and through the eager protocol; without one,
through the eager protocol only (graph=False), which is the same code path but for the replay.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from gymnasium import spaces

from hqlt.agents import Collector, Policy
from hqlt.envs import make_batched
from hqlt.kernels.cuda_graph import CapturedStep
from hqlt.memory import build_core

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
GRAPH_MODES = [pytest.param(False, id="eager"), *([pytest.param(True, id="cuda-graph")] if CUDA else [])]
# (envs, width, heads, window): realistic on a GPU, tiny on a CPU.
ENVS, WIDTH, HEADS, WINDOW = (256, 128, 4, 16) if CUDA else (8, 16, 2, 4)
STEPS = 50
OBSERVATION_SPACE = spaces.Box(-1.0, 1.0, shape=(6,), dtype=np.float32)
ACTION_SPACE = spaces.MultiDiscrete([3, 4])  # previous actions pass the one-hot encoder inside the graph
CORES = {
    "hqlt": dict(num_layers=2, num_heads=HEADS, window=WINDOW),  # synchronous, dynamic vector: the fused step op
    "lstm": dict(num_layers=2),
}


def make_policy(core_name: str, logit_scale: float = 1.0, observation_space=OBSERVATION_SPACE,
                action_space=ACTION_SPACE) -> Policy:
    """A policy on DEVICE; `logit_scale` scales its initial (near-uniform) action logits."""
    torch.manual_seed(0)
    core = build_core(core_name, input_dim=WIDTH, hidden_dim=WIDTH, **CORES[core_name])
    policy = Policy(observation_space, action_space, core, head_dim=32)
    with torch.no_grad():
        policy.action_head.net[-1].weight.mul_(logit_scale)
    return policy.to(DEVICE).eval()


def acting_inputs(steps: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """`[steps, ENVS, ...]` observations, previous actions and rewards, and resets (every row starts an
    episode at step 0, then about one step in eight)."""
    generator = torch.Generator().manual_seed(seed)
    resets = torch.rand(steps, ENVS, generator=generator) < 0.125
    resets[0] = True
    inputs = {
        "obs": torch.rand(steps, ENVS, 6, generator=generator) * 2 - 1,
        "prev_action": torch.stack([torch.randint(0, n, (steps, ENVS), generator=generator) for n in (3, 4)], dim=-1),
        "prev_reward": torch.randn(steps, ENVS, generator=generator),
        "resets": resets,
    }
    return {name: value.to(DEVICE) for name, value in inputs.items()}


@pytest.mark.parametrize("graph", GRAPH_MODES)
@pytest.mark.parametrize("core_name", list(CORES))
def test_captured_acting_equals_eager_acting(core_name, graph):
    policy = make_policy(core_name, logit_scale=100.0)  # greedy actions without near-ties
    inputs = acting_inputs(STEPS)
    eager_state = policy.initial_state(ENVS, device=DEVICE)
    act = functools.partial(policy.act, greedy=True, in_place=True)
    step = CapturedStep(act, inputs["obs"][0], inputs["prev_action"][0], inputs["prev_reward"][0], eager_state,
                        inputs["resets"][0], graph=graph)
    state = policy.initial_state(ENVS, device=DEVICE)  # copied into the step's buffers by the first call
    for t in range(STEPS):
        carry = (inputs["obs"][t], inputs["prev_action"][t], inputs["prev_reward"][t])
        actions, log_probs, values, eager_state = policy.act(*carry, eager_state, inputs["resets"][t], greedy=True)
        captured_actions, captured_log_probs, captured_values, state = step(*carry, state, inputs["resets"][t])
        assert all(state[name] is step.inputs[3][name] for name in state), "the state left the step's buffers"
        torch.testing.assert_close(captured_actions, actions, msg=f"step {t}: actions")
        torch.testing.assert_close(captured_log_probs, log_probs, rtol=1e-5, atol=1e-5, msg=f"step {t}: log-probs")
        torch.testing.assert_close(captured_values, values, rtol=1e-5, atol=1e-5, msg=f"step {t}: values")
        for name in state:
            torch.testing.assert_close(state[name], eager_state[name], rtol=1e-5, atol=1e-5, msg=f"step {t}: {name}")


@pytest.mark.parametrize("graph", GRAPH_MODES)
def test_sampling_draws_fresh_numbers_at_every_call(graph):
    """Gumbel-max sampling in the step: the same inputs on every call (the state is copied in afresh)
    give different actions from call to call, with the policy's probabilities."""
    policy = make_policy("hqlt", logit_scale=100.0)  # action probabilities from about 0.05 to 0.55
    inputs = {name: value[0] for name, value in acting_inputs(1, seed=1).items()}
    state = policy.initial_state(ENVS, device=DEVICE)
    act = functools.partial(policy.act, greedy=False, in_place=True)
    carry = (inputs["obs"], inputs["prev_action"], inputs["prev_reward"], state, inputs["resets"])
    step = CapturedStep(act, *carry, graph=graph)
    calls = 4000 // ENVS + 50
    samples = torch.stack([step(*carry)[0].clone() for _ in range(calls)])  # [calls, ENVS, 2]
    assert (samples != samples[0]).any(dim=(1, 2)).float().mean() > 0.5, "calls repeat the same actions"
    with torch.no_grad():
        dist, _, _ = policy(*(value[:, None] for value in carry[:3]), policy.initial_state(ENVS, device=DEVICE), carry[4][:, None])
    for element, log_p in enumerate(dist.log_probs):
        expected = log_p[:, 0].exp().mean(0)  # mean over envs of each action's probability
        frequencies = torch.nn.functional.one_hot(samples[..., element], len(expected)).float().mean((0, 1))
        torch.testing.assert_close(frequencies, expected, rtol=0, atol=0.03)


@pytest.mark.parametrize("core_name", list(CORES))
def test_captured_policy_and_env_step_equals_eager_stepping(core_name):
    """The collector with a batched env: on CUDA one graph holds the policy step, the env step and the
    truncation bootstrap. Same transitions and env state as stepping eagerly, so the graph's warm-up
    steps left the episodes as they were."""

    def run(capture: bool):
        # Active T-Maze 3: a turn can end an episode at step 4 at the earliest, and the time limit truncates
        # every episode that has not ended by then (whatever the untrained greedy policy does).
        envs = make_batched("hqlt/TMazeActive-v0", ENVS, device=DEVICE, seed=0, corridor_length=3, max_episode_steps=4)
        policy = make_policy(core_name, 100.0, envs.single_observation_space, envs.single_action_space)
        collector = Collector(policy, envs, DEVICE, rollout_length=1, sequence_length=1, capture=capture)
        collector.restart(0)
        return [collector.step(greedy=True) for _ in range(STEPS)], envs.snapshot()

    (eager, eager_env), (captured, captured_env) = run(False), run(True)
    assert any(bool((step.truncated & ~step.terminated).any()) for step in eager), "nothing was bootstrapped"
    for t, (ours, theirs) in enumerate(zip(captured, eager)):
        for name in ("actions", "rewards", "terminated", "truncated"):
            torch.testing.assert_close(getattr(ours, name), getattr(theirs, name), msg=f"step {t}: {name}")
        for name in ("log_probs", "values", "final_values"):
            torch.testing.assert_close(getattr(ours, name), getattr(theirs, name), rtol=1e-5, atol=1e-5,
                                       msg=f"step {t}: {name}")
    for name, value in eager_env.items():
        torch.testing.assert_close(captured_env[name], value, msg=f"env state {name}")


def test_calls_must_keep_the_captured_structure():
    step = CapturedStep(lambda state: {name: value + 1 for name, value in state.items()},
                        {"a": torch.zeros(2), "b": torch.zeros(3)}, graph=False)
    step({"a": torch.ones(2), "b": torch.ones(3)})
    with pytest.raises(ValueError, match="structure of the captured call"):
        step({"b": torch.ones(3), "a": torch.ones(2)})


def test_a_graph_needs_cuda_tensors():
    with pytest.raises(ValueError, match="needs CUDA tensors .* graph=False"):
        CapturedStep(lambda x: x * 2, torch.zeros(2), graph=True)


def test_eager_outputs_are_buffers_reused_by_the_next_call():
    """As with a graph's outputs: what must outlive a call has to be copied."""
    step = CapturedStep(lambda x: x * 2, torch.zeros(2), graph=False)
    first = step(torch.ones(2))
    second = step(torch.full((2,), 3.0))
    assert first is second and second.tolist() == [6.0, 6.0]
