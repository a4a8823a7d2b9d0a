"""Recurrent DQN in the style of R2D2 (Kapturowski et al. 2019): a Q-network acts (Boltzmann exploration
mixed with epsilon-greedy, a temperature and an epsilon per env), its rollouts are replayed as whole
sequences through the recurrent core, and double Q-learning moves it towards n-step targets of a
Polyak-averaged target network.

    python train_rl.py agent=dqn [agent.updates_per_collect=8] [agent.n_step=5] ...

    Collector (PPO's) ── rollout [N, T] ──> replay buffer (hqlt.agents.replay) ──> dqn_update

Why a value-based learner: in the memory tasks the decisive step (a T-Maze junction, a Visual Match
door) comes once per episode, after hundreds of steps that make the policy nearly deterministic. A
policy gradient raises a rarely tried action's probability a little per update (PPO's clip: 20%),
while the corridor's updates push it back (benchmarks/RESULTS.md, the T-Maze junction). Here one tried
turn moves Q(junction, turn), and the greedy action follows Q as soon as it leads; exploration is a
temperature per env in units of the values' std (QPolicy), whatever the rewards' scale, an epsilon
per env for the actions whose values are generalised far below the greedy one, and the largest epsilon
in every env at the last steps of an episode as long as the longest (where a T-Maze junction is).

The network is the run's `QPolicy` (a Policy with a dueling head in PopArt units); the target network
is a copy of it. The math, per step t of a sequence of L (actions a of the Discrete space A):

    Q(t, a)      the online network's Q-values, replayed from its acting states      [B, L + 1, A]
    Qbar(t, a)   the target network's, from its stored start states                  [B, L + 1, A]
    b(t + 1)   = Qbar(t + 1, argmax_a Q(t + 1, a))          (double Q-learning)        [B, L]
    y_t        = sum_{k < m} gamma^k r_{t+k} + gamma^m b(t + m) [no episode end before t + m]
                 with m = min(n_step, steps to the sequence's end), stopped early at an episode's end
                 (with agent.q_lambda > 0: Peng's Q(lambda) over the sequence instead, `lambda_targets`)
    loss       = mean over the steps kept of 1/2 ((Q(t, a_t) - y_t) / std)^2   (std: PopArt's)
                 + recall_coef x the episodic recall objective over the L steps (hqlt/agents/recall.py)
    Qbar <- tau Q + (1 - tau) Qbar;  the value statistics of both move towards the targets' moments

A target whose window ends in a truncation (a time limit) would bootstrap from info["final_obs"],
which the Collector does not keep: those steps are left out of the loss, as in SAC. Like R2D2, the
n-step sums are taken along the acting (exploring) actions without off-policy correction.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from hqlt.agents import metrics
from hqlt.agents.policy import Policy, QPolicy
from hqlt.agents.ppo import NonFiniteLossError
from hqlt.agents.replay import ReplaySequences, ReplayTrainer
from hqlt.configs.schema import DQNConfig


def n_step_targets(
    rewards: Tensor, terminated: Tensor, truncated: Tensor, next_values: Tensor, gamma: float, n_step: int
) -> tuple[Tensor, Tensor]:
    """The n-step Q targets y_t and whether each is kept, both `[B, L]` (module docstring).

    rewards `[B, L]`; terminated, truncated bool `[B, L]`; next_values `[B, L]`: b(t + 1), the bootstrap
    value of the state after step t. A window stops at the first episode end inside it (no bootstrap
    after a termination; not kept if it is a truncation) and at the sequence's last step.
    """
    batch, length = rewards.shape
    padding = n_step - 1  # steps past the sequence's end, never read while a window is open

    def shifted(x: Tensor, k: int) -> Tensor:  # x_{t+k} for every t, padded past the end
        return torch.cat([x, x.new_zeros(batch, padding)], dim=1)[:, k : k + length]

    targets = torch.zeros_like(rewards)
    kept = torch.ones_like(terminated)
    open_windows = torch.ones_like(terminated)
    last_step = torch.arange(length, device=rewards.device).expand(batch, -1) == length - 1
    for k in range(n_step):
        ended = shifted(terminated, k)
        cut = shifted(truncated, k) & ~ended
        targets += gamma**k * open_windows * shifted(rewards, k)
        closing = open_windows & (ended | cut | shifted(last_step, k) | (k == n_step - 1))
        targets += gamma ** (k + 1) * (closing & ~ended & ~cut) * shifted(next_values, k)
        kept &= ~(closing & cut)
        open_windows &= ~closing
    return targets, kept


def lambda_targets(
    rewards: Tensor, terminated: Tensor, truncated: Tensor, next_values: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Peng's Q(lambda) targets over the whole sequence and whether each is kept, both `[B, L]`:

        G_t = r_t + gamma [(1 - lam) b(t + 1) + lam G_{t+1}]   (no bootstrap after a termination)

    with G_{t+1} replaced by b(t + 1) at the sequence's last step and where step t + 1 is a truncation
    (its successor is unknown: not kept). Inputs as `n_step_targets`. A value reaches the start of a
    1000-step corridor in one target, where n-step targets need a chain of 1000 / n target updates.
    """
    targets = torch.empty_like(rewards)
    kept = ~(truncated & ~terminated)
    length = rewards.shape[1]
    for t in reversed(range(length)):
        carried = next_values[:, t]
        if t + 1 < length:
            carried = torch.where(kept[:, t + 1], lam * targets[:, t + 1] + (1 - lam) * carried, carried)
        targets[:, t] = rewards[:, t] + gamma * ~terminated[:, t] * carried
    return targets, kept


