"""The learner sees what the actor saw: sequence-mode replay of a fresh rollout equals acting, for every core.

CartPole without velocities gives episodes of random length, so rows reset at different steps
(several boundaries per row), and a time limit adds truncations next to terminations.
"""

from dataclasses import fields

import numpy as np
import pytest
import torch
from gymnasium.vector import VectorWrapper

from hqlt.agents import Collector, Policy, replay, training_sequences
from hqlt.agents.rollout import Rollout, packed_copy
from hqlt.configs import compose, group_options
from hqlt.envs import make_batched, make_vector
from hqlt.memory import build_core

NUM_ENVS, ROLLOUT_LENGTH = 4, 48
ENV_ID, TIME_LIMIT = "hqlt/CartPolePositionOnly-v0", 14


class RecordFinalObs(VectorWrapper):
    """Keeps every info["final_obs"] by step index, for checking the truncation bootstrap."""

    def __init__(self, env):
        super().__init__(env)
        self.final_obs = []

    def step(self, actions):
        obs, rewards, terminated, truncated, info = super().step(actions)
        self.final_obs.append(info.get("final_obs"))
        return obs, rewards, terminated, truncated, info


def collect(memory: str, sequence_length: int, seed: int = 0, capture: bool = False, return_collector: bool = False):
    torch.manual_seed(seed)
    memory_cfg = compose([f"memory={memory}"]).memory
    core = build_core(memory_cfg.core, input_dim=16, hidden_dim=32, **memory_cfg.options)
    envs = RecordFinalObs(make_vector(ENV_ID, NUM_ENVS, seed, max_episode_steps=TIME_LIMIT))
    policy = Policy(envs.single_observation_space, envs.single_action_space, core, head_dim=16)
    collector = Collector(policy, envs, torch.device("cpu"), ROLLOUT_LENGTH, sequence_length, capture=capture)
    collector.restart(seed)
    collector.collect()  # a first rollout, so the second starts from a carried (non-fresh) state
    envs.final_obs.clear()
    rollout, episodes = collector.collect()
    if return_collector:
        return collector, rollout
    return policy, rollout, envs.final_obs


