"""Replay of training sequences, shared by the off-policy learners (SAC-Discrete, hqlt.agents.sac, and
recurrent DQN, hqlt.agents.dqn): rollouts are cut into sequences kept in a ring buffer on the
training device and replayed whole through the recurrent cores (Ni et al. 2022; R2D2, Kapturowski
et al. 2019).

    Collector (PPO's) ── rollout [N, T] ──> sequences of L steps (+ the step after each), with the
                                            start states of every replayed network ──> ReplayBuffer
    learner's gradient step <── B sequences drawn uniformly ─────────────────────────────┘

Each sequence holds the inputs of its L steps and of the step after them (`[S, L + 1, ...]`), so that
the value of the state after its last step comes from the same replay; a step after which an episode
ended holds the next episode's first observation there, which a learner never bootstraps from.

Start states: the acting policy's are those the Collector stored at each sequence start. Every other
network a learner replays (`ReplayTrainer._replayed_networks`: SAC's critics, DQN's target network)
gets its own when a rollout enters the buffer: it replays the rollout once, L steps at a time, from
its state carried across rollouts (as the Collector carries the policy's), without gradients. Like
any stored state (R2D2), these go stale as the parameters move; the sequences' first steps carry
that error.

The reward input's scale (`Policy.reward_scale`: the policy sees its previous reward over the rewards'
rms, so that a T-Maze penalty of 1/L is as visible as a reward of 1) is, for a learner that sets
`MEASURES_REWARD_SCALE`, measured on the experience collected before learning starts (the first
collection at least) and then kept: sequences replayed many updates later must see the inputs their
stored states were computed with. Otherwise it stays 1.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import defaultdict
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor
from torch.utils import _pytree as pytree

from hqlt.agents import distributed, metrics
from hqlt.agents.policy import Policy
from hqlt.agents.rollout import CARRY_FIELDS, EpisodeStats, Rollout
from hqlt.agents.trainer import Trainer, collector_state, restore_collector
from hqlt.configs.schema import ConfigError
from hqlt.memory import State


@dataclass
class ReplaySequences:
    """Training sequences of L steps: inputs of the L steps and the one after, `[S, L + 1, ...]` (obs,
    prev_actions, prev_rewards, resets); the L transitions `[S, L, ...]` (actions, log_probs the policy
    acted with, rewards, terminated, truncated); the start states `{name: [S, ...]}` of the acting
    policy (`states`) and of every other replayed network (`replayed_states[network]`)."""

    obs: Tensor
    prev_actions: Tensor
    prev_rewards: Tensor
    resets: Tensor
    actions: Tensor
    log_probs: Tensor
    rewards: Tensor
    terminated: Tensor
    truncated: Tensor
    states: State
    replayed_states: dict[str, State]

    @property
    def length(self) -> int:
        """L, the steps of each sequence."""
        return self.rewards.shape[1]

    def inputs(self, steps: slice = slice(None)) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The network inputs (obs, prev_actions, prev_rewards, resets) at `steps` of the L + 1."""
        return self.obs[:, steps], self.prev_actions[:, steps], self.prev_rewards[:, steps], self.resets[:, steps]

    def tensors(self) -> dict[str, Any]:
        """The fields by name (a pytree of tensors)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def rows(self, index: Tensor) -> ReplaySequences:
        """The sequences at `index` (int `[S']`)."""
        return ReplaySequences(**pytree.tree_map(lambda x: x[index], self.tensors()))


# The per-step fields of a rollout that ReplaySequences keeps for its L steps.
TRANSITIONS = ("actions", "log_probs", "rewards", "terminated", "truncated")


def replay_sequences(
    rollout: Rollout, next_inputs: dict[str, Tensor], replayed_states: dict[str, State]
) -> ReplaySequences:
    """Cuts every env row `[N, T]` into K = T / L sequences `[N * K, ...]` (env-major, as
    `training_sequences`). `next_inputs` are the inputs after the rollout's last step (CARRY_FIELDS,
    each `[N, ...]`: the collector's carry); `replayed_states[network]` `{name: [N * K, ...]}` are that
    network's states at the sequence starts (`sequence_start_states`)."""
    num_envs, num_steps = rollout.resets.shape
    num_cuts = next(iter(rollout.states.values())).shape[1]
    length = num_steps // num_cuts

    def with_next(x: Tensor, after: Tensor) -> Tensor:  # [N, T, ...] -> [N * K, L + 1, ...]
        extended = torch.cat([x, after[:, None]], dim=1)
        return extended.unfold(1, length + 1, length).movedim(-1, 2).flatten(0, 1)

    def cut(x: Tensor) -> Tensor:  # [N, T, ...] -> [N * K, L, ...]
        return x.reshape(num_envs * num_cuts, length, *x.shape[2:])

    return ReplaySequences(
        **{name: with_next(getattr(rollout, name), next_inputs[name]) for name in CARRY_FIELDS},
        **{name: cut(getattr(rollout, name)) for name in TRANSITIONS},
        states={name: value.flatten(0, 1) for name, value in rollout.states.items()},
        replayed_states=replayed_states,
    )


