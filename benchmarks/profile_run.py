"""Where a training run's time goes: seconds per collection and per update of any config, and the
profiler's top ops of one more of each.

    python benchmarks/profile_run.py [--updates 2] [--rows 30] -- OVERRIDE ...
    python benchmarks/profile_run.py -- agent=dqn env=tmaze_passive env.kwargs.corridor_length=1000 memory=hqlt device=cuda

The run is built as `train_rl.py` builds it from the same overrides (its agent's trainer, envs and
policy), then takes one warm-up collection and update (CUDA graphs, kernel compiles), `--updates`
timed ones, and one under `torch.profiler`, whose table (CUDA time first on a GPU) is printed for the
collection and the update apart. Evaluations, checkpoints and diagnostics are left out. For the
trainers that collect in the learner's process (PPO, DQN, SAC; IMPALA's actors are other processes).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hqlt.agents.trainer import trainer_class  # noqa: E402
from hqlt.configs import ConfigError, compose  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=2, help="timed collections and updates after a warm-up one")
    parser.add_argument("--rows", type=int, default=30, help="rows of each profiler table")
    args = parser.parse_args(argv[:split])
    overrides = argv[split + 1 :]
    with TemporaryDirectory() as log_dir:
        try:
            cfg = compose([*overrides, "eval.interval=0", "checkpoint_interval=0", "progress=false", f"log_dir={log_dir}"])
        except ConfigError as error:
            sys.exit(f"config error: {error}")
        trainer = trainer_class(cfg)(cfg)
        device = trainer.device
        seconds = {"collection": 0.0, "update": 0.0}
        for step in range(args.updates + 1):
            sync(device)
            start = time.perf_counter()
            experience, _ = trainer._collect()
            trainer.global_step += trainer.steps_per_update
            sync(device)
            collected = time.perf_counter()
            trainer._update(experience)
            sync(device)
            if step > 0:  # the first one captures graphs and compiles kernels
                seconds["collection"] += (collected - start) / args.updates
                seconds["update"] += (time.perf_counter() - collected) / args.updates
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
        for phase in ("collection", "update"):
            with torch.profiler.profile(activities=activities) as profiler:
                if phase == "collection":
                    experience, _ = trainer._collect()
                    trainer.global_step += trainer.steps_per_update
                else:
                    trainer._update(experience)
                sync(device)
            print(f"one {phase}:\n" + profiler.key_averages().table(sort_by=sort, row_limit=args.rows,
                                                                     max_name_column_width=70), flush=True)
        trainer.writer.close()
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        print(f"`python benchmarks/profile_run.py --updates {args.updates} -- {' '.join(overrides)}` on {name}: "
              f"{trainer.steps_per_update:,} env steps per update; seconds per collection "
              f"{seconds['collection']:.3f}, per update {seconds['update']:.3f} "
              f"({trainer.steps_per_update / (seconds['collection'] + seconds['update']):,.0f} env steps/s)")


if __name__ == "__main__":
    main()
