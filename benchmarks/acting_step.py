"""Time one acting step of the policy per memory core: what a CPU actor (IMPALA's, or any rollout on
the CPU) pays per step of its envs.

    python benchmarks/acting_step.py --cores lstm,gru,hqlt,deltanet --num-envs 8 --threads 1

Each core's preset (`memory=<core>`) on `--env`, no gradients, the state updated in place as the
Collector does; prints a markdown table of milliseconds per step (median of `--repeats` timings of
`--steps` steps each) and each core's ratio to the first.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hqlt.agents.policy import build_policy
from hqlt.configs import compose
from hqlt.envs import make


def step_time(core: str, env_overrides: list[str], num_envs: int, steps: int, repeats: int) -> float:
    """Median seconds per policy step `[num_envs, 1]` of `memory=<core>`."""
    cfg = compose([f"memory={core}", *env_overrides, "device=cpu"])
    env = make(cfg.env.id, **cfg.env.kwargs)
    policy = build_policy(cfg, env.observation_space, env.action_space)
    head = policy.action_head
    obs = torch.as_tensor(env.observation_space.sample()).float().expand(num_envs, 1, *env.observation_space.shape)
    prev_actions = torch.zeros(num_envs, 1, *head.action_shape, dtype=head.action_dtype)
    prev_rewards, resets = torch.zeros(num_envs, 1), torch.zeros(num_envs, 1, dtype=torch.bool)
    state = policy.initial_state(num_envs)
    timings = []
    with torch.no_grad():
        for repeat in range(repeats + 1):  # the first is a warm-up
            start = time.perf_counter()
            for _ in range(steps):
                policy(obs, prev_actions, prev_rewards, state, resets, in_place=True)
            timings.append((time.perf_counter() - start) / steps)
    return statistics.median(timings[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", default="lstm,gru,hqlt,deltanet,transformer")
    parser.add_argument("--env", default="env=popgym,env.id=popgym-RepeatPreviousEasy-v0",
                        help="comma-separated env overrides")
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cores = args.cores.split(",")
    times = {core: step_time(core, args.env.split(","), args.num_envs, args.steps, args.repeats) for core in cores}
    print(f"`python benchmarks/acting_step.py --cores {args.cores} --env {args.env} --num-envs {args.num_envs} "
          f"--threads {args.threads}`, torch {torch.__version__}\n")
    print("| core | ms per step | ratio to " + cores[0] + " |\n|---|---|---|")
    for core, seconds in times.items():
        print(f"| {core} | {seconds * 1e3:.3f} | {seconds / times[cores[0]]:.1f}x |")


if __name__ == "__main__":
    main()
