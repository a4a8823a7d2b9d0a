"""Environment throughput: env steps/s of hqlt.envs.make_vector, sync and async, against plain gymnasium.

The peer is the same env from `gymnasium.make` (no hqlt wrappers) in a gymnasium vector env with its
default autoreset, so the ratio shows what the contract (observation kinds, episode statistics,
SAME_STEP autoreset) costs. Random actions; the rate counts single-env steps (vector steps x num_envs).

    python benchmarks/env_throughput.py [--num-envs 8] [--seconds 2] [--no-record]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import hqlt.envs  # noqa: E402  (registers the hqlt/ ids)
from results import markdown_table, record  # noqa: E402

SECTION = "Environment throughput"
ENVS = [
    ("hqlt/TMazePassive-v0", {"corridor_length": 100}),
    ("popgym-RepeatPreviousMedium-v0", {}),
    ("MiniGrid-MemoryS13Random-v0", {}),
    ("hqlt/PassiveVisualMatch-v0", {"distractor_steps": 750}),
]


def steps_per_second(venv: gym.vector.VectorEnv, seconds: float) -> float:
    """Single-env steps per second of random-action stepping for about `seconds` (after a warm-up)."""
    venv.action_space.seed(0)
    venv.reset(seed=0)
    actions = [venv.action_space.sample() for _ in range(64)]
    for action in actions[:16]:
        venv.step(action)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for action in actions:
            venv.step(action)
        steps += len(actions)
    return steps * venv.num_envs / (time.perf_counter() - start)


def peer_vector(env_id: str, kwargs: dict, num_envs: int, asynchronous: bool) -> gym.vector.VectorEnv:
    env_fns = [lambda: gym.make(env_id, **kwargs) for _ in range(num_envs)]
    if not asynchronous:
        return gym.vector.SyncVectorEnv(env_fns)
    # MiniGrid's Dict observation holds a text mission, which shared memory cannot carry
    shared_memory = not env_id.startswith("MiniGrid")
    return gym.vector.AsyncVectorEnv(env_fns, shared_memory=shared_memory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=2.0, help="timed stepping per measurement")
    parser.add_argument("--no-record", action="store_true", help="print only, do not touch RESULTS.md")
    args = parser.parse_args()

    rows = []
    for env_id, kwargs in ENVS:
        for asynchronous in (False, True):
            mode = "async" if asynchronous else "sync"
            ours_env = hqlt.envs.make_vector(env_id, args.num_envs, seed=0, asynchronous=asynchronous, **kwargs)
            peer_env = peer_vector(env_id, kwargs, args.num_envs, asynchronous)
            ours, peer = steps_per_second(ours_env, args.seconds), steps_per_second(peer_env, args.seconds)
            ours_env.close()
            peer_env.close()
            label = env_id + "".join(f" {k}={v}" for k, v in kwargs.items())
            rows.append([label, mode, f"{ours:,.0f}", f"{peer:,.0f}", f"{ours / peer:.2f}"])
            print(" | ".join(rows[-1]), flush=True)

    table = markdown_table(["env", "vector", "hqlt steps/s", "gymnasium steps/s", "ratio"], rows)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores (shared)"
    body = (
        f"`python benchmarks/env_throughput.py --num-envs {args.num_envs} --seconds {args.seconds}` on {machine}.\n"
        "Single-env steps/s with random actions over a vector of "
        f"{args.num_envs} envs. hqlt = `hqlt.envs.make_vector` (contract observations, episode stats, SAME_STEP "
        "autoreset); gymnasium = the same id from `gymnasium.make` in a plain gymnasium vector env (peer); "
        "ratio = hqlt / gymnasium.\n\n" + table
    )
    print(table)
    if not args.no_record:
        record(SECTION, body)


if __name__ == "__main__":
    main()
