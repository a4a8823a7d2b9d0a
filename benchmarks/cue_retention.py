"""Passive Visual Match: how much of the cue reaches the decision, for each core, as built (or trained).

    python benchmarks/cue_retention.py [--cores hqlt,deltanet,transformer,lstm] [--distractors 0,30,100,300,750]
                                       [--episodes 32] [--seeds 0,1,2] [--checkpoint PATH] [-- OVERRIDE ...]

For each distractor length, plays `--episodes` episodes with random actions up to the first step in
the reward room (the first step where the cue decides anything), then replays every episode twice
through the policy in sequence mode: as played, and with the cue's colour swapped for the next one
(the counterfactual; everything else, actions and apples included, unchanged). It prints

- `core`: the core output's change at the decision step, relative to its spread over the episodes
  there (1 = the cue moves the output as much as everything else does; 0 = the cue is lost), and
- `policy`: the total variation between the two action distributions there (what a policy gradient
  on the door can use).

The cores are the HQLT paper's sizes (benchmarks/memory_suite.py's PAPER_CORES), built with `--seeds`
(their mean and spread printed), or one trained policy with `--checkpoint`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

from hqlt.agents.policy import Policy, build_policy
from hqlt.configs import compose
from hqlt.envs import make
from hqlt.envs.visual_match import COLOUR, EXPLORE_STEPS, NUM_COLOURS, PALETTE

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory_suite import PAPER_CORES  # noqa: E402


def played_episodes(distractor_steps: int, episodes: int, seed: int) -> tuple[torch.Tensor, ...]:
    """`episodes` episodes of random actions up to the reward room's first step, and their counterfactuals.

    Returns obs and swapped obs uint8 `[N, T, 5, 5, 3]`, previous actions long `[N, T, 1]`, previous
    rewards `[N, T]` and resets bool `[N, T]`, with T = 15 + distractor_steps + 1.
    """
    env = make("hqlt/PassiveVisualMatch-v0", distractor_steps=distractor_steps)
    steps = EXPLORE_STEPS + distractor_steps + 1
    rng = np.random.default_rng(seed)
    obs = np.zeros((episodes, steps, *env.observation_space.shape), dtype=np.uint8)
    prev_actions = np.zeros((episodes, steps, 1), dtype=np.int64)
    prev_rewards = np.zeros((episodes, steps), dtype=np.float32)
    for episode in range(episodes):
        obs[episode, 0], _ = env.reset(seed=seed * 100_000 + episode)
        for t in range(1, steps):
            action = int(rng.integers(4))
            obs[episode, t], prev_rewards[episode, t], terminated, truncated, _ = env.step(action)
            prev_actions[episode, t] = action
            assert not (terminated or truncated), "the reward room's first step ends no episode"
    env.close()
    swapped = obs.copy()
    explore = swapped[:, :EXPLORE_STEPS]
    colours = [(explore == PALETTE[COLOUR + c]).all(-1) for c in range(NUM_COLOURS)]
    for c, cells in enumerate(colours):
        explore[cells] = PALETTE[COLOUR + (c + 1) % NUM_COLOURS]
    resets = np.zeros((episodes, steps), dtype=bool)
    resets[:, 0] = True
    return tuple(torch.from_numpy(x) for x in (obs, swapped, prev_actions, prev_rewards, resets))


@torch.no_grad()
def cue_effect(policy: Policy, episodes: tuple[torch.Tensor, ...]) -> tuple[float, float]:
    """(core output change relative to its spread, total variation of the policy) at the decision step,
    the last of `episodes` (`played_episodes`' tensors, `[N, T, ...]`), each a mean over the N episodes."""
    obs, swapped, prev_actions, prev_rewards, resets = episodes
    outputs, probs = [], []
    for observations in (obs, swapped):
        state = policy.initial_state(obs.shape[0])
        y, _, _ = policy.memory(observations, prev_actions, prev_rewards, state, resets)
        outputs.append(y[:, -1])
        probs.append(policy.action_head(y[:, -1:]).log_probs[0][:, 0].exp())
    change = (outputs[0] - outputs[1]).norm(dim=-1).mean()
    spread = (outputs[0] - outputs[0].mean(0)).norm(dim=-1).mean()
    total_variation = 0.5 * (probs[0] - probs[1]).abs().sum(-1).mean()
    return float(change / spread), float(total_variation)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", default="hqlt,deltanet,transformer,lstm")
    parser.add_argument("--distractors", default="0,30,100,300,750")
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--checkpoint", default=None)
    argv, overrides = parser.parse_known_args()
    overrides = [o for o in overrides if o != "--"]
    distractors = [int(d) for d in argv.distractors.split(",")]
    seeds = [int(s) for s in argv.seeds.split(",")]
    cores = argv.cores.split(",")
    unknown = [core for core in cores if core not in PAPER_CORES]
    if unknown:
        parser.error(f"unknown core(s) {unknown}; valid: {', '.join(PAPER_CORES)}")
    episodes = {d: played_episodes(d, argv.episodes, seed=d + 1) for d in distractors}
    space_env = make("hqlt/PassiveVisualMatch-v0")
    spaces = space_env.observation_space, space_env.action_space
    print("| core | distractor steps | core output change / spread | policy total variation |")
    print("|---|---|---|---|")
    if argv.checkpoint:
        policies = {Path(argv.checkpoint).name: [Policy.from_checkpoint(argv.checkpoint)[0]]}
    else:
        policies = {}
        for core in cores:
            policies[core] = []
            for seed in seeds:
                torch.manual_seed(seed)
                cfg = compose(["env=visual_match", *PAPER_CORES[core], f"seed={seed}", *overrides])
                policies[core].append(build_policy(cfg, *spaces))
    for name, built in policies.items():
        for d in distractors:
            effects = [cue_effect(policy.eval(), episodes[d]) for policy in built]
            core_changes, variations = zip(*effects)
            print(f"| {name} | {d} | {_mean_spread(core_changes)} | {_mean_spread(variations)} |", flush=True)


def _mean_spread(values: tuple[float, ...]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2e}"
    return f"{statistics.mean(values):.2e} ± {statistics.stdev(values):.1e}"


if __name__ == "__main__":
    main()
