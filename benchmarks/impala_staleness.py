"""What stale stored states cost IMPALA on a memory task, and what R2D2's burn-in buys back.

    python benchmarks/impala_staleness.py [--core hqlt] [--updates 300] [--lags 1,4,16,64]
        [--burn-ins 0,5,10,20] [--learning-seeds 0,1] [--record]

1. The error itself. A learner trains on passive T-Maze 20 (synchronously, lag 0: one V-trace
   update per segment) and keeps its parameters after every update. For a version j and a lag k, the
   actor's parameters theta_j collect a rollout from fresh episodes, storing the core state at every
   step; the learner's theta_{j+k} then replays a segment that starts mid-episode (after the cue,
   before the junction) from (a) the state theta_j stored there (what IMPALA trains from), (b) the
   state theta_j stored B steps earlier, brought forward by a burn-in of B steps with theta_{j+k},
   and (c) the exact state: theta_{j+k} replaying the rollout from its start. Reported: the KL from
   the exact policy to (a) and (b) over the segment's steps and at its episode's last step (the turn,
   which the remembered cue decides), and the value error, averaged over 10 versions j of the second
   half of training.
2. What it does to learning. IMPALA runs (train_rl.py's trainer, 2 actor processes) on the same task
   with segments of 20 steps, which never hold a whole 21-step episode, so every segment starts from a
   stored state; burn_in 0 against 10, each seed of --learning-seeds.
"""

from __future__ import annotations

import argparse
import copy
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import markdown_table, record  # noqa: E402

from hqlt.agents import train  # noqa: E402
from hqlt.agents.impala import Actor, impala_update  # noqa: E402
from hqlt.agents.policy import Policy  # noqa: E402
from hqlt.agents.rollout import Collector, Rollout  # noqa: E402
from hqlt.agents.policy import build_policy  # noqa: E402
from hqlt.configs import compose  # noqa: E402
from hqlt.envs import make_envs  # noqa: E402

CORES = {
    "hqlt": ["memory=hqlt", "memory.options.num_layers=1", "memory.options.num_heads=2"],
    "lstm": ["memory=lstm"],
}
TASK = ["env.kwargs.corridor_length=20", "memory.hidden_dim=32", "agent.encoder_dim=32", "agent.head_dim=32",
        "agent.learning_rate=1e-3", "agent.ent_coef=0.03"]
EPISODE = 21  # steps of a passive T-Maze 20 episode (it always runs to the horizon or turns there)
# The replayed segment: 20 steps from 14 steps into the rollout's second episode (its cue was at step
# 21); the rollout ends with it. DECISION: the segment's step where that episode takes its last step,
# the turn at the junction, which only the remembered cue decides.
CUT, SEGMENT = EPISODE + 14, 20
DECISION = 2 * EPISODE - 1 - CUT
NUM_ENVS = 16


def train_snapshots(core: str, updates: int, seed: int) -> tuple[Policy, list[dict[str, torch.Tensor]], list[float]]:
    """Synchronous V-trace training (segments of one whole episode): the policy, its state dict after
    every update (index 0: the initial one) and the success of each update's episodes."""
    cfg = compose(["agent=impala", *CORES[core], *TASK, "agent.segment_length=21"])
    torch.manual_seed(seed)
    envs = make_envs(cfg.env.id, NUM_ENVS, seed, vectorization="gymnasium", **cfg.env.kwargs)
    policy = build_policy(cfg, envs.single_observation_space, envs.single_action_space)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.agent.learning_rate, eps=1e-5)
    actor = Actor(policy, envs, EPISODE, 0, seed)
    generator = torch.Generator().manual_seed(seed)
    snapshots, successes = [copy.deepcopy(policy.state_dict())], []
    for _ in range(updates):
        segments, _, episodes = actor.segment()
        impala_update(policy, optimizer, segments, cfg.agent, generator)
        snapshots.append(copy.deepcopy(policy.state_dict()))
        successes.append(float(np.mean(episodes.successes)) if episodes.successes else float("nan"))
    envs.close()
    return policy, snapshots, successes


def slice_steps(rollout: Rollout, start: int, stop: int) -> tuple[torch.Tensor, ...]:
    return tuple(x[:, start:stop] for x in (rollout.obs, rollout.prev_actions, rollout.prev_rewards))


def replay_from(policy: Policy, rollout: Rollout, start: int, state: dict[str, torch.Tensor]) -> tuple:
    """The policy's distribution log-probs and values over the segment [CUT, CUT + SEGMENT), replaying
    the rollout from step `start` (<= CUT) with `state` before it."""
    with torch.no_grad():
        dist, values, _ = policy(*slice_steps(rollout, start, CUT + SEGMENT), state, rollout.resets[:, start : CUT + SEGMENT])
    offset = CUT - start
    return torch.stack(dist.log_probs)[0][:, offset:], values[:, offset:]


