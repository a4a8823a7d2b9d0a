"""Recurrent SAC-Discrete (Christodoulou 2019): off-policy learning from a replay buffer of training
sequences, replayed whole through the recurrent cores (Ni et al. 2022, "Recurrent model-free RL can
be a strong baseline for many POMDPs").

    python train_rl.py agent=sac [agent.updates_per_collect=8] [agent.target_entropy_ratio=0.3] ...

    Collector (PPO's) ── rollout [N, T] ──> replay buffer (hqlt.agents.replay) ──> sac_update

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

Replay (hqlt.agents.replay): the actor replays from the states it acted with, the critic and its
target from theirs, stored when the rollout entered the buffer. A truncated step (a time limit) would
bootstrap from info["final_obs"], which the Collector does not keep: truncated steps are masked out of
the critic loss, the one approximation (T-Maze and Visual Match terminate, they never truncate).

One process: under torchrun, SAC is refused.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import torch
from torch import Tensor, nn

from hqlt.agents import metrics
from hqlt.agents.actions import init_layer
from hqlt.agents.policy import Policy, build_policy
from hqlt.agents.ppo import NonFiniteLossError
from hqlt.agents.replay import ReplaySequences, ReplayTrainer
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

    def forward(
        self, obs: Tensor, prev_actions: Tensor, prev_rewards: Tensor, state: State, resets: Tensor
    ) -> tuple[Tensor, State]:
        """Inputs as `Policy.forward` (`[B, T, ...]`): Q-values `[2, B, T, num_actions]` and the next state."""
        y, _, state = self.trunk.memory(obs, prev_actions, prev_rewards, state, resets)
        return torch.stack([head(y) for head in self.heads]), state


def soft_q_targets(rewards: Tensor, terminated: Tensor, next_soft_values: Tensor, gamma: float) -> Tensor:
    """y_t = r_t + gamma (1 - terminated_t) V(t + 1), all `[B, L]` (terminated bool): the soft TD targets."""
    return rewards + gamma * (~terminated).float() * next_soft_values


def soft_values(log_pi: Tensor, q: Tensor, alpha: Tensor) -> Tensor:
    """V = sum_a pi(a) (q(a) - alpha log pi(a)): log_pi and q `[..., A]`, alpha a scalar -> `[...]`."""
    return (log_pi.exp() * (q - alpha * log_pi)).sum(-1)


def replay_actor(actor: Policy, batch: ReplaySequences) -> Tensor:
    """The actor's log-probabilities of every action, `[S, L + 1, A]`, replayed in sequence mode over the
    batch's inputs from the stored (detached) acting states."""
    obs, prev_actions, prev_rewards, resets = batch.inputs()
    states = {name: value.detach() for name, value in batch.states.items()}
    y, _, _ = actor.memory(obs, prev_actions, prev_rewards, states, resets)
    return actor.action_head(y).log_probs[0]


class Temperature(nn.Module):
    """The entropy bonus's weight alpha, learned as `log_alpha`."""

    def __init__(self, initial_alpha: float) -> None:
        super().__init__()
        self.log_alpha = nn.Parameter(torch.tensor(math.log(initial_alpha)))


@dataclass
class SacLearner:
    """What SAC learns besides the actor: the critic, its target, the temperature and their optimisers
    (the actor's is the trainer's)."""

    critic: SoftQNetwork
    target_critic: SoftQNetwork
    temperature: Temperature
    critic_optimizer: torch.optim.Optimizer
    alpha_optimizer: torch.optim.Optimizer
    target_entropy: float


def sac_update(
    actor: Policy, actor_optimizer: torch.optim.Optimizer, learner: SacLearner, batch: ReplaySequences, cfg: SACConfig
) -> dict[str, Tensor]:
    """One gradient step of the actor, the critic and the temperature on `batch` (`[B, L(+1), ...]`),
    then the target's Polyak step; returns the step's statistics (scalar tensors, on the device).
    Raises NonFiniteLossError before any parameter changes if a loss or gradient is NaN or inf."""
    critic, target_critic, log_alpha = learner.critic, learner.target_critic, learner.temperature.log_alpha
    length = batch.length
    alpha = log_alpha.detach().exp()

    # 1. Replay the actor over the L + 1 steps, the critic over the L steps and the target critic over
    # the L + 1 steps, each from its stored start state.
    log_pi = replay_actor(actor, batch)  # [B, L + 1, A]
    critic_states = {name: value.detach() for name, value in batch.replayed_states["critic"].items()}
    obs, prev_actions, prev_rewards, resets = batch.inputs(slice(length))
    q, _ = critic(obs, prev_actions, prev_rewards, critic_states, resets)  # [2, B, L, A]
    with torch.no_grad():
        obs, prev_actions, prev_rewards, resets = batch.inputs()
        target_q, _ = target_critic(obs, prev_actions, prev_rewards, batch.replayed_states["target_critic"],
                                    resets)  # [2, B, L + 1, A]

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


class SacTrainer(ReplayTrainer):
    """One run of agent=sac: ReplayTrainer's collection into the replay buffer, one `sac_update` per
    gradient step. Checkpoints also hold the critics, the temperature and their optimisers."""

    AGENT = SACConfig
    UPDATE_TAGS = metrics.SAC_UPDATE_TAGS

    def _build_learner(self) -> None:
        cfg, agent = self.cfg, self.cfg.agent
        trunk = build_policy(cfg, self.envs.single_observation_space, self.envs.single_action_space)
        critic = SoftQNetwork(trunk, agent.head_dim).to(self.device)
        temperature = Temperature(agent.initial_alpha).to(self.device)
        self.learner = SacLearner(
            critic=critic,
            target_critic=copy.deepcopy(critic).requires_grad_(False),
            temperature=temperature,
            critic_optimizer=torch.optim.Adam(critic.parameters(), lr=agent.learning_rate, eps=1e-5, fused=True),
            alpha_optimizer=torch.optim.Adam(temperature.parameters(), lr=agent.learning_rate, eps=1e-5, fused=True),
            target_entropy=agent.target_entropy_ratio * self.policy.action_head.max_entropy,
        )

    def _replayed_networks(self) -> dict[str, Policy]:
        return {"critic": self.learner.critic.trunk, "target_critic": self.learner.target_critic.trunk}

    def _gradient_step(self, batch: ReplaySequences) -> dict[str, Tensor]:
        return sac_update(self.policy, self.optimizer, self.learner, batch, self.cfg.agent)

    def _learner_modules(self) -> dict[str, nn.Module]:
        learner = self.learner
        return {"critic": learner.critic, "target_critic": learner.target_critic, "temperature": learner.temperature}

    def _learner_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"critic_optimizer": self.learner.critic_optimizer, "alpha_optimizer": self.learner.alpha_optimizer}

    def _agent_hparams(self) -> dict[str, Any]:
        agent = self.cfg.agent
        names = ("num_envs", "rollout_length", "sequence_length", "replay_size", "batch_size", "updates_per_collect",
                 "learning_starts", "gamma", "tau", "target_entropy_ratio")
        return {name: getattr(agent, name) for name in names}
