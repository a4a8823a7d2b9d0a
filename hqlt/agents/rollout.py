"""Rollouts: N envs stepped T times in step mode, stored whole on the training device.

The collector carries per env, across rollouts: the current observation, the memory state, the
previous action and reward, and `resets` (true when the current observation starts an episode).
With SAME_STEP autoreset `resets[t] = terminated[t-1] | truncated[t-1]`, and the core clears the
state of those rows itself, so no dummy transitions enter the buffer.

Two kinds of envs: gymnasium vector envs on the host (observations cross to the device each step,
actions come back), and batched envs (`hqlt.envs.BatchedEnv`) whose tensors already live on the
training device, so that nothing crosses during a rollout and, on CUDA, one graph holds the policy
step and the env step together.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, fields

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import VectorEnv
from torch import Tensor
from torch.utils import _pytree as pytree

from hqlt.agents.policy import EPISODE_TIME, Policy
from hqlt.envs import BatchedEnv
from hqlt.envs.wrappers import EPISODE_LENGTH, EPISODE_RETURN, EPISODE_SUCCESS
from hqlt.kernels.cuda_graph import CapturedStep
from hqlt.memory import State


@dataclass
class Rollout:
    """One rollout, rows are envs: every tensor is `[N, T, ...]` unless noted.

    obs `[N, T, *obs_shape]`, prev_actions/actions `[N, T, *action_shape]`, prev_rewards, log_probs,
    values, rewards `[N, T]`, resets/terminated/truncated bool `[N, T]`;
    final_values `[N, T]`: value of info["final_obs"] where truncated (0 elsewhere), computed with the
    carried state; next_values `[N]`: value of the observation after the last step;
    states: core state before steps 0, L, 2L, ... (L = sequence_length), `{name: [N, T // L, ...]}`.
    """

    obs: Tensor
    prev_actions: Tensor
    prev_rewards: Tensor
    resets: Tensor
    actions: Tensor
    log_probs: Tensor
    values: Tensor
    rewards: Tensor
    terminated: Tensor
    truncated: Tensor
    final_values: Tensor
    next_values: Tensor
    states: State


@dataclass
class SequenceBatch:
    """Training sequences: every tensor `[S, L, ...]`, states `{name: [S, ...]}` at each sequence start."""

    obs: Tensor
    prev_actions: Tensor
    prev_rewards: Tensor
    resets: Tensor
    actions: Tensor
    log_probs: Tensor
    values: Tensor
    advantages: Tensor
    returns: Tensor
    states: State

    def rows(self, index: Tensor) -> SequenceBatch:
        """The sequences at `index` (int `[S']`)."""
        tensors = {f.name: getattr(self, f.name)[index] for f in fields(self) if f.name != "states"}
        return SequenceBatch(**tensors, states={name: value[index] for name, value in self.states.items()})


def training_sequences(rollout: Rollout, advantages: Tensor, returns: Tensor) -> SequenceBatch:
    """Cuts every env row `[N, T]` into K = T / L sequences `[N * K, L]` with their stored initial states."""
    num_envs, num_steps = rollout.resets.shape
    num_cuts = next(iter(rollout.states.values())).shape[1]
    length = num_steps // num_cuts

    def cut(x: Tensor) -> Tensor:
        return x.reshape(num_envs * num_cuts, length, *x.shape[2:])

    return SequenceBatch(
        obs=cut(rollout.obs),
        prev_actions=cut(rollout.prev_actions),
        prev_rewards=cut(rollout.prev_rewards),
        resets=cut(rollout.resets),
        actions=cut(rollout.actions),
        log_probs=cut(rollout.log_probs),
        values=cut(rollout.values),
        advantages=cut(advantages),
        returns=cut(returns),
        states={name: value.flatten(0, 1) for name, value in rollout.states.items()},
    )


# Rollout fields filled per step: from the carry before the step, from the step, and the bootstrap values.
CARRY_FIELDS = ("obs", "prev_actions", "prev_rewards", "resets")
TRANSITION_FIELDS = ("actions", "log_probs", "values", "rewards", "terminated", "truncated")
STEP_FIELDS = (*CARRY_FIELDS, *TRANSITION_FIELDS, "final_values")


@dataclass
class Transition:
    """What one step of N envs returned, on the training device: actions `[N, *action_shape]`,
    log_probs/values/rewards `[N]`, terminated/truncated bool `[N]`, final_values `[N]` (the value of
    info["final_obs"] where an episode was truncated and not terminated, 0 elsewhere) and the episode
    statistics of the env's info (`{"episode": {...}, "_episode": mask}`, numpy or tensors)."""

    actions: Tensor
    log_probs: Tensor
    values: Tensor
    rewards: Tensor
    terminated: Tensor
    truncated: Tensor
    final_values: Tensor
    episodes: dict