def dqn_update(
    policy: QPolicy, optimizer: torch.optim.Optimizer, target: QPolicy, batch: ReplaySequences, cfg: DQNConfig,
    generator: torch.Generator,
) -> dict[str, Tensor]:
    """One gradient step of `policy` on `batch` (`[B, L(+1), ...]`), then the target's Polyak step and
    both networks' value statistics; returns the step's statistics (scalar tensors, on the device).
    `generator` draws the episodic recall objective's pairs. Raises NonFiniteLossError before any
    parameter changes if the loss or gradient is NaN or inf."""
    obs, prev_actions, prev_rewards, resets = batch.inputs()
    length = batch.length

    # 1. Replay the online network over the L + 1 steps from its acting states, the target network
    # from its stored start states: Q-values [B, L + 1, A].
    states = {name: value.detach() for name, value in batch.states.items()}
    y, features, _ = policy.memory(obs, prev_actions, prev_rewards, states, resets)
    q = policy.q_values(y)
    with torch.no_grad():
        target_q = target.q_values(target.memory(obs, prev_actions, prev_rewards, batch.replayed_states["target"],
                                                 resets)[0])

        # 2. Double Q-learning: the online network picks the next action, the target network values it;
        # n-step (or, with q_lambda > 0, Peng's Q(lambda)) targets from those values.
        greedy_next = q[:, 1:].argmax(-1, keepdim=True)
        next_values = target_q[:, 1:].gather(-1, greedy_next)[..., 0]  # [B, L]
        if cfg.q_lambda > 0:
            targets, kept = lambda_targets(batch.rewards, batch.terminated, batch.truncated, next_values, cfg.gamma,
                                           cfg.q_lambda)
        else:
            targets, kept = n_step_targets(batch.rewards, batch.terminated, batch.truncated, next_values, cfg.gamma,
                                           cfg.n_step)

    # 3. The TD loss at the actions taken, in units of the value statistics' std, and the episodic recall
    # objective over the L steps.
    taken = q[:, :length].gather(-1, batch.actions)[..., 0]  # [B, L]
    weights = kept.float()
    td = (taken - targets) / policy.value_layer.std
    td_loss = (0.5 * td.pow(2) * weights).sum() / weights.sum().clamp(min=1)
    recall_generator = generator if cfg.recall_coef else None
    recall_loss = policy.recall.loss(
        y[:, :length], features[:, :length], resets[:, :length], cfg.recall_pairs, recall_generator
    )
    loss = td_loss + cfg.recall_coef * recall_loss

    # 4. The step, never on a NaN/inf.
    optimizer.zero_grad()
    loss.backward()
    grad_norm = nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
    if not bool(torch.isfinite(loss) & torch.isfinite(grad_norm)):
        raise NonFiniteLossError(f"DQN loss is {loss.item()}, gradient norm {grad_norm.item()}")
    optimizer.step()

    # 5. Polyak: the target network follows; then both networks' value statistics follow the targets
    # (each keeping its Q-values), so that they stay in the same units.
    with torch.no_grad():
        torch._foreach_lerp_(list(target.parameters()), list(policy.parameters()), cfg.tau)
        policy.update_value_statistics(targets, kept)
        target.update_value_statistics(targets, kept)
        greedy_taken = (q[:, :length].argmax(-1, keepdim=True) == batch.actions).float().mean()

    return {
        "loss": loss.detach(), "q_mean": taken.detach().mean(), "target_mean": targets.mean(),
        "td_error": (td.detach().abs() * weights).sum() / weights.sum().clamp(min=1),
        "greedy_fraction": greedy_taken, "recall_loss": recall_loss.detach(), "grad_norm": grad_norm,
    }


class DqnTrainer(ReplayTrainer):
    """One run of agent=dqn: ReplayTrainer's collection into the replay buffer by the exploring QPolicy,
    one `dqn_update` per gradient step. Checkpoints also hold the target network."""

    AGENT = DQNConfig
    UPDATE_TAGS = metrics.DQN_UPDATE_TAGS
    # A T-Maze penalty of 1/L per step behind schedule is what tells a Q-network where it stands in a
    # corridor that looks the same everywhere: unscaled, a seed's Q-values stayed flat for 500k steps
    # on T-Maze 200 (benchmarks/RESULTS.md). SAC keeps the unscaled input, which its T-Maze 4 learns
    # more often with (the same section).
    MEASURES_REWARD_SCALE = True

    def _build_learner(self) -> None:
        self.target = copy.deepcopy(self.policy).requires_grad_(False)

    def _replayed_networks(self) -> dict[str, Policy]:
        return {"target": self.target}

    def _gradient_step(self, batch: ReplaySequences) -> dict[str, Tensor]:
        return dqn_update(self.policy, self.optimizer, self.target, batch, self.cfg.agent, self.generator)

    def _learner_modules(self) -> dict[str, nn.Module]:
        return {"target": self.target}

    def _agent_hparams(self) -> dict[str, Any]:
        agent = self.cfg.agent
        names = ("num_envs", "rollout_length", "sequence_length", "replay_size", "batch_size", "updates_per_collect",
                 "learning_starts", "gamma", "n_step", "q_lambda", "tau", "temperature", "temperature_alpha", "epsilon",
                 "final_steps", "recall_coef", "recall_pairs")
        return {name: getattr(agent, name) for name in names}