@torch.no_grad()
def sequence_start_states(network: Policy, rollout: Rollout, state: State, sequence_length: int) -> tuple[State, State]:
    """Runs `network`'s inputs and core (`Policy.memory`) over the rollout's inputs `[N, T]` from `state`
    (its state before step 0), L steps at a time: its states before steps 0, L, 2L, ... as
    `{name: [N * K, ...]}` (env-major), and its state after the last step."""
    starts = []
    for start in range(0, rollout.resets.shape[1], sequence_length):
        starts.append(state)
        steps = slice(start, start + sequence_length)
        *_, state = network.memory(rollout.obs[:, steps], rollout.prev_actions[:, steps], rollout.prev_rewards[:, steps],
                                   state, rollout.resets[:, steps])
    stacked = {name: torch.stack([s[name] for s in starts], dim=1).flatten(0, 1) for name in state}
    return stacked, state


class ReplayBuffer:
    """A ring buffer of `capacity` ReplaySequences on the device of the first ones added; `add` overwrites
    the oldest, `sample` draws uniformly among those held."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.storage: ReplaySequences | None = None
        self.position = 0  # where the next sequence goes
        self.size = 0

    def add(self, sequences: ReplaySequences) -> None:
        count = sequences.rewards.shape[0]
        if self.storage is None:
            self.storage = ReplaySequences(**pytree.tree_map(
                lambda x: x.new_zeros(self.capacity, *x.shape[1:]), sequences.tensors()
            ))
        index = (self.position + torch.arange(count, device=sequences.rewards.device)) % self.capacity
        pytree.tree_map(
            lambda stored, new: stored.index_copy_(0, index, new), self.storage.tensors(), sequences.tensors()
        )
        self.position = (self.position + count) % self.capacity
        self.size = min(self.size + count, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator) -> ReplaySequences:
        index = torch.randint(self.size, (batch_size,), generator=generator)
        return self.storage.rows(index.to(self.storage.rewards.device))

    def state_dict(self) -> dict[str, Any]:
        """The sequences held (on the CPU) and the ring's position."""
        held = None if self.storage is None else pytree.tree_map(lambda x: x[: self.size].cpu(), self.storage.tensors())
        return {"sequences": held, "position": self.position, "size": self.size}

    def load_state_dict(self, saved: dict[str, Any], device: torch.device) -> None:
        self.storage, self.position, self.size = None, 0, 0
        if saved["sequences"] is not None:
            self.add(ReplaySequences(**pytree.tree_map(lambda x: x.to(device), saved["sequences"])))
        self.position = saved["position"]