@dataclass
class EpisodeStats:
    """Statistics of the episodes that ended during a rollout (one entry per episode)."""

    returns: list[float]
    lengths: list[int]
    successes: list[float]

    def extend(self, info: dict) -> None:
        """Adds the episodes marked in info["_episode"] (gymnasium's keys in info["episode"], see
        hqlt.envs.wrappers), from numpy arrays or tensors of any shape."""
        if "episode" not in info:
            return
        done = _host(info["_episode"])
        episode = info["episode"]
        self.returns += _host(episode[EPISODE_RETURN])[done].tolist()
        self.lengths += _host(episode[EPISODE_LENGTH])[done].tolist()
        self.successes += _host(episode[EPISODE_SUCCESS])[done].tolist()


def _host(values: np.ndarray | Tensor) -> np.ndarray:
    return values.cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)


def env_actions(policy: Policy, actions: Tensor) -> Tensor:
    """Policy actions `[N, *action_shape]` -> what a batched env's step takes (int64 `[N]`: every
    batched port has a Discrete action space)."""
    space = policy.action_head.space
    if not isinstance(space, gym.spaces.Discrete):
        raise ValueError(f"batched envs take Discrete actions; this policy's action space is {space}")
    return actions[:, 0] + int(space.start)


def to_device(arrays: Sequence[np.ndarray], device: torch.device) -> list[Tensor]:
    """Host arrays as tensors on `device`, same dtypes and shapes: on the CPU the arrays themselves (no
    copy), elsewhere through `packed_copy` (one host-to-device copy for all of them)."""
    if device.type == "cpu":
        return [torch.from_numpy(np.ascontiguousarray(array)) for array in arrays]
    return packed_copy(arrays, device)


# Byte alignment of each array in a packed buffer (the widest dtype's size).
PACK_ALIGNMENT = 8