@pytest.mark.parametrize("memory", group_options("memory"))
def test_sequence_replay_matches_acting(memory):
    policy, rollout, _ = collect(memory, sequence_length=ROLLOUT_LENGTH)
    boundaries = rollout.resets[:, 1:].sum(dim=1)
    assert (boundaries >= 2).all(), "every row should cross several episode boundaries"
    assert rollout.terminated.any() and rollout.truncated.any()
    zeros = torch.zeros_like(rollout.values)
    with torch.no_grad():
        log_probs, _, values, _ = replay(policy, training_sequences(rollout, zeros, zeros))
    torch.testing.assert_close(log_probs, rollout.log_probs, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(values, rollout.values, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("memory", ["lstm", "hqlt"])
def test_shorter_training_sequences_use_stored_states(memory):
    policy, rollout, _ = collect(memory, sequence_length=ROLLOUT_LENGTH // 4)
    zeros = torch.zeros_like(rollout.values)
    batch = training_sequences(rollout, zeros, zeros)
    assert batch.resets.shape == (NUM_ENVS * 4, ROLLOUT_LENGTH // 4)
    with torch.no_grad():
        log_probs, _, values, _ = replay(policy, batch)
    torch.testing.assert_close(log_probs.reshape(NUM_ENVS, ROLLOUT_LENGTH), rollout.log_probs, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(values.reshape(NUM_ENVS, ROLLOUT_LENGTH), rollout.values, rtol=1e-4, atol=1e-5)


def test_truncated_episodes_bootstrap_from_the_final_obs_with_the_carried_state():
    policy, rollout, final_obs = collect("lstm", sequence_length=ROLLOUT_LENGTH)
    truncated = (rollout.truncated & ~rollout.terminated).nonzero().tolist()
    assert truncated
    assert (rollout.final_values[~rollout.truncated] == 0).all()
    for env, step in truncated:
        # Replay the row up to the truncated step, then one more step on the final observation
        # with that step's action and reward as the previous inputs and no reset.
        last_obs = torch.as_tensor(np.asarray(final_obs[step][env]))[None, None]
        obs = torch.cat([rollout.obs[env : env + 1, : step + 1], last_obs], dim=1)
        prev_actions = torch.cat([rollout.prev_actions[env : env + 1, : step + 1], rollout.actions[env : env + 1, step : step + 1]], 1)
        prev_rewards = torch.cat([rollout.prev_rewards[env : env + 1, : step + 1], rollout.rewards[env : env + 1, step : step + 1]], 1)
        resets = torch.cat([rollout.resets[env : env + 1, : step + 1], torch.zeros(1, 1, dtype=torch.bool)], 1)
        state = {name: value[env : env + 1, 0] for name, value in rollout.states.items()}
        with torch.no_grad():
            _, values, _ = policy(obs, prev_actions, prev_rewards, state, resets)
        assert rollout.final_values[env, step].item() == pytest.approx(values[0, -1].item(), rel=1e-4, abs=1e-5)


def test_resets_follow_episode_ends_and_prev_inputs_are_the_last_action_and_reward():
    _, rollout, _ = collect("gru", sequence_length=ROLLOUT_LENGTH)
    ended = rollout.terminated | rollout.truncated
    torch.testing.assert_close(rollout.resets[:, 1:], ended[:, :-1])
    torch.testing.assert_close(rollout.prev_actions[:, 1:], rollout.actions[:, :-1])
    torch.testing.assert_close(rollout.prev_rewards[:, 1:], rollout.rewards[:, :-1])


@pytest.mark.parametrize("memory", group_options("memory"))
def test_the_capture_protocol_collects_the_same_rollout(memory):
    """`Collector(capture=True)` on the CPU: `Policy.act` through `CapturedStep(graph=False)`, the state
    stepped in place in the step's buffers and the step's outputs reused, as under a CUDA graph. Same
    seeds give the same rollout as functional acting: every field, the stored states and the
    bootstrapped final values (so nothing that outlives a step was left in a reused buffer)."""
    reference_collector, reference = collect(memory, sequence_length=ROLLOUT_LENGTH // 2, return_collector=True)
    collector, rollout = collect(memory, sequence_length=ROLLOUT_LENGTH // 2, capture=True, return_collector=True)
    assert (rollout.truncated & ~rollout.terminated).any(), "the rollout should bootstrap truncated episodes"
    for field in fields(Rollout):
        if field.name != "states":
            torch.testing.assert_close(getattr(rollout, field.name), getattr(reference, field.name), msg=field.name)
    for name in reference.states:
        torch.testing.assert_close(rollout.states[name], reference.states[name], msg=f"states[{name!r}]")
    for name in reference_collector.state:
        torch.testing.assert_close(collector.state[name], reference_collector.state[name], msg=f"carried state[{name!r}]")
    step = collector._captured_steps[False]
    assert all(collector.state[name] is step.inputs[3][name] for name in collector.state), "the carried state is not the step's buffers"


@pytest.mark.parametrize("device", ["cpu", *(["cuda"] if torch.cuda.is_available() else [])])
def test_packed_copy_moves_arrays_of_every_dtype_in_one_buffer(device):
    """The collector's host-to-device copy on CUDA; without a GPU it runs from CPU to CPU (same packing)."""
    arrays = [
        np.arange(7, dtype=np.uint8).reshape(7, 1),  # odd byte counts shift the next array's offset
        np.array([1.5, -2.0, 3.25], dtype=np.float32),
        np.array([True, False, True]),
        np.arange(6, dtype=np.int64).reshape(2, 3) - 3,
        np.zeros((2, 2, 3), dtype=np.float64) + 0.5,
    ]
    moved = packed_copy(arrays, torch.device(device))
    for array, tensor in zip(arrays, moved):
        assert tensor.device.type == device
        assert tensor.dtype == torch.from_numpy(array).dtype and tuple(tensor.shape) == array.shape
        np.testing.assert_array_equal(tensor.cpu().numpy(), array)
    assert len({tensor.untyped_storage().data_ptr() for tensor in moved}) == 1, "one buffer for all arrays"


def collect_batched(memory: str, capture: bool = False, seed: int = 0):
    """Two rollouts from a batched Active T-Maze whose time limit truncates the episodes that do not turn
    within 4 steps (the earliest turn is at step 3, the task's own horizon at step 5)."""
    torch.manual_seed(seed)
    memory_cfg = compose([f"memory={memory}"]).memory
    core = build_core(memory_cfg.core, input_dim=16, hidden_dim=32, **memory_cfg.options)
    envs = make_batched("hqlt/TMazeActive-v0", NUM_ENVS, seed=seed, corridor_length=2, max_episode_steps=4)
    policy = Policy(envs.single_observation_space, envs.single_action_space, core, head_dim=16)
    collector = Collector(policy, envs, torch.device("cpu"), ROLLOUT_LENGTH, ROLLOUT_LENGTH // 2, capture=capture)
    collector.restart(seed)
    collector.collect()
    rollout, episodes = collector.collect()
    return policy, collector, rollout, episodes


@pytest.mark.parametrize("memory", ["lstm", "hqlt"])
def test_batched_rollouts_replay_and_bootstrap_like_host_rollouts(memory):
    policy, collector, rollout, episodes = collect_batched(memory)
    assert rollout.obs.device.type == "cpu" and rollout.obs.dtype == torch.float32
    assert rollout.terminated.any() and (rollout.truncated & ~rollout.terminated).any()
    torch.testing.assert_close(rollout.resets[:, 1:], (rollout.terminated | rollout.truncated)[:, :-1])
    zeros = torch.zeros_like(rollout.values)
    with torch.no_grad():
        log_probs, _, values, _ = replay(policy, training_sequences(rollout, zeros, zeros))
    torch.testing.assert_close(log_probs.reshape(rollout.log_probs.shape), rollout.log_probs, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(values.reshape(rollout.values.shape), rollout.values, rtol=1e-4, atol=1e-5)
    bootstrapped = rollout.truncated & ~rollout.terminated
    assert (rollout.final_values[~bootstrapped] == 0).all() and (rollout.final_values[bootstrapped] != 0).all()
    ended = int((rollout.terminated | rollout.truncated).sum())
    assert len(episodes.returns) == ended and all(length <= 4 for length in episodes.lengths)


@pytest.mark.parametrize("memory", ["gru", "hqlt"])
def test_batched_capture_protocol_collects_the_same_rollout(memory):
    _, _, reference, reference_episodes = collect_batched(memory)
    _, collector, rollout, episodes = collect_batched(memory, capture=True)
    for field in fields(Rollout):
        if field.name != "states":
            torch.testing.assert_close(getattr(rollout, field.name), getattr(reference, field.name), msg=field.name)
    for name in reference.states:
        torch.testing.assert_close(rollout.states[name], reference.states[name], msg=f"states[{name!r}]")
    assert episodes == reference_episodes


@pytest.mark.parametrize("vectorization", ["batched", "gymnasium"])
def test_aligned_rollouts_start_every_row_with_a_new_episode(vectorization):
    """align_episodes: an episode running at a rollout's end is truncated at its last step, bootstrapped
    from the value after it and left unreported; the next rollout starts a new episode in every row (the
    batched env's next ones, not its first ones again)."""
    torch.manual_seed(0)
    core = build_core("gru", input_dim=16, hidden_dim=16)
    if vectorization == "batched":
        envs = make_batched("hqlt/TMazeActive-v0", NUM_ENVS, seed=0, corridor_length=2, max_episode_steps=4)
    else:
        envs = make_vector(ENV_ID, NUM_ENVS, 0, max_episode_steps=TIME_LIMIT)
    policy = Policy(envs.single_observation_space, envs.single_action_space, core, head_dim=16)
    rollout_length = 3  # shorter than most episodes, so that rows end mid-episode
    collector = Collector(policy, envs, torch.device("cpu"), rollout_length, rollout_length, align_episodes=True)
    collector.restart(0)
    first, _ = collector.collect()
    if vectorization == "batched":
        started = envs.episode.clone()
    truncate = collector._truncate_running_episodes
    running = {}

    def spy(rollout):
        running["rows"] = ~collector.resets  # the rows whose episode the rollout's end cuts
        truncate(rollout)

    collector._truncate_running_episodes = spy
    rollout, episodes = collector.collect()
    cut = running["rows"]
    assert rollout.resets[:, 0].all() and first.resets[:, 0].all() and collector.resets.all()
    if vectorization == "batched":
        assert (started > 0).all() and (envs.episode > started).all()
    assert cut.any(), "some episode must be cut by the rollout's end"
    assert rollout.truncated[cut, -1].all()
    torch.testing.assert_close(rollout.final_values[cut, -1], rollout.next_values[cut])
    assert len(episodes.returns) == int((rollout.terminated | rollout.truncated).sum() - cut.sum())
