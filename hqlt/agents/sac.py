"""Recurrent SAC-Discrete (Christodoulou 2019): off-policy learning from a replay buffer of training
sequences, replayed whole through the recurrent cores (Ni et al. 2022, "Recurrent model-free RL can
be a strong baseline for many POMDPs").

    python train_rl.py agent=sac [agent.updates_per_collect=8] [agent.target_entropy_ratio=0.3] ...

    Collector (PPO's) ── rollout [N, T] ──> sequences of L steps (+ the step after each) and
                                            the critics' start states ──> replay ring buffer
    sac_update  <── B sequences drawn uniformly ──────────────────────────────┘

The actor is the run's `Policy` and acts through the `Collector`, as PPO's does. The critic is a
`SoftQNetwork`: an encoder and memory core of its own (a second `Policy`, of which only the input
construction and core are used: `Policy.memory`) with two Q heads, and a target copy moved by Polyak
averaging. Separate actor and critic memories, as Ni et al. found necessary.

The math, per step t of a sequence (actions a of the Discrete space A, temperature alpha = exp(log alpha)):

    pi_t(a)      actor's distribution                         [B, L + 1, A]
    Q_i(t, a)    critic's heads i = 1, 2; Qbar_i the target's  [2, B, L, A] / [2, B, L + 1, A]
    V(t + 1)   = sum_a pi_{t+1}(a) (min_i Qbar_i(t + 1, a) - alpha log pi_{t+1}(a))       [B, L]
    y_t        = c r_t + gamma (1 - terminated_t) V(t + 1),  c = agent.reward_scale           [B, L]
    critic loss      = mean over steps not truncated of sum_i 1/2 (Q_i(t, a_t) - y_t)^2
    actor loss       = mean_t sum_a pi_t(a) (alpha log pi_t(a) - min_i Q_i(t, a))   (Q detached)
    temperature loss = mean_t log alpha (H(pi_t) - H_target),  H_target = target_entropy_ratio log|A|
    Qbar <- tau Q + (1 - tau) Qbar

Replay: each sequence holds the inputs of its L steps and of the step after them (`[S, L + 1, ...]`),
so that V(t + 1) of its last step comes from the same replay; a step after which an episode ended
holds the next episode's first observation there, which a terminated step does not bootstrap from.
A truncated step (a time limit) would bootstrap from info["final_obs"], which the Collector does not
keep: truncated steps are masked out of the critic loss, the one approximation (T-Maze and Visual
Match terminate, they never truncate).

Start states: the actor's are those the Collector stored at each sequence start (acting state). The
critic's and the target's are computed when a rollout enters the buffer: both replay the rollout
once, L steps at a time, from their state carried across rollouts (as the Collector carries the
actor's), without gradients. Running them while acting would change the Collector and its captured
step; a replay per rollout is one sequence-mode pass. Like any stored state (R2D2), these go stale
as the parameters move; the sequences' first steps carry that error.

The reward input's scale (`Policy.reward_scale`) is never updated: sequences replayed many updates
later must see the inputs their stored states were computed with.

One process: under torchrun, SAC is refused.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from dataclasses import dataclass, fields
from typing import Any

import gymnasium as gym
import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from hqlt.agents import distributed, metrics
from hqlt.agents.actions import init_layer
from hqlt.agents.policy import Policy
from hqlt.agents.ppo import NonFiniteLossError
from hqlt.agents.rollout import CARRY_FIELDS, EpisodeStats, Rollout
from hqlt.agents.trainer import Trainer, build_policy, collector_state, restore_collector
from hqlt.configs.schema import ConfigError, SACConfig
from hqlt.memory import State


class SoftQNetwork(nn.Module):
    """Twin soft Q-functions on a memory of their own: `trunk` (a Policy, used for its inputs and core
    through `Policy.memory`) and two heads, each `hidden_dim -> head_dim -> num_actions`."""

    def __init__(self, trunk: Policy, head_dim: int) -> None:
        super().__init__()
        space = trunk.action_head.space
        if not isinstance(space, gym.spaces.Discrete):
            raise ConfigError(f"agent=sac (SAC-Discrete) takes Discrete action spaces; this env's is {space}")
        self.trunk = trunk
        hidden_dim = trunk.core.hidden_dim
        # Q-values start near 0 for every action (small output gain, as the policy's logits): random
        # differences between actions at the start would make the actor deterministic before the
        # critic knows anything (an hqlt critic's start made passive T-Maze 10's actor collapse).
        self.heads = nn.ModuleList(
            nn.Sequential(init_layer(nn.Linear(hidden_dim, head_dim)), nn.ReLU(),
                          init_layer(nn.Linear(head_dim, int(space.n)), gain=0.01))
            for _ in range(2)
        )

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        return self.trunk.initial_state(batch_size, device)

    def forward(
        self, obs: Tensor, prev_actions: Tensor, prev_rewards: Tensor, state: State, resets: Tensor
    ) -> tuple[Tensor, State]:
        """Inputs as `Policy.forward` (`[B, T, ...]`): Q-values `[2, B, T, num_actions]` and the next state."""
        y, _, state = self.trunk.memory(obs, prev_actions, prev_rewards, state, resets)
        return torch.stack([head(y) for head in self.heads]), state


@dataclass
class ReplaySequences:
    """Training sequences of L steps: inputs of the L steps and the one after, `[S, L + 1, ...]` (obs,
    prev_actions, prev_rewards, resets); the L transitions `[S, L, ...]` (actions, log_probs the actor
    acted with, rewards, terminated, truncated); the start states `{name: [S, ...]}` of the actor, the
    critic and the target critic."""

    obs: Tensor
    prev_actions: Tensor
    prev_rewards: Tensor
    resets: Tensor
    actions: Tensor
    log_probs: Tensor
    rewards: Tensor
    terminated: Tensor
    truncated: Tensor
    actor_states: State
    critic_states: State
    target_states: State

    def tensors(self) -> dict[str, Tensor | State]:
        """The fields by name (a pytree of tensors)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def rows(self, index: Tensor) -> ReplaySequences:
        """The sequences at `index` (int `[S']`)."""
        return ReplaySequences(**pytree.tree_map(lambda x: x[index], self.tensors()))


