"""IMPALA against PPO on CPU-bound envs: env steps/s and learning curves, measured in one invocation.

    python benchmarks/impala.py [--actors 16] [--envs-per-actor 8] [--total-steps 2000000]
        [--tasks minigrid,popgym] [--cores lstm,hqlt] [--device auto] [--log-dir DIR]
        [--record] [--label "GPU machine"] [-- OVERRIDE ...]

Every (task, core) trains twice with `python train_rl.py`, one run after the other: PPO with
actors x envs_per_actor envs stepped in its one process, and IMPALA with --actors actor processes of
--envs-per-actor envs each, so that both step the same number of envs. The envs are gymnasium
vector envs on the host (Python envs: what IMPALA's actors spread over the cores). Runs evaluate
only at the end, so that steps/s is the training loop's. The table: steps/s of each run, IMPALA's
over PPO's, the training return at a quarter, half, three quarters and all of the budget (the
learning curve, from the run's events) and the final greedy evaluation; --record writes it to
benchmarks/RESULTS.md under "IMPALA vs PPO (<label>)". Overrides after `--` go to every run.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import markdown_table, record  # noqa: E402

from hqlt.agents import metrics  # noqa: E402
from hqlt.compare import load_run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TASKS = {
    "minigrid": ["env=any", "env.id=MiniGrid-MemoryS13Random-v0", "env.vectorization=gymnasium"],
    "popgym": ["env=any", "env.id=popgym-RepeatPreviousEasy-v0", "env.vectorization=gymnasium"],
    # The passive T-Maze with a corridor of 100 and the task's own penalty; IMPALA's segments and PPO's
    # rollouts hold one whole 101-step episode.
    "tmaze100": ["env=tmaze_passive", "env.kwargs.corridor_length=100", "env.vectorization=gymnasium"],
}
SEGMENT_LENGTH = {"minigrid": 64, "popgym": 64, "tmaze100": 101}
CURVE_POINTS = (0.25, 0.5, 0.75, 1.0)


def agent_overrides(agent: str, task: str, args: argparse.Namespace) -> list[str]:
    """PPO with all the envs in one process, or IMPALA with them spread over the actors."""
    if agent == "ppo":
        rollout = ["agent.rollout_length=101"] if task == "tmaze100" else []
        return ["agent=ppo", f"agent.num_envs={args.actors * args.envs_per_actor}", *rollout]
    return [
        "agent=impala", f"agent.num_actors={args.actors}", f"agent.envs_per_actor={args.envs_per_actor}",
        f"agent.segment_length={SEGMENT_LENGTH[task]}", f"agent.batch_segments={max(1, args.actors // 2)}",
        f"agent.num_buffers={2 * args.actors}",
    ]


def train(task: str, core: str, agent: str, args: argparse.Namespace) -> tuple[Path, float, list[str]]:
    """One training run; its run directory, wall seconds and command line."""
    log_dir = args.log_dir / task / agent
    overrides = [
        *TASKS[task], f"memory={core}", *agent_overrides(agent, task, args), f"total_steps={args.total_steps}",
        f"device={args.device}", "eval.interval=0", "checkpoint_interval=0", "progress=false", f"log_dir={log_dir}",
        *args.overrides,
    ]
    command = [sys.executable, str(REPO / "train_rl.py"), *overrides]
    start = time.monotonic()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    (run_dir,) = sorted(log_dir.glob(f"*/{core}/*"))[-1:]
    return run_dir, time.monotonic() - start, overrides


def at_fraction(steps: np.ndarray, values: np.ndarray, fraction: float, total: int) -> float:
    """The mean of the values logged in the tenth of the budget up to `fraction` of it (nan if none)."""
    window = (steps > (fraction - 0.1) * total) & (steps <= fraction * total + 1)
    return float(np.mean(values[window])) if window.any() else float("nan")


def summary(run_dir: Path, total_steps: int) -> dict[str, object]:
    run = load_run(run_dir)
    steps, returns = run.scalars[metrics.EPISODE_RETURN]
    return {
        "sps": float(run.scalars[metrics.SPS][1][-1]),
        "curve": [at_fraction(steps, returns, fraction, total_steps) for fraction in CURVE_POINTS],
        "final_return": run.final("return"),
        "final_success": run.final("success"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actors", type=int, default=16, help="IMPALA's actor processes (the GPU machine has 16 cores)")
    parser.add_argument("--envs-per-actor", type=int, default=8)
    parser.add_argument("--total-steps", type=int, default=2_000_000)
    parser.add_argument("--tasks", default="minigrid,popgym", help=f"comma-separated, of {', '.join(TASKS)}")
    parser.add_argument("--cores", default="lstm,hqlt")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--log-dir", type=Path, default=REPO / "runs" / "benchmark_impala")
    parser.add_argument("--record", action="store_true", help="write the table to benchmarks/RESULTS.md")
    parser.add_argument("--label", default="GPU machine", help='names the RESULTS section "IMPALA vs PPO (<label>)"')
    parser.add_argument("overrides", nargs="*", help="config overrides for every run (after --)")
    args = parser.parse_args()

    rows, commands = [], []
    for task in args.tasks.split(","):
        for core in args.cores.split(","):
            results = {}
            for agent in ("ppo", "impala"):
                run_dir, seconds, overrides = train(task, core, agent, args)
                results[agent] = summary(run_dir, args.total_steps)
                commands.append(f"- {task} / {core} / {agent}: `python train_rl.py {shlex.join(overrides)}`")
                print(f"{task} / {core} / {agent}: {results[agent]['sps']:.0f} steps/s, {seconds:.0f} s wall", flush=True)
            for agent, result in results.items():
                ratio = result["sps"] / results["ppo"]["sps"]
                rows.append([task, core, agent, f"{result['sps']:,.0f}", f"{ratio:.2f}",
                             " / ".join(f"{value:.3f}" for value in result["curve"]),
                             f"{result['final_return']:.3f}", f"{result['final_success']:.3f}"])
    header = ["task", "core", "agent", "steps/s", "vs PPO", "training return at 1/4, 1/2, 3/4, 1 of the budget",
              "final eval return", "final eval success"]
    table = markdown_table(header, rows)
    print(table)
    if args.record:
        body = "\n".join([
            f"`python benchmarks/impala.py {shlex.join(sys.argv[1:])}` on {platform.machine()} with {os.cpu_count()} "
            f"CPUs, device {args.device}: {args.total_steps:,} env steps "
            f"per run, IMPALA with {args.actors} actor processes of {args.envs_per_actor} envs, PPO with "
            f"{args.actors * args.envs_per_actor} envs in one process, one run after the other. Training return: the "
            f"mean of the training episodes logged in the tenth of the budget up to that point; final eval: 32 "
            f"greedy episodes (nan success: the env defines none).",
            "",
            table,
            "",
            "Commands:",
            *commands,
        ])
        record(f"IMPALA vs PPO ({args.label})", body)


if __name__ == "__main__":
    main()