def staleness_errors(policy: Policy, snapshots: list, lags: list[int], burn_ins: list[int], seed: int) -> dict:
    """(lag, B) -> (KL over the segment, KL at the decision step, |value error|), means over 10 versions j
    of the second half of training (where the memory is learned and used)."""
    envs = make_envs("hqlt/TMazePassive-v0", NUM_ENVS, seed + 1, vectorization="gymnasium", corridor_length=20)
    old, new = copy.deepcopy(policy), copy.deepcopy(policy)
    collector = Collector(old, envs, torch.device("cpu"), CUT + SEGMENT, 1)
    errors: dict[tuple[int, int], list[tuple[float, float, float]]] = {}
    for lag in lags:
        for version in np.linspace(len(snapshots) // 2, len(snapshots) - 1 - lag, 10).astype(int):
            old.load_state_dict(snapshots[version])
            new.load_state_dict(snapshots[version + lag])
            collector.restart(seed + int(version))
            rollout, _ = collector.collect()
            exact_log_probs, exact_values = replay_from(new, rollout, 0, old.initial_state(NUM_ENVS))
            for burn_in in burn_ins:
                stored = {name: value[:, CUT - burn_in] for name, value in rollout.states.items()}
                log_probs, values = replay_from(new, rollout, CUT - burn_in, stored)
                # KL(exact || replayed) per step [N, T]; rounding can make a zero KL slightly negative
                kl = (exact_log_probs.exp() * (exact_log_probs - log_probs)).sum(-1).clamp(min=0)
                errors.setdefault((lag, burn_in), []).append(
                    (kl.mean().item(), kl[:, DECISION].mean().item(), (values - exact_values).abs().mean().item())
                )
    envs.close()
    return {key: tuple(np.mean(values, axis=0)) for key, values in errors.items()}


def learning_runs(core: str, seeds: list[int], total_steps: int) -> list[list[object]]:
    """IMPALA with 20-step segments, burn_in 0 and 10, each seed: final eval success, seconds."""
    rows = []
    for burn_in in (0, 10):
        for seed in seeds:
            with tempfile.TemporaryDirectory() as log_dir:
                overrides = ["agent=impala", *CORES[core], *TASK, "agent.segment_length=20", f"agent.burn_in={burn_in}",
                             "agent.envs_per_actor=8", "agent.batch_segments=2", "agent.num_buffers=8",
                             f"total_steps={total_steps}", f"seed={seed}", "device=cpu", "checkpoint_interval=0",
                             "progress=false", f"log_dir={log_dir}"]
                start = time.monotonic()
                summary = train(compose(overrides))
            rows.append([burn_in, seed, f"{summary['eval_success']:.3f}", f"{summary['train_success']:.3f}",
                         f"{summary['sps']:.0f}", f"{time.monotonic() - start:.0f}"])
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--core", choices=sorted(CORES), default="hqlt")
    parser.add_argument("--updates", type=int, default=300)
    parser.add_argument("--lags", default="1,4,16,64")
    parser.add_argument("--burn-ins", default="0,5,10,20")
    parser.add_argument("--learning-seeds", default="0,1", help="comma-separated; empty: no learning runs")
    parser.add_argument("--learning-steps", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    lags = [int(x) for x in args.lags.split(",")]
    burn_ins = [int(x) for x in args.burn_ins.split(",")]

    start = time.monotonic()
    policy, snapshots, successes = train_snapshots(args.core, args.updates, args.seed)
    curve = " / ".join(f"{np.nanmean(successes[i : i + 50]):.2f}" for i in range(0, len(successes), 50))
    print(f"synchronous training: success per 50 updates {curve} ({time.monotonic() - start:.0f} s)", flush=True)
    errors = staleness_errors(policy, snapshots, lags, burn_ins, args.seed)
    rows = [[lag, burn_in, f"{kl:.4f}", f"{junction_kl:.4f}", f"{value_error:.4f}"]
            for (lag, burn_in), (kl, junction_kl, value_error) in sorted(errors.items())]
    error_table = markdown_table(["lag (updates)", "burn-in B", "KL(exact, replayed), segment mean",
                                  "KL at the turn", "mean |value error|"], rows)
    print(error_table, flush=True)
    seeds = [int(x) for x in args.learning_seeds.split(",") if x]
    learning_table = ""
    if seeds:
        learning_table = markdown_table(["burn_in", "seed", "final eval success", "last 100 training episodes",
                                         "steps/s", "seconds"], learning_runs(args.core, seeds, args.learning_steps))
        print(learning_table)
    if args.record:
        body = "\n".join([
            f"`python benchmarks/impala_staleness.py {shlex.join(sys.argv[1:])}`, CPU. Core {args.core} "
            f"({' '.join(CORES[args.core])}), passive T-Maze 20; the synchronous training's success per 50 "
            f"updates: {curve}.",
            "",
            "**1. The error of a stale stored state.** KL from the policy of the exact state (the learner's "
            "parameters replaying the whole rollout) to that of the replay IMPALA makes from the actor's stored "
            f"state (B = 0) or after a burn-in of B steps; the segment starts {CUT - EPISODE} steps into an "
            "episode, after its cue (B = 20 reaches back past the episode's start, so it replays the episode "
            "exactly); the turn: that episode's last step; means over 10 versions of the second half of "
            "training.",
            "",
            error_table,
            "",
            *(["**2. Learning with 20-step segments** (every segment starts from a stored state), 2 actor "
               f"processes, {args.learning_steps:,} env steps:", "", learning_table, ""] if seeds else []),
        ])
        record("IMPALA: stale states and burn-in", body)


if __name__ == "__main__":
    main()