# The per-step fields of a rollout that ReplaySequences keeps for its L steps.
TRANSITIONS = ("actions", "log_probs", "rewards", "terminated", "truncated")


def replay_sequences(
    rollout: Rollout, next_inputs: dict[str, Tensor], critic_states: State, target_states: State
) -> ReplaySequences:
    """Cuts every env row `[N, T]` into K = T / L sequences `[N * K, ...]` (env-major, as
    `training_sequences`). `next_inputs` are the inputs after the rollout's last step (CARRY_FIELDS,
    each `[N, ...]`: the collector's carry); the states `{name: [N * K, ...]}` are the critics' at
    the sequence starts (`sequence_start_states`)."""
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
        actor_states={name: value.flatten(0, 1) for name, value in rollout.states.items()},
        critic_states=critic_states,
        target_states=target_states,
    )


@torch.no_grad()
def sequence_start_states(
    critic: SoftQNetwork, rollout: Rollout, state: State, sequence_length: int
) -> tuple[State, State]:
    """Runs `critic` over the rollout's inputs `[N, T]` from `state` (its state before step 0), L steps
    at a time: its states before steps 0, L, 2L, ... as `{name: [N * K, ...]}` (env-major), and its
    state after the last step."""
    starts = []
    for start in range(0, rollout.resets.shape[1], sequence_length):
        starts.append(state)
        steps = slice(start, start + sequence_length)
        _, state = critic(rollout.obs[:, steps], rollout.prev_actions[:, steps], rollout.prev_rewards[:, steps], state,
                          rollout.resets[:, steps])
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


