"""How many episodes lie whole in one rollout row, for rollout lengths without `agent.align_episodes`.

    python benchmarks/whole_episodes.py [--env-id hqlt/PassiveVisualMatch-v0] [--kwargs distractor_steps=750]
        [--rollout-lengths 1024,2048] [--num-envs 64] [--rollouts 8] [--seed 0]

No gradient crosses a rollout's start (the stored states are detached), so only an episode whose first
and last steps fall in the same rollout row can train the memory from its end back to its start. The
batched env is stepped with uniformly random actions for `--rollouts` rollouts of each length; an
episode counts as whole when it starts and ends in the same row. With `agent.align_episodes` every
episode no longer than the rollout is whole.
"""

from __future__ import annotations

import argparse

import torch
import yaml

from hqlt.envs import make_batched


def whole_fraction(env_id: str, kwargs: dict, rollout_length: int, num_envs: int, rollouts: int, seed: int) -> tuple[float, int]:
    """The fraction of ended episodes that lie whole in one row of `rollout_length` steps, and their count."""
    envs = make_batched(env_id, num_envs, device="cpu", seed=seed, **kwargs)
    envs.reset(seed=seed)
    generator = torch.Generator().manual_seed(seed)
    start = torch.zeros(num_envs, dtype=torch.long)
    whole = ended = 0
    for t in range(rollout_length * rollouts):
        actions = torch.randint(0, envs.single_action_space.n, (num_envs,), generator=generator)
        _, _, terminated, truncated, _ = envs.step(actions)
        done = terminated | truncated
        whole += int((done & (start // rollout_length == t // rollout_length)).sum())
        ended += int(done.sum())
        start = torch.where(done, t + 1, start)
    return whole / max(ended, 1), ended


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-id", default="hqlt/PassiveVisualMatch-v0", help="an id with a batched port")
    parser.add_argument("--kwargs", action="append", default=[], metavar="KEY=VALUE", help="env parameter; repeatable")
    parser.add_argument("--rollout-lengths", default="1024,2048")
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--rollouts", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    kwargs = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.kwargs)}
    print("| env | rollout length | episodes | whole in one row |\n|---|---|---|---|")
    for rollout_length in (int(length) for length in args.rollout_lengths.split(",")):
        fraction, ended = whole_fraction(args.env_id, kwargs, rollout_length, args.num_envs, args.rollouts, args.seed)
        print(f"| {args.env_id} {kwargs or ''} | {rollout_length} | {ended} | {fraction:.2f} |", flush=True)


if __name__ == "__main__":
    main()