class ReplayTrainer(Trainer, ABC):
    """The run of an off-policy learner: Trainer's loop, logging, evaluation, checkpoints, resume and
    signal handling, with PPO's envs and Collector for experience; each update is one collection into
    the replay buffer and `updates_per_collect` gradient steps (none before `learning_starts` env steps).

    A learner (SacTrainer, DqnTrainer) builds its networks (`_build_learner`), names those replayed
    from stored states besides the policy (`_replayed_networks`), takes one gradient step on a batch
    (`_gradient_step`) and says what a checkpoint keeps of it (`_learner_modules`, `_learner_optimizers`).
    Checkpoints hold those, the replay buffer and, with a batched env, the replayed networks' carried
    states: a resumed run continues exactly. One process: under torchrun these learners are refused.
    """

    # The learner's statistics (keys of `_gradient_step`'s dict) -> TensorBoard tags.
    UPDATE_TAGS: dict[str, str] = {}
    # Whether the reward input's scale is measured before learning starts (module docstring).
    MEASURES_REWARD_SCALE: bool = False

    def _build_experience(self) -> None:
        if distributed.world_size() > 1:
            raise ConfigError(f"agent={self.cfg.agent.name} runs in one process; start it without torchrun")
        super()._build_experience()
        self._build_learner()
        self.replay = ReplayBuffer(self.cfg.agent.replay_size)
        self.sequence_length = self.cfg.agent.sequence_length or self.cfg.agent.rollout_length

    # ------------------------------------------------------------------ what each learner defines

    @abstractmethod
    def _build_learner(self) -> None:
        """The learner's networks and optimisers besides the policy and its optimiser (the trainer's)."""

    @abstractmethod
    def _replayed_networks(self) -> dict[str, Policy]:
        """The networks besides the policy whose start states the replay stores, by name (their inputs and
        core are run through `Policy.memory`)."""

    @abstractmethod
    def _gradient_step(self, batch: ReplaySequences) -> dict[str, Tensor]:
        """One gradient step on `batch`; its statistics (scalar tensors, keys of UPDATE_TAGS)."""

    @abstractmethod
    def _learner_modules(self) -> dict[str, torch.nn.Module]:
        """The modules a checkpoint keeps besides the policy, by name (state dicts)."""

    def _learner_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimisers besides the trainer's, by name; their learning rate follows the trainer's schedule."""
        return {}

    def adapt_learning_rate(self, update_stats: dict[str, float]) -> None:
        """Replay learners follow the schedule alone (their configs have no lr_target_kl)."""

    # ------------------------------------------------------------------ experience

    def _start_experience(self, seed: int, saved: dict[str, Any] | None) -> None:
        """Fresh episodes and replayed networks' states, or those of a checkpoint (`saved`, see `_experience_state`)."""
        if saved is None:
            self.collector.restart(seed)
            self.carries = {name: network.initial_state(self.collector.num_envs, self.device)
                            for name, network in self._replayed_networks().items()}
        else:
            restore_collector(self.collector, saved["collector"])
            self.carries = {name: {key: value.to(self.device) for key, value in carry.items()}
                            for name, carry in saved["carries"].items()}

    def _experience_state(self) -> dict[str, Any] | None:
        collector = collector_state(self.collector)
        if collector is None:  # gymnasium envs: fresh episodes on resume, and so fresh replayed states
            return None
        return {"collector": collector, "carries": self.carries}

    def _collect(self) -> tuple[Rollout, EpisodeStats]:
        """One rollout, cut into sequences that enter the replay buffer with the replayed networks' start states."""
        rollout, episodes = self.collector.collect()
        replayed_states = {}
        for name, network in self._replayed_networks().items():
            replayed_states[name], self.carries[name] = sequence_start_states(
                network, rollout, self.carries[name], self.sequence_length
            )
        collector = self.collector
        carry = (collector.obs, collector.prev_action, collector.prev_reward, collector.resets)
        self.replay.add(replay_sequences(rollout, dict(zip(CARRY_FIELDS, carry)), replayed_states))
        return rollout, episodes

    def _update(self, rollout: Rollout) -> dict[str, float]:
        """`updates_per_collect` gradient steps on sequences drawn from the buffer, once `learning_starts`
        env steps are collected (before that, the reward input's scale is measured: module docstring); the
        means of their statistics by TensorBoard tag."""
        agent = self.cfg.agent
        scalars = {metrics.REPLAY_SEQUENCES: float(self.replay.size)}
        # collections begun before learning starts, and the first one whatever learning_starts
        measuring = self.global_step - self.steps_per_update < max(agent.learning_starts, 1)
        if self.MEASURES_REWARD_SCALE and measuring:
            for network in (self.policy, *self._replayed_networks().values()):
                network.update_reward_scale(rollout.rewards)
        if self.global_step < agent.learning_starts:
            return scalars
        learning_rate = self.optimizer.param_groups[0]["lr"]  # the trainer's schedule sets the policy's
        for optimizer in self._learner_optimizers().values():
            for group in optimizer.param_groups:
                group["lr"] = learning_rate
        stats: dict[str, list[Tensor]] = defaultdict(list)
        for _ in range(agent.updates_per_collect):
            for name, value in self._gradient_step(self.replay.sample(agent.batch_size, self.generator)).items():
                stats[name].append(value)
        means = torch.stack([torch.stack(values).float().mean() for values in stats.values()]).tolist()
        return {**scalars, **{self.UPDATE_TAGS[name]: value for name, value in zip(stats, means)}}

    # ------------------------------------------------------------------ checkpoints

    def _learner_state(self) -> dict[str, Any]:
        return {
            **{name: module.state_dict() for name, module in self._learner_modules().items()},
            **{name: optimizer.state_dict() for name, optimizer in self._learner_optimizers().items()},
            "replay": self.replay.state_dict(),
        }

    def _restore_learner(self, saved: dict[str, Any]) -> None:
        for name, module in self._learner_modules().items():
            module.load_state_dict(saved[name])
        for name, optimizer in self._learner_optimizers().items():
            optimizer.load_state_dict(saved[name])
        self.replay.load_state_dict(saved["replay"], self.device)