def soft_q_targets(rewards: Tensor, terminated: Tensor, next_soft_values: Tensor, gamma: float) -> Tensor:
    """y_t = r_t + gamma (1 - terminated_t) V(t + 1), all `[B, L]` (terminated bool): the soft TD targets."""
    return rewards + gamma * (~terminated).float() * next_soft_values


def soft_values(log_pi: Tensor, q: Tensor, alpha: Tensor) -> Tensor:
    """V = sum_a pi(a) (q(a) - alpha log pi(a)): log_pi and q `[..., A]`, alpha a scalar -> `[...]`."""
    return (log_pi.exp() * (q - alpha * log_pi)).sum(-1)


def replay_actor(actor: Policy, batch: ReplaySequences) -> Tensor:
    """The actor's log-probabilities of every action, `[S, L + 1, A]`, replayed in sequence mode over the
    batch's inputs from the stored (detached) acting states."""
    states = {name: value.detach() for name, value in batch.actor_states.items()}
    y, _, _ = actor.memory(batch.obs, batch.prev_actions, batch.prev_rewards, states, batch.resets)
    return actor.action_head(y).log_probs[0]


@dataclass
class SacLearner:
    """What SAC learns besides the actor: the critic, its target, the temperature and their optimisers
    (the actor's is the trainer's)."""

    critic: SoftQNetwork
    target_critic: SoftQNetwork
    log_alpha: nn.Parameter
    critic_optimizer: torch.optim.Optimizer
    alpha_optimizer: torch.optim.Optimizer
    target_entropy: float


def sac_update(
    actor: Policy, actor_optimizer: torch.optim.Optimizer, learner: SacLearner, batch: ReplaySequences, cfg: SACConfig
) -> dict[str, Tensor]:
    """One gradient step of the actor, the critic and the temperature on `batch` (`[B, L(+1), ...]`),
    then the target's Polyak step; returns the step's statistics (scalar tensors, on the device).
    Raises NonFiniteLossError before any parameter changes if a loss or gradient is NaN or inf."""
    critic, target_critic, log_alpha = learner.critic, learner.target_critic, learner.log_alpha
    length = batch.rewards.shape[1]
    alpha = log_alpha.detach().exp()
    inputs = (batch.obs, batch.prev_actions, batch.prev_rewards)

    # 1. Replay the actor over the L + 1 steps, the critic over the L steps and the target critic over
    # the L + 1 steps, each from its stored start state.
    log_pi = replay_actor(actor, batch)  # [B, L + 1, A]
    critic_states = {name: value.detach() for name, value in batch.critic_states.items()}
    q, _ = critic(*(x[:, :length] for x in inputs), critic_states, batch.resets[:, :length])  # [2, B, L, A]
    with torch.no_grad():
        target_q, _ = target_critic(*inputs, batch.target_states, batch.resets)  # [2, B, L + 1, A]

        # 2. Soft targets: the soft value of the step after each, from the target critic and the actor.
        next_soft_values = soft_values(log_pi[:, 1:], target_q[:, :, 1:].min(0).values, alpha)
        targets = soft_q_targets(batch.rewards * cfg.reward_scale, batch.terminated, next_soft_values, cfg.gamma)

    # 3. Critic loss at the actions taken, without the truncated steps (their bootstrap is unknown).
    taken = q.gather(-1, batch.actions.expand(2, *batch.actions.shape))[..., 0]  # [2, B, L]
    kept = (~(batch.truncated & ~batch.terminated)).float()
    critic_loss = (0.5 * (taken - targets).pow(2).sum(0) * kept).sum() / kept.sum().clamp(min=1)

    # 4. Actor loss: the expectation over all actions (no sampling) against the critic's Q, held fixed.
    log_pi_now = log_pi[:, :length]
    pi_now = log_pi_now.exp()
    min_q = q.detach().min(0).values
    actor_loss = (pi_now * (alpha * log_pi_now - min_q)).sum(-1).mean()
    entropy = -(pi_now * log_pi_now).sum(-1)  # [B, L]
    with torch.no_grad():  # how far the actor has moved from the policy that acted in these sequences
        log_ratio = (log_pi_now.gather(-1, batch.actions)[..., 0] - batch.log_probs).abs().mean()

    # 5. Temperature loss: alpha grows while the entropy is below the target and shrinks above it.
    alpha_loss = (log_alpha * (entropy.detach() - learner.target_entropy)).mean()

    # The three losses depend on disjoint parameters (Q and alpha detached where they meet): one backward.
    optimizers = (actor_optimizer, learner.critic_optimizer, learner.alpha_optimizer)
    for optimizer in optimizers:
        optimizer.zero_grad()
    loss = critic_loss + actor_loss + alpha_loss
    loss.backward()
    actor_grad_norm = nn.utils.clip_grad_norm_(actor.parameters(), cfg.max_grad_norm)
    critic_grad_norm = nn.utils.clip_grad_norm_(critic.parameters(), cfg.max_grad_norm)
    if not bool(torch.isfinite(torch.stack([loss, actor_grad_norm, critic_grad_norm])).all()):
        raise NonFiniteLossError(
            f"SAC loss is {loss.item()} (critic {critic_loss.item()}, actor {actor_loss.item()}, temperature "
            f"{alpha_loss.item()}), gradient norms: actor {actor_grad_norm.item()}, critic {critic_grad_norm.item()}"
        )
    for optimizer in optimizers:
        optimizer.step()

    # 6. Polyak: the target critic follows the critic.
    with torch.no_grad():
        torch._foreach_lerp_(list(target_critic.parameters()), list(critic.parameters()), cfg.tau)

    return {
        "critic_loss": critic_loss.detach(), "actor_loss": actor_loss.detach(), "alpha_loss": alpha_loss.detach(),
        "entropy": entropy.mean().detach(), "alpha": alpha, "q_mean": taken.detach().min(0).values.mean(),
        "target_mean": targets.mean(), "log_ratio": log_ratio, "critic_grad_norm": critic_grad_norm,
        "actor_grad_norm": actor_grad_norm,
    }


