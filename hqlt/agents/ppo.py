"""PPO over whole rollouts: GAE with correct bootstrapping, and one update as a short linear function.

The learner re-runs the memory core in sequence mode over whole env rows (or the stored shorter
training sequences), from the detached state stored at each sequence start and with the stored
resets, so that it sees exactly what the actor saw.

Across ranks (hqlt.agents.distributed) the update is that of the union of the ranks' rollouts: every
rank draws the same minibatch order from the same generator state, so that minibatch k is the union
of the ranks' k-th minibatches, and the value statistics, the advantage normalisation, the
gradients, the non-finite check, the early stop and the logged statistics are all taken over the
ranks together; the parameters stay the same on every rank. One exception: the episodic recall
objective contrasts each rank's own rows (its negatives), so with agent.recall_coef > 0 the update is
not exactly that of one process on the union.
"""

from __future__ import annotations

import statistics
from collections import defaultdict

import torch
from torch import Tensor, nn

from hqlt.agents import distributed
from hqlt.agents.policy import Policy
from hqlt.agents.rollout import Rollout, SequenceBatch, training_sequences
from hqlt.configs.schema import PPOConfig

# Weight of the entropy floor's penalty, so that the floor holds as a constraint: near it, the penalty's
# gradient outweighs that of normalised advantages up to about 70 (at 1% of a 4-action uniform
# entropy); at weight 1 T-Maze's corridor sank to a sixth of the floor (benchmarks/RESULTS.md).
ENTROPY_FLOOR_WEIGHT = 10.0


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or inf; the update stopped before touching the parameters."""


def compute_gae(rollout: Rollout, gamma: float, gae_lambda: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimates and returns, both `[N, T]`.

    The value after step t is the next step's value, except: terminated episodes do not bootstrap
    (0), truncated ones bootstrap from the value of their final observation (`final_values`), and the
    last step bootstraps from `next_values`. Advantages never cross an episode end.
    """
    rewards, values = rollout.rewards, rollout.values
    num_steps = rewards.shape[1]
    following = torch.cat([values[:, 1:], rollout.next_values[:, None]], dim=1)
    next_values = torch.where(rollout.truncated, rollout.final_values, following)
    next_values = torch.where(rollout.terminated, torch.zeros_like(next_values), next_values)
    episode_continues = (~(rollout.terminated | rollout.truncated)).float()
    deltas = rewards + gamma * next_values - values
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(num_steps)):
        running = deltas[:, t] + gamma * gae_lambda * episode_continues[:, t] * running
        advantages[:, t] = running
    return advantages, advantages + values


