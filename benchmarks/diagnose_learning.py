"""Why does (or doesn't) a PPO run learn? Trains a config and prints the learning signal per update.

    python benchmarks/diagnose_learning.py [--every K] [--decision-window W] [hydra overrides ...]
    python benchmarks/diagnose_learning.py env=cartpole_position_only env.id=hqlt/PassiveVisualMatch-v0 \\
        env.name=pvm0 +env.kwargs.distractor_steps=0 memory=lstm total_steps=300000

Runs the trainer's own objects (envs, policy, collector, optimizer; its run directory goes to
log_dir) through the same loop as `Trainer` (its learning rate, rollout, `ppo_update`) and
prints, every K updates, averaged over them:
  success   training episodes that ended in the rollouts
  lr        the update's learning rate (annealed, and held to agent.lr_target_kl where set)
  |g|       total gradient norm before clipping, and `scale` = min(1, max_grad_norm / |g|)
  pi, v     gradient norms of the actor's and the critic's loss on the shared encoder, mix and core
  pi_eff    pi * scale: what the memory gets from the policy loss after clipping
  |A| dec   mean |advantage| at decision steps (the last W steps of terminated episodes) and elsewhere
  A dec     their mean after the update's normalisation: the weight the decisions get in the policy loss
  H dec     policy entropy at decision steps and elsewhere
  ev, kl, clip  explained variance, approximate KL, clip fraction
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
from torch import Tensor

from hqlt.agents.metrics import UPDATE_TAGS
from hqlt.agents.ppo import compute_gae, ppo_update, replay
from hqlt.agents.rollout import Rollout, training_sequences
from hqlt.agents.trainer import Trainer
from hqlt.configs import compose

COLUMNS = ("success", "learning_rate", "grad_norm", "scale", "policy_grad_norm", "value_grad_norm", "pi_eff", "adv_dec", "adv_other",
           "norm_adv_dec", "entropy_dec", "entropy_other", "value_loss", "explained_variance", "approx_kl",
           "clip_fraction")


def decision_mask(rollout: Rollout, window: int) -> Tensor:
    """Bool `[N, T]`: the last `window` steps of every episode that terminated inside the rollout."""
    ends = rollout.terminated.clone()
    mask = ends.clone()
    for _ in range(window - 1):
        # walk one step back from each marked step, but not across an episode start (resets[t])
        ends = torch.cat([ends[:, 1:] & ~rollout.resets[:, 1:], torch.zeros_like(ends[:, :1])], dim=1)
        mask |= ends
    return mask


def signal_stats(trainer: Trainer, rollout: Rollout, window: int) -> dict[str, float]:
    """Advantages and entropies at the decision steps against the rest, before the update."""
    cfg = trainer.cfg.agent
    advantages, returns = compute_gae(rollout, cfg.gamma, cfg.gae_lambda)
    with torch.no_grad():
        _, entropy, _, _ = replay(trainer.policy, training_sequences(rollout, advantages, returns))
    entropy = entropy.reshape(advantages.shape)
    decisive = decision_mask(rollout, window)
    normalised = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    return {
        "adv_dec": advantages[decisive].abs().mean().item(),
        "adv_other": advantages[~decisive].abs().mean().item(),
        "norm_adv_dec": normalised[decisive].abs().mean().item(),
        "entropy_dec": entropy[decisive].mean().item(),
        "entropy_other": entropy[~decisive].mean().item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--every", type=int, default=10, help="print every this many updates (their mean)")
    parser.add_argument("--decision-window", type=int, default=5, help="decision steps: the last W of an episode")
    parser.add_argument("overrides", nargs="*", help="hydra overrides, as for train_rl.py")
    args = parser.parse_args()
    cfg = compose(["progress=false", "log_dir=/tmp/diagnose_learning", *args.overrides])
    trainer = Trainer(cfg)
    agent = cfg.agent
    trainer.collector.restart(cfg.seed)
    print(f"{'update':>6} {'step':>8} " + " ".join(f"{name[:12]:>12}" for name in COLUMNS))
    window: dict[str, list[float]] = defaultdict(list)
    for update in range(trainer.num_updates):
        trainer.update = update
        learning_rate = trainer.set_learning_rate()
        rollout, episodes = trainer.collector.collect()
        row = signal_stats(trainer, rollout, args.decision_window)
        row["learning_rate"] = learning_rate
        row.update(ppo_update(trainer.policy, trainer.optimizer, rollout, agent, trainer.generator))
        trainer.adapt_learning_rate({UPDATE_TAGS[name]: value for name, value in row.items() if name in UPDATE_TAGS})
        row["scale"] = min(1.0, agent.max_grad_norm / row["grad_norm"])
        row["pi_eff"] = row["policy_grad_norm"] * row["scale"]
        if episodes.successes:
            row["success"] = sum(episodes.successes) / len(episodes.successes)
        for name, value in row.items():
            window[name].append(value)
        if (update + 1) % args.every == 0 or update + 1 == trainer.num_updates:
            step = (update + 1) * trainer.steps_per_update
            means = {name: sum(values) / len(values) for name, values in window.items()}
            values = " ".join(f"{means.get(name, float('nan')):>12.4g}" for name in COLUMNS)
            print(f"{update + 1:>6} {step:>8} {values}", flush=True)
            window.clear()
    trainer.writer.close()


if __name__ == "__main__":
    main()