def packed_copy(arrays: Sequence[np.ndarray], device: torch.device) -> list[Tensor]:
    """Host arrays as tensors on `device` (same dtypes and shapes) in one copy: packed into one byte
    buffer, pinned on CUDA so that the copy is asynchronous, and viewed back there. Each call has its
    own buffer, which torch's pinned-memory cache reuses only once the copy out of it is done."""
    arrays = [np.ascontiguousarray(array) for array in arrays]
    offsets = np.cumsum([0] + [-(-array.nbytes // PACK_ALIGNMENT) * PACK_ALIGNMENT for array in arrays])
    packed = torch.empty(int(offsets[-1]), dtype=torch.uint8, pin_memory=device.type == "cuda")
    packed_bytes = packed.numpy()
    for array, offset in zip(arrays, offsets):
        packed_bytes[offset : offset + array.nbytes] = array.reshape(-1).view(np.uint8)
    moved = packed.to(device, non_blocking=True)
    return [
        moved[offset : offset + array.nbytes].view(torch.from_numpy(array[:0]).dtype).view(array.shape)
        for array, offset in zip(arrays, offsets)
    ]


class Collector:
    """Collects rollouts of `rollout_length` steps from `envs` with `policy`, on `device`.

    `sequence_length` decides where the core state is stored for training (every L steps).
    With a gymnasium vector env, observations, rewards and flags cross from host to device in one
    copy per step for all envs, and actions once back; the episode flags are read on the host, so a
    step never waits on the device. A batched env (`BatchedEnv` on `device`) keeps everything on the
    device: episode statistics are read back once per rollout.

    `capture` (default: on CUDA) runs each step through a `CapturedStep`, one per `greedy` value: a
    CUDA graph on CUDA, the same protocol run eagerly elsewhere. It holds `Policy.act` and, with a
    batched env, the env step and the truncation bootstrap too. The policy then steps the memory
    state in place in the step's buffers, which stay the carried state; only what outlives a step is
    copied (its actions, log-probs and values, and the states stored at sequence starts). Without
    `capture` each step returns a new state. A captured step reads the policy's parameters where they
    lie: update them in place (as optimisers and `load_state_dict` do), never replace them.

    `align_episodes` starts a new episode in every env after each rollout: an episode still running at
    the rollout's end is truncated at its last step (bootstrapped from the value after it, as a time
    limit is) and left unreported, so that every episode that fits in a rollout lies whole in one row,
    with the gradient from its end to its start (the stored states at row starts are detached).
    """

    def __init__(
        self, policy: Policy, envs: VectorEnv | BatchedEnv, device: torch.device, rollout_length: int,
        sequence_length: int, capture: bool | None = None, align_episodes: bool = False,
    ) -> None:
        self.policy = policy
        self.envs = envs
        self.device = device
        self.rollout_length = rollout_length
        self.sequence_length = sequence_length
        self.num_envs = envs.num_envs
        self.batched = isinstance(envs, BatchedEnv)
        if self.batched and envs.device.type != device.type:
            raise ValueError(f"the batched env lives on {envs.device}, the collector on {device}: make it on {device}")
        self.capture = device.type == "cuda" if capture is None else capture
        self.align_episodes = align_episodes
        self._captured_steps: dict[bool, CapturedStep] = {}

    def restart(self, seed: int | None) -> None:
        """Starts fresh episodes in every env (seeded) and a fresh carry."""
        head = self.policy.action_head
        self.obs = self._on_device(self.envs.reset(seed=seed)[0])
        self.resets = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        self.prev_action = torch.zeros(self.num_envs, *head.action_shape, dtype=head.action_dtype, device=self.device)
        self.prev_reward = torch.zeros(self.num_envs, device=self.device)
        self.state = self.policy.initial_state(self.num_envs, device=self.device)

    def _on_device(self, obs: np.ndarray | Tensor) -> Tensor:
        """Observations from `envs` `[N, *obs_shape]` on the collector's device (a batched env's already are)."""
        return obs if self.batched else to_device([obs], self.device)[0]

    def step(self, greedy: bool = False) -> Transition:
        """One env step for all envs from the carry; advances the carry."""
        transition = self._batched_step(greedy) if self.batched else self._host_step(greedy)
        self.prev_action, self.prev_reward = transition.actions, transition.rewards
        self.resets = transition.terminated | transition.truncated
        return transition

    # ------------------------------------------------------------------ gymnasium vector envs

    def _host_step(self, greedy: bool) -> Transition:
        actions, log_probs, values, self.state = self._act(greedy)
        obs, rewards, terminated, truncated, info = self.envs.step(self.policy.action_head.to_env(actions.cpu().numpy()))
        bootstrapped = truncated & ~terminated
        self.obs, rewards, terminated, truncated = to_device(
            [obs, rewards.astype(np.float32), terminated, truncated], self.device
        )
        if bootstrapped.any():
            final_values = self._final_values(info, bootstrapped, actions, rewards)
        else:
            final_values = torch.zeros(self.num_envs, device=self.device)
        return Transition(actions, log_probs, values, rewards, terminated, truncated, final_values, info)

    def _act(self, greedy: bool) -> tuple[Tensor, Tensor, Tensor, State]:
        """`Policy.act` on the carry: actions, log-probs, values (tensors of their own) and the next state."""
        carry = (self.obs, self.prev_action, self.prev_reward, self.state, self.resets)
        if not self.capture:
            return self.policy.act(*carry, greedy=greedy)
        if greedy not in self._captured_steps:
            act = functools.partial(self.policy.act, greedy=greedy, in_place=True)
            self._captured_steps[greedy] = CapturedStep(act, *carry, graph=self.device.type == "cuda")
        actions, log_probs, values, state = self._captured_steps[greedy](*carry)
        return actions.clone(), log_probs.clone(), values.clone(), state

    def _final_values(self, info: dict, rows: np.ndarray, actions: Tensor, rewards: Tensor) -> Tensor:
        """Values `[N]` of info["final_obs"] for the envs in `rows` (numpy bool `[N]`), 0 elsewhere.

        The carry holds each env's state after its last step: the policy runs one step on the final
        observation with that step's action and reward. The carried state is only read.
        """
        index = np.flatnonzero(rows)
        final_obs, index = to_device([np.stack(info["final_obs"][index]), index], self.device)
        state = {name: value[index] for name, value in self.state.items()}
        no_reset = torch.zeros(len(index), dtype=torch.bool, device=self.device)
        values = torch.zeros(self.num_envs, device=self.device)
        values[index] = self.policy.value(final_obs, actions[index], rewards[index], state, no_reset)
        return values

    # ------------------------------------------------------------------ batched envs

    def _batched_step(self, greedy: bool) -> Transition:
        carry = (self.obs, self.prev_action, self.prev_reward, self.state, self.resets)
        if not self.capture:
            outputs = self._policy_and_env_step(*carry, greedy=greedy, in_place=False)
        else:
            if greedy not in self._captured_steps:
                step = functools.partial(self._policy_and_env_step, greedy=greedy, in_place=True)
                # The graph's warm-up steps run the env: put its episodes back as they were.
                before = self.envs.snapshot()
                self._captured_steps[greedy] = CapturedStep(step, *carry, graph=self.device.type == "cuda")
                self.envs.restore(before)
            actions, log_probs, values, state, *rest = self._captured_steps[greedy](*carry)
            # The state stays in the step's buffers; everything else outlives the step.
            outputs = (*pytree.tree_map(torch.clone, (actions, log_probs, values)), state, *pytree.tree_map(torch.clone, rest))
        actions, log_probs, values, self.state, self.obs, rewards, terminated, truncated, final_values, episodes = outputs
        return Transition(actions, log_probs, values, rewards, terminated, truncated, final_values, episodes)

    def _policy_and_env_step(
        self, obs: Tensor, prev_action: Tensor, prev_reward: Tensor, state: State, resets: Tensor, greedy: bool,
        in_place: bool,
    ) -> tuple:
        """`Policy.act`, the batched env's step and the truncation bootstrap, all on the device with no
        host synchronisation (what one CUDA graph captures). Shapes as in `Policy.act`."""
        actions, log_probs, values, state = self.policy.act(
            obs, prev_action, prev_reward, state, resets, greedy=greedy, in_place=in_place
        )
        with torch.no_grad():
            next_obs, rewards, terminated, truncated, info = self.envs.step(env_actions(self.policy, actions))
        if self.envs.max_episode_steps is None:  # the env never truncates: nothing to bootstrap
            final_values = torch.zeros_like(values)
        else:
            no_reset = torch.zeros_like(resets)
            final_values = self.policy.value(info["final_obs"], actions, rewards, state, no_reset)
            final_values = torch.where(truncated & ~terminated, final_values, 0.0)
        episodes = {"episode": info["episode"], "_episode": info["_episode"]}
        return actions, log_probs, values, state, next_obs, rewards, terminated, truncated, final_values, episodes

    # ------------------------------------------------------------------ rollouts

    def collect(self) -> tuple[Rollout, EpisodeStats]:
        """Steps every env `rollout_length` times; returns the rollout and the episodes that ended.

        Each step's tensors are kept in lists and stacked once at the end: one copy per field instead
        of an indexed write per field and step. Episode statistics of batched envs are stacked too and
        read back in one copy.
        """
        steps: dict[str, list[Tensor]] = {name: [] for name in STEP_FIELDS}
        states: list[State] = []
        episode_infos: list[dict] = []
        for t in range(self.rollout_length):
            if t % self.sequence_length == 0:
                states.append({name: value.clone() for name, value in self.state.items()})
            for name, value in zip(CARRY_FIELDS, (self.obs, self.prev_action, self.prev_reward, self.resets)):
                steps[name].append(value)
            step = self.step()
            for name in TRANSITION_FIELDS:
                steps[name].append(getattr(step, name))
            steps["final_values"].append(step.final_values)
            episode_infos.append(step.episodes)
        next_values = self.policy.value(self.obs, self.prev_action, self.prev_reward, self.state, self.resets)
        rollout = Rollout(
            **{name: torch.stack(values, dim=1) for name, values in steps.items()},
            next_values=next_values,
            states={name: torch.stack([state[name] for state in states], dim=1) for name in self.state},
        )
        if self.align_episodes:
            self._truncate_running_episodes(rollout)
        episodes = EpisodeStats([], [], [])
        if self.batched:
            episode_infos = [pytree.tree_map(lambda *per_step: torch.stack(per_step), *episode_infos)]
        for info in episode_infos:
            episodes.extend(info)
        return rollout, episodes

    def _truncate_running_episodes(self, rollout: Rollout) -> None:
        """align_episodes: the episodes running after `rollout`'s last step end there, truncated (in the
        rollout's flags, bootstrapped from `next_values`), and every env starts its next episode with the
        initial memory state (which the next step's resets would clear anyway; the episode times stay, for
        QPolicy's episode lengths)."""
        running = ~self.resets
        rollout.truncated[:, -1] |= running
        rollout.final_values[:, -1] = torch.where(running, rollout.next_values, rollout.final_values[:, -1])
        self.obs = self.envs.next_episodes() if self.batched else self._on_device(self.envs.reset()[0])
        self.resets = torch.ones_like(self.resets)
        fresh = self.policy.initial_state(self.num_envs, device=self.device)
        self.state = {**fresh, EPISODE_TIME: self.state[EPISODE_TIME]}