def replay(
    policy: Policy, batch: SequenceBatch, recall_pairs: int = 0, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Re-runs the policy in sequence mode over `batch`: log-probs, entropies and values, each `[S, L]`,
    and the episodic recall loss (a scalar over `recall_pairs` pairs drawn with `generator`; 0 without)."""
    states = {name: value.detach() for name, value in batch.states.items()}
    y, features, _ = policy.memory(batch.obs, batch.prev_actions, batch.prev_rewards, states, batch.resets)
    dist, values = policy.action_head(y), policy.critic(y).squeeze(-1)
    recall_loss = policy.recall.loss(y, features, batch.resets, recall_pairs, generator)
    return dist.log_prob(batch.actions), dist.entropy(), values, recall_loss


def entropy_floor(policy: Policy, cfg: PPOConfig) -> float:
    """The least entropy (nats) a state's action distribution may keep: agent.min_entropy of the
    uniform distribution's; 0 for continuous actions (their entropy has no floor of that kind)."""
    max_entropy = policy.action_head.max_entropy
    return 0.0 if max_entropy is None else cfg.min_entropy * max_entropy


def entropy_deficit(entropy: Tensor, floor: float) -> Tensor:
    """Mean shortfall of each step's entropy (any shape, e.g. `[S, L]`) below `floor`: the states made
    (nearly) deterministic before their other actions were tried, such as a T-Maze junction that the
    corridor's "right" generalised to."""
    return (floor - entropy).clamp(min=0).mean()


def policy_advantages(advantages: Tensor, value_scale: Tensor, standardize: bool) -> Tensor:
    """The advantages (any shape) that weigh the policy gradient: in units of the returns' scale
    (PopArt's std; 1 without normalize_values) and, with `standardize`, to mean 0 and std 1 over the
    batch and all ranks."""
    advantages = advantages / value_scale
    if standardize:
        mean, std = distributed.mean_std(advantages)
        advantages = (advantages - mean) / (std + 1e-8)
    return advantages


def explained_variance(predicted: Tensor, target: Tensor) -> float:
    """1 - Var(target - predicted) / Var(target); nan when the target is constant."""
    variance = target.var()
    return float("nan") if variance == 0 else float(1 - (target - predicted).var() / variance)


def approx_kl(log_ratio: Tensor) -> Tensor:
    """KL(old || new) estimated from log(new / old) of actions the old policy drew, any shape: the mean of
    (ratio - 1) - log ratio, which is never negative and unbiased (Schulman's k3)."""
    return (log_ratio.exp() - 1 - log_ratio).mean()


def trunk_gradient_norms(trunk: list[nn.Parameter], critic_grads: tuple[Tensor | None, ...]) -> tuple[Tensor, Tensor]:
    """Norms of the actor's and the critic's gradient on the parameters both heads share (encoder, mix,
    core): the critic's is `critic_grads`, the actor's (with the recall objective) what the whole loss put
    into `.grad` minus it."""
    actor, critic = [], []
    for parameter, critic_grad in zip(trunk, critic_grads):
        if parameter.grad is not None:
            critic_grad = torch.zeros_like(parameter.grad) if critic_grad is None else critic_grad
            actor.append((parameter.grad - critic_grad).norm())
            critic.append(critic_grad.norm())
    return torch.stack(actor).norm(), torch.stack(critic).norm()


def checked_step(
    policy: Policy, optimizer: torch.optim.Optimizer, loss: Tensor, max_grad_norm: float, learner: str,
    parts: dict[str, Tensor],
) -> Tensor:
    """Averages the gradients (already in `policy`'s parameters) over ranks, with `loss` so that a NaN/inf
    loss on any rank stops every rank; clips their norm to `max_grad_norm` and steps, but raises
    NonFiniteLossError (naming `learner` and the scalar loss `parts`) before any parameter changes if
    the loss or the gradient is NaN/inf: the update's one host synchronisation. Returns the gradient
    norm before clipping."""
    ranks_loss = distributed.average_gradients(policy.parameters(), loss)
    grad_norm = nn.utils.clip_grad_norm_(policy.parameters(), max_grad_norm)
    if not bool(torch.isfinite(ranks_loss) & torch.isfinite(grad_norm)):
        described = ", ".join(f"{name} {value.item()}" for name, value in parts.items())
        raise NonFiniteLossError(f"{learner} loss is {loss.item()} ({described}), gradient norm {grad_norm.item()}")
    optimizer.step()
    return grad_norm


def ppo_update(
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    rollout: Rollout,
    cfg: PPOConfig,
    generator: torch.Generator,
) -> dict[str, float]:
    """One PPO update on a rollout; returns the mean of each loss and diagnostic over minibatches and
    ranks (the replay error: the maximum)."""
    advantages, returns = compute_gae(rollout, cfg.gamma, cfg.gae_lambda)
    if cfg.normalize_values:  # before the epochs; the acting values stay valid (PopArt keeps outputs)
        policy.value_layer.update(returns)
    value_scale = policy.value_layer.std
    sequences = training_sequences(rollout, advantages, returns)
    num_sequences = sequences.resets.shape[0]
    minibatch_size = num_sequences // cfg.num_minibatches
    stats: dict[str, list[Tensor]] = defaultdict(list)
    trunk = policy.trunk_parameters()
    floor = entropy_floor(policy, cfg)

    for _epoch in range(cfg.update_epochs):
        order = torch.randperm(num_sequences, generator=generator).to(rollout.resets.device)
        for start in range(0, num_sequences, minibatch_size):
            batch = sequences.rows(order[start : start + minibatch_size])

            # 1. Re-run the core over whole sequences from their stored initial states.
            log_probs, entropy, values, recall_loss = replay(
                policy, batch, cfg.recall_pairs, generator if cfg.recall_coef else None
            )

            # 2. Probability ratio of the new policy to the acting one, and how far it moved.
            log_ratio = log_probs - batch.log_probs
            ratio = log_ratio.exp()
            with torch.no_grad():
                if not stats["replay_error"]:  # before the first step the learner must reproduce the actor
                    stats["replay_error"].append(log_ratio.abs().max())
                stats["approx_kl"].append(approx_kl(log_ratio))
                stats["clip_fraction"].append(((ratio - 1).abs() > cfg.clip_coef).float().mean())

            # 3. Clipped policy loss on the minibatch's advantages.
            adv = policy_advantages(batch.advantages, value_scale, cfg.normalize_advantages)
            policy_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)).mean()

            # 4. Value loss in normalised units (std 1 without normalize_values), optionally clipped
            # around the acting values.
            value_error = ((values - batch.returns) / value_scale) ** 2
            if cfg.clip_value_loss:
                clip = cfg.clip_coef * value_scale
                clipped = batch.values + (values - batch.values).clamp(-clip, clip)
                value_error = torch.max(value_error, ((clipped - batch.returns) / value_scale) ** 2)
            value_loss = 0.5 * value_error.mean()

            # 5. Total loss with the entropy bonus, the entropy floor and the episodic recall objective
            # (on the trunk).
            entropy_mean = entropy.mean()
            actor_loss = policy_loss - cfg.ent_coef * entropy_mean + ENTROPY_FLOOR_WEIGHT * entropy_deficit(entropy, floor)
            critic_loss = cfg.vf_coef * value_loss
            loss = actor_loss + critic_loss + cfg.recall_coef * recall_loss

            # 6. Gradients; on the first minibatch also the critic's alone on the shared encoder, mix
            # and core (one extra backward pass), to log which of the two losses trains the memory.
            measure_trunk = not stats["value_grad_norm"]
            if measure_trunk:
                critic_grads = torch.autograd.grad(critic_loss, trunk, retain_graph=True, allow_unused=True)
            optimizer.zero_grad()
            loss.backward()
            if measure_trunk:
                policy_grad_norm, value_grad_norm = trunk_gradient_norms(trunk, critic_grads)
                stats["policy_grad_norm"].append(policy_grad_norm)
                stats["value_grad_norm"].append(value_grad_norm)

            # 7. The step: gradients averaged over ranks, clipped, never applied on a NaN/inf.
            grad_norm = checked_step(policy, optimizer, loss, cfg.max_grad_norm, "PPO",
                                     {"policy": policy_loss, "value": value_loss, "entropy": entropy_mean})
            for name, value in (("grad_norm", grad_norm), ("policy_loss", policy_loss), ("value_loss", value_loss),
                                ("entropy", entropy_mean), ("recall_loss", recall_loss), ("loss", loss)):
                stats[name].append(value.detach())

        if cfg.target_kl is not None and distributed.all_reduce_mean(stats["approx_kl"][-1]) > cfg.target_kl:
            break

    # 8. The reward input's scale follows the rewards, once the update is done (so that the acting and
    # the replayed inputs of this rollout were the same).
    policy.update_reward_scale(rollout.rewards)

    # Statistics stay on the device until here: one read-back per update, then one gather over ranks.
    summary = dict(zip(stats, torch.stack([torch.stack(values).float().mean() for values in stats.values()]).tolist()))
    summary["explained_variance"] = explained_variance(rollout.values.flatten(), returns.flatten())
    ranks = distributed.all_gather_objects(summary)
    return {name: (max if name == "replay_error" else statistics.fmean)([r[name] for r in ranks]) for name in summary}
