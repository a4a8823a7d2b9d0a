"""Passive T-Maze, where a learner's determinism goes: the policy in the corridor and at the junction along training.

    python benchmarks/tmaze_junction.py [--corridor-length 100] [--every 5] [-- OVERRIDE ...]

Trains with the given config overrides (default: PPO, lstm, 64 envs, one whole episode per rollout,
the task's own penalty, the learner's defaults; agent=dqn for DQN) and every `--every` updates replays
one episode that walks the whole corridor, once with the cue up and once down. For a policy it prints
p(right) over the corridor (mean and min) and at the junction p(right), p(up) and p(down) for each cue,
and the junction's value; for DQN's Q-network the same in Q-values: the gap of "right" over the best
other action in the corridor and each action's Q minus Q(right) at the junction, in units of the value
statistics' std (what its exploration temperatures are in). That shows whether "right" is learned in
the corridor, whether it generalises to the junction before a turn is tried there, and whether the
turn follows the cue.
"""

from __future__ import annotations

import argparse

import torch

from hqlt.agents import QPolicy
from hqlt.agents.trainer import Trainer, trainer_class
from hqlt.configs import compose
from hqlt.envs.tmaze import DOWN, LEFT, RIGHT, UP


def walked_episodes(corridor_length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The observations, previous actions and resets `[2, L + 1, ...]` of two episodes that walk right
    to the junction: row 0 with the cue up, row 1 with it down."""
    steps = corridor_length + 1
    obs = torch.zeros(2, steps, 3)
    obs[0, 0, 0] = obs[1, 0, 1] = 1.0  # the cue, in the first observation
    obs[:, -1, 2] = 1.0  # at the junction
    prev_actions = torch.full((2, steps, 1), RIGHT, dtype=torch.long)
    resets = torch.zeros(2, steps, dtype=torch.bool)
    resets[:, 0] = True
    return obs, prev_actions, resets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corridor-length", type=int, default=100)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--total-steps", type=int, default=3_000_000)
    argv, overrides = parser.parse_known_args()
    length = argv.corridor_length
    cfg = compose([
        "env=tmaze_passive", f"env.kwargs.corridor_length={length}", "memory=lstm", "agent.num_envs=64",
        f"agent.rollout_length={length + 1}", f"total_steps={argv.total_steps}", "eval.interval=0",
        "progress=false", "checkpoint_interval=0", "log_dir=/tmp/tmaze_junction", *[o for o in overrides if o != "--"],
    ])
    trainer = trainer_class(cfg)(cfg)
    obs, prev_actions, resets = walked_episodes(length)
    for update in range(trainer.num_updates):
        trainer._train_one_update()
        if update % argv.every:
            continue
        if isinstance(trainer.policy, QPolicy):
            print(f"update {update} step {trainer.global_step}: {q_gaps(trainer, obs, prev_actions, resets)}", flush=True)
            continue
        with torch.no_grad():
            state = trainer.policy.initial_state(2, device=trainer.device)
            dist, values, _ = trainer.policy(*(x.to(trainer.device) for x in (obs, prev_actions)),
                                             torch.zeros(2, length + 1, device=trainer.device), state,
                                             resets.to(trainer.device))
        p = {a: dist.log_prob(torch.full_like(prev_actions, a).to(trainer.device)).exp().cpu() for a in (RIGHT, UP, DOWN)}
        corridor = p[RIGHT][:, 1:length]
        print(f"update {update} step {trainer.global_step}: corridor p(right) mean {corridor.mean():.4f} "
              f"min {corridor.min():.4f} | junction p(right) {p[RIGHT][:, -1].mean():.4f}, "
              f"cue up: p(up) {p[UP][0, -1]:.4f} p(down) {p[DOWN][0, -1]:.4f}, "
              f"cue down: p(up) {p[UP][1, -1]:.4f} p(down) {p[DOWN][1, -1]:.4f}, value {values[:, -1].mean():.3f}",
              flush=True)


def q_gaps(trainer: Trainer, obs: torch.Tensor, prev_actions: torch.Tensor, resets: torch.Tensor) -> str:
    """A QPolicy's Q-values on the walked episodes (`walked_episodes`), in units of its value statistics' std."""
    policy, device = trainer.policy, trainer.device
    length = obs.shape[1] - 1
    with torch.no_grad():
        state = policy.initial_state(2, device=device)
        y, _, _ = policy.memory(obs.to(device), prev_actions.to(device), torch.zeros(2, length + 1, device=device),
                                state, resets.to(device))
        std = policy.value_layer.std
        q = (policy.q_values(y) / std).cpu()
    corridor = q[:, 1:length, RIGHT] - q[:, 1:length, [UP, LEFT, DOWN]].max(-1).values
    junction = q[:, -1] - q[:, -1, RIGHT : RIGHT + 1]
    return (f"std {float(std):.4f} | corridor gap of right mean {corridor.mean():.2f} min {corridor.min():.2f} | "
            f"junction Q - Q(right): cue up: up {junction[0, UP]:.2f} down {junction[0, DOWN]:.2f}, "
            f"cue down: up {junction[1, UP]:.2f} down {junction[1, DOWN]:.2f}")


if __name__ == "__main__":
    main()