class SacTrainer(Trainer):
    """One run of agent=sac: Trainer's loop, logging, evaluation, checkpoints, resume and signal handling,
    with PPO's envs and Collector for experience; each update is one collection into the replay buffer
    and `updates_per_collect` SAC steps (none before `learning_starts` env steps). Checkpoints also hold
    the critics, the temperature, their optimisers and the replay buffer (`_learner_state`), and with a
    batched env the critics' carried states: a resumed run continues exactly."""

    AGENT = SACConfig

    def _build_experience(self) -> None:
        if distributed.world_size() > 1:
            raise ConfigError("agent=sac runs in one process; start it without torchrun")
        super()._build_experience()
        cfg, agent = self.cfg, self.cfg.agent
        critic = SoftQNetwork(build_policy(cfg, self.envs.single_observation_space, self.envs.single_action_space),
                              agent.head_dim).to(self.device)
        log_alpha = nn.Parameter(torch.tensor(math.log(agent.initial_alpha), device=self.device))
        self.learner = SacLearner(
            critic=critic,
            target_critic=copy.deepcopy(critic).requires_grad_(False),
            log_alpha=log_alpha,
            critic_optimizer=torch.optim.Adam(critic.parameters(), lr=agent.learning_rate, eps=1e-5, fused=True),
            alpha_optimizer=torch.optim.Adam([log_alpha], lr=agent.learning_rate, eps=1e-5, fused=True),
            target_entropy=agent.target_entropy_ratio * self.policy.action_head.max_entropy,
        )
        self.replay = ReplayBuffer(agent.replay_size)
        self.sequence_length = agent.sequence_length or agent.rollout_length

    def _start_experience(self, seed: int, saved: dict[str, Any] | None) -> None:
        """Fresh episodes and critic states, or those of a checkpoint (`saved`, see `_experience_state`)."""
        if saved is None:
            self.collector.restart(seed)
            self.critic_carry = self.learner.critic.initial_state(self.collector.num_envs, self.device)
            self.target_carry = self.learner.target_critic.initial_state(self.collector.num_envs, self.device)
        else:
            restore_collector(self.collector, saved["collector"])
            self.critic_carry = {name: value.to(self.device) for name, value in saved["critic_carry"].items()}
            self.target_carry = {name: value.to(self.device) for name, value in saved["target_carry"].items()}

    def _experience_state(self) -> dict[str, Any] | None:
        collector = collector_state(self.collector)
        if collector is None:  # gymnasium envs: fresh episodes on resume, and so fresh critic states
            return None
        return {"collector": collector, "critic_carry": self.critic_carry, "target_carry": self.target_carry}

    def _collect(self) -> tuple[Rollout, EpisodeStats]:
        """One rollout, cut into sequences that enter the replay buffer with the critics' start states."""
        rollout, episodes = self.collector.collect()
        critic_states, self.critic_carry = sequence_start_states(
            self.learner.critic, rollout, self.critic_carry, self.sequence_length
        )
        target_states, self.target_carry = sequence_start_states(
            self.learner.target_critic, rollout, self.target_carry, self.sequence_length
        )
        collector = self.collector
        carry = (collector.obs, collector.prev_action, collector.prev_reward, collector.resets)
        next_inputs = dict(zip(CARRY_FIELDS, carry))
        self.replay.add(replay_sequences(rollout, next_inputs, critic_states, target_states))
        return rollout, episodes

    def _update(self, rollout: Rollout) -> dict[str, float]:
        """`updates_per_collect` SAC steps on sequences drawn from the buffer, once `learning_starts` env
        steps are collected; the means of their statistics by TensorBoard tag."""
        agent = self.cfg.agent
        scalars = {metrics.REPLAY_SEQUENCES: float(self.replay.size)}
        if self.global_step < agent.learning_starts:
            return scalars
        learning_rate = self.optimizer.param_groups[0]["lr"]  # the trainer's schedule sets the actor's
        for optimizer in (self.learner.critic_optimizer, self.learner.alpha_optimizer):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate
        stats: dict[str, list[Tensor]] = defaultdict(list)
        for _ in range(agent.updates_per_collect):
            batch = self.replay.sample(agent.batch_size, self.generator)
            for name, value in sac_update(self.policy, self.optimizer, self.learner, batch, agent).items():
                stats[name].append(value)
        means = torch.stack([torch.stack(values).float().mean() for values in stats.values()]).tolist()
        return {**scalars, **{metrics.SAC_UPDATE_TAGS[name]: value for name, value in zip(stats, means)}}

    def _agent_hparams(self) -> dict[str, Any]:
        agent = self.cfg.agent
        names = ("num_envs", "rollout_length", "sequence_length", "replay_size", "batch_size", "updates_per_collect",
                 "learning_starts", "gamma", "tau", "target_entropy_ratio")
        return {name: getattr(agent, name) for name in names}

    def _learner_state(self) -> dict[str, Any]:
        learner = self.learner
        return {
            "critic": learner.critic.state_dict(),
            "target_critic": learner.target_critic.state_dict(),
            "log_alpha": learner.log_alpha.detach(),
            "critic_optimizer": learner.critic_optimizer.state_dict(),
            "alpha_optimizer": learner.alpha_optimizer.state_dict(),
            "replay": self.replay.state_dict(),
        }

    def _restore_learner(self, saved: dict[str, Any]) -> None:
        learner = self.learner
        learner.critic.load_state_dict(saved["critic"])
        learner.target_critic.load_state_dict(saved["target_critic"])
        with torch.no_grad():
            learner.log_alpha.copy_(saved["log_alpha"])
        learner.critic_optimizer.load_state_dict(saved["critic_optimizer"])
        learner.alpha_optimizer.load_state_dict(saved["alpha_optimizer"])
        self.replay.load_state_dict(saved["replay"], self.device)
