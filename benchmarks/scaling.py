"""Scaling of torchrun training across the GPUs (or CPU processes) of one host.

    python benchmarks/scaling.py [--max-procs K] [--device cuda|cpu] [--cores hqlt,lstm]
        [--tasks batched,host] [--num-envs 1024] [--updates 20] [--record]

For k = 1, 2, 4, ... up to K (default: the GPUs torch sees, or 2 on a CPU), every task and core runs
`python -m torch.distributed.run --standalone --nproc_per_node=k train_rl.py ...` with `--num-envs`
envs per process (weak scaling: each process keeps its share of the work), for `--updates` PPO
updates. The table has steps/s as the trainer reports it (all ranks' env steps over the run's
seconds, the first update's graph capture and compilation included), steps/s per process, the
scaling efficiency against k = 1 (steps/s per process at k over that at 1), and whether every rank
ended with bit-identical parameters (the trainer's check). NVLink multicast stays off.

Tasks: `batched` = POPGym RepeatPreviousEasy as a batched env on each rank's device; `host` = MiniGrid
MemoryS13Random as gymnasium vector envs stepped on the CPU (an env-bound task).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from tempfile import TemporaryDirectory

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import markdown_table, record  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TASKS = {
    "batched": ["env=popgym", "env.id=popgym-RepeatPreviousEasy-v0", "env.vectorization=batched"],
    "host": ["env=any", "env.id=MiniGrid-MemoryS13Random-v0", "env.vectorization=gymnasium"],
}
ROLLOUT_LENGTH = 128
# What the workplace's GPU hosts require of every NCCL program (KINDS.md).
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def run(task: str, core: str, processes: int, args: argparse.Namespace, log_dir: str) -> dict[str, float | bool]:
    """One torchrun job: its steps/s and whether the ranks' parameters agree at the end."""
    steps = processes * args.num_envs * ROLLOUT_LENGTH * args.updates
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
        str(REPO / "train_rl.py"), *TASKS[task], f"memory={core}", f"device={args.device}",
        f"agent.num_envs={args.num_envs}", f"agent.rollout_length={ROLLOUT_LENGTH}", f"total_steps={steps}",
        "eval.episodes=1", "eval.num_envs=1", "checkpoint_interval=0", "progress=false", f"log_dir={log_dir}",
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env={**os.environ, **NO_MULTICAST})
    if result.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    sps = float(re.search(r"\(([0-9.]+) steps/s\)", result.stdout).group(1))
    agree = processes == 1 or f"parameters on the {processes} ranks: identical" in result.stdout
    return {"sps": sps, "agree": agree}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-procs", type=int, default=None)
    parser.add_argument("--cores", default="hqlt,lstm")
    parser.add_argument("--tasks", default="batched,host")
    parser.add_argument("--num-envs", type=int, default=1024)
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    max_procs = args.max_procs or (torch.cuda.device_count() if args.device == "cuda" else 2)
    counts = [k for k in (1, 2, 4, 8, 16) if k <= max_procs]
    card = torch.cuda.get_device_name() if args.device == "cuda" else "CPU processes (gloo)"
    rows = []
    with TemporaryDirectory() as log_dir:
        for task in args.tasks.split(","):
            for core in args.cores.split(","):
                base = None
                for k in counts:
                    result = run(task, core, k, args, log_dir)
                    per_process = result["sps"] / k
                    base = per_process if base is None else base
                    rows.append([task, core, k, f"{result['sps']:,.0f}", f"{per_process:,.0f}",
                                 f"{per_process / base:.0%}", "yes" if result["agree"] else "NO"])
                    print(*rows[-1], sep=" | ", flush=True)
    table = markdown_table(["task", "core", "processes", "steps/s", "steps/s per process", "efficiency",
                            "parameters identical"], rows)
    body = (f"`python benchmarks/scaling.py {shlex.join(sys.argv[1:])}` on {args.device} ({card}, "
            f"{max_procs} at most), {args.num_envs} envs per process, {args.updates} updates of "
            f"{ROLLOUT_LENGTH}-step rollouts.\n\n{table}")
    print(body)
    if args.record:
        record(f"Scaling ({args.device})", body)


if __name__ == "__main__":
    main()
