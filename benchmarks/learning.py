"""Learning benchmark: does the default config learn, and does memory matter on a 100-step T-Maze?

    python benchmarks/learning.py [--only NAME ...] [--time-limit S] [--jobs N] [--log-dir DIR] [--record]

Runs each configuration as `python train_rl.py <overrides>` in its own process (in parallel, one
torch thread each), then reads the final evaluation (or, for a run stopped by --time-limit, the
last 100 training episodes) from the event files and prints a table; --record writes it to the
`## Learning` section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import markdown_table, record  # noqa: E402

from hqlt.agents import metrics  # noqa: E402
from hqlt.compare import load_runs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TMAZE_100 = ["experiment=tmaze_passive_100"]
RUNS: dict[str, list[str]] = {
    "default (hqlt, T-Maze 20)": [],
    "T-Maze 100 hqlt": [*TMAZE_100, "memory=hqlt"],
    "T-Maze 100 lstm": [*TMAZE_100, "memory=lstm"],
    "T-Maze 100 mlp": [*TMAZE_100, "memory=mlp"],
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def launch(name: str, overrides: list[str], log_dir: Path, time_limit: float | None) -> subprocess.Popen:
    args = [sys.executable, str(REPO / "train_rl.py"), *overrides, f"log_dir={log_dir / slug(name)}", "progress=false"]
    log = open(log_dir / f"{slug(name)}.log", "w")
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    process.started, process.time_limit, process.command = time.monotonic(), time_limit, " ".join(args[1:])
    return process


def result(name: str, log_dir: Path) -> dict[str, object]:
    """Final success/return of the run's events; for a run stopped by the time limit its last periodic
    evaluation, or its training episodes when it has none."""
    (run,) = [run for env_dir in (log_dir / slug(name)).iterdir() for run in load_runs(env_dir)]
    scalars = run.scalars
    if metrics.FINAL_SUCCESS in scalars:
        source, success, ret = "final eval", scalars[metrics.FINAL_SUCCESS][1][-1], scalars[metrics.FINAL_RETURN][1][-1]
    elif metrics.EVAL_SUCCESS in scalars:
        success, ret = scalars[metrics.EVAL_SUCCESS][1][-1], scalars[metrics.EVAL_RETURN][1][-1]
        source = f"eval at {int(scalars[metrics.EVAL_SUCCESS][0][-1])} steps"
    else:
        success = float(np.mean(scalars[metrics.EPISODE_SUCCESS][1][-10:]))
        ret = float(np.mean(scalars[metrics.EPISODE_RETURN][1][-10:]))
        source = "last 10 rollouts"
    steps = int(scalars[metrics.SPS][0][-1])
    sps = float(scalars[metrics.SPS][1][-1])
    return {"success": float(success), "return": float(ret), "steps": steps, "sps": sps, "source": source}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(RUNS), default=None)
    parser.add_argument("--time-limit", type=float, default=None, help="seconds per run; then Ctrl-C (checkpoint, stop)")
    parser.add_argument("--jobs", type=int, default=len(RUNS))
    parser.add_argument("--log-dir", type=Path, default=REPO / "runs" / "benchmark_learning")
    parser.add_argument("--extra", nargs="*", default=[], help="overrides added to every run, e.g. device=cpu")
    parser.add_argument("--record", action="store_true", help="write the table to benchmarks/RESULTS.md")
    args = parser.parse_args()
    names = args.only or list(RUNS)
    args.log_dir.mkdir(parents=True, exist_ok=True)

    start, queue, running = time.monotonic(), list(names), []
    while queue or running:
        while queue and len(running) < args.jobs:
            name = queue.pop(0)
            running.append((name, launch(name, RUNS[name] + args.extra, args.log_dir, args.time_limit)))
        time.sleep(2)
        for name, process in list(running):
            if process.time_limit and time.monotonic() - process.started > process.time_limit and process.poll() is None:
                process.send_signal(signal.SIGINT)
                process.time_limit = None  # asked once; the run saves a checkpoint and exits
            if process.poll() is not None:
                running.remove((name, process))
                print(f"{name}: exit {process.returncode} after {time.monotonic() - process.started:.0f} s", flush=True)
    elapsed = time.monotonic() - start

    rows, commands = [], []
    for name in names:
        outcome = result(name, args.log_dir)
        rows.append([name, f"{outcome['success']:.3f}", f"{outcome['return']:.3f}", outcome["steps"],
                     f"{outcome['sps']:.0f}", outcome["source"]])
        commands.append(f"- {name}: `python train_rl.py {' '.join(RUNS[name] + args.extra) or '(no arguments)'}`")
    table = markdown_table(["run", "success", "return", "env steps", "steps/s", "measured on"], rows)
    print(table)
    if args.record:
        machine = f"{platform.machine()}, {os.cpu_count()} CPUs"
        body = "\n".join([
            f"`python benchmarks/learning.py {' '.join(sys.argv[1:])}` ({len(names)} runs in parallel, one torch "
            f"thread each, {elapsed / 60:.0f} min wall clock on {machine}).",
            "",
            table,
            "",
            "Commands (seed 0):",
            *commands,
        ])
        record("Learning", body)


if __name__ == "__main__":
    main()
