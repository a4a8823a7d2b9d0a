"""Throughput of PPO training with batched envs against gymnasium vector envs, in one process.

    python benchmarks/throughput.py [--device cuda] [--cores lstm,gru,transformer,deltanet,hqlt]
        [--envs tmaze,visual_match,repeat_previous] [--num-envs 256,1024,4096,8192]
        [--gymnasium-num-envs 256,1024] [--gymnasium-cores lstm,hqlt] [--updates 2] [--record]
        [--overrides 'tf32=false ...']

Two tables:
- env only: steps/s of each batched port (random actions drawn on the device) against its reference
  (`hqlt.envs.make_vector`, in-process, random actions), at each number of envs;
- end to end: PPO env steps/s of a Trainer (rollouts of 128 steps, 4 epochs x 4 minibatches), split
  into acting (the rollout: policy and env steps) and the update, after one warm-up update that
  captures the CUDA graphs and compiles the kernels; batched and gymnasium envs at each size; every
  run takes the config overrides of --overrides (e.g. `tf32=false`: full fp32 products).
Every row of a table comes from this run, on this machine.
"""

from __future__ import annotations

import argparse
import shlex
import platform
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import markdown_table, record  # noqa: E402

from hqlt.agents import Trainer, ppo_update  # noqa: E402
from hqlt.configs import compose  # noqa: E402
from hqlt.envs import make_batched, make_vector  # noqa: E402

# The tasks measured: (env id, constructor parameters).
TASKS = {
    "tmaze": ("hqlt/TMazePassive-v0", {"corridor_length": 100}),
    "visual_match": ("hqlt/PassiveVisualMatch-v0", {"distractor_steps": 750}),
    "repeat_previous": ("popgym-RepeatPreviousEasy-v0", {}),
}
ROLLOUT_LENGTH = 128


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def env_only_sps(task: str, num_envs: int, vectorization: str, device: torch.device, seconds: float) -> float:
    """Env steps/s with random actions: the batched port on `device`, or the reference on the host."""
    env_id, kwargs = TASKS[task]
    if vectorization == "batched":
        envs = make_batched(env_id, num_envs, device=device, seed=0, **kwargs)
        n = envs.single_action_space.n

        def step() -> None:
            envs.step(torch.randint(0, n, (num_envs,), device=device))
    else:
        envs = make_vector(env_id, num_envs, 0, **kwargs)

        def step() -> None:
            envs.step(envs.action_space.sample())

    envs.reset()
    for _ in range(3):
        step()
    sync(device)
    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        for _ in range(10):
            step()
        sync(device)
        steps += 10
    return steps * num_envs / (time.perf_counter() - start)


def end_to_end(task: str, core: str, num_envs: int, vectorization: str, device: torch.device, updates: int,
               log_dir: str, profile: bool = False, overrides: tuple[str, ...] = ()) -> dict[str, float]:
    """PPO steps/s of `updates` updates after a warm-up one, and the seconds per update spent acting
    (collecting the rollout) and updating; `profile` prints the profiler's top kernels of one more update.
    `overrides` are config overrides after the run's own (e.g. "tf32=false")."""
    env_id, kwargs = TASKS[task]
    cfg = compose(
        [
            "env=cartpole_position_only",
            f"env.id={env_id}",
            f"env.name={task}",
            f"env.vectorization={vectorization}",
            *(f"+env.kwargs.{key}={value}" for key, value in kwargs.items()),
            f"memory={core}",
            f"agent.num_envs={num_envs}",
            f"agent.rollout_length={ROLLOUT_LENGTH}",
            f"device={device.type}",
            "eval.num_envs=1",
            "checkpoint_interval=0",
            "progress=false",
            f"log_dir={log_dir}",
            *overrides,
        ]
    )
    trainer = Trainer(cfg)
    trainer.collector.restart(cfg.seed)
    acting = updating = 0.0
    for update in range(updates + 1):
        sync(device)
        start = time.perf_counter()
        rollout, _ = trainer.collector.collect()
        sync(device)
        collected = time.perf_counter()
        ppo_update(trainer.policy, trainer.optimizer, rollout, cfg.agent, trainer.generator)
        sync(device)
        if update > 0:  # the first update captures graphs and compiles kernels
            acting += collected - start
            updating += time.perf_counter() - collected
    if profile:
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=activities) as profiler:
            ppo_update(trainer.policy, trainer.optimizer, rollout, cfg.agent, trainer.generator)
            sync(device)
        sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
        print(f"{task} {core} {num_envs} envs, one update:\n"
              + profiler.key_averages().table(sort_by=sort, row_limit=30, max_name_column_width=70), flush=True)
    trainer.writer.close()
    steps = updates * num_envs * ROLLOUT_LENGTH
    return {"sps": steps / (acting + updating), "acting": acting / updates, "update": updating / updates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cores", default="lstm,gru,transformer,deltanet,hqlt")
    parser.add_argument("--envs", default="tmaze,visual_match,repeat_previous")
    parser.add_argument("--num-envs", default="256,1024,4096,8192")
    parser.add_argument("--gymnasium-num-envs", default="256,1024")
    parser.add_argument("--gymnasium-cores", default="lstm,hqlt")
    parser.add_argument("--updates", type=int, default=2)
    parser.add_argument("--env-seconds", type=float, default=1.0)
    parser.add_argument("--profile", action="store_true", help="print the profiler's top kernels of an update per run")
    parser.add_argument("--record", action="store_true", help="write the tables into benchmarks/RESULTS.md")
    parser.add_argument("--section", default=None, help="RESULTS.md section (default: by device)")
    parser.add_argument("--overrides", default="", help="config overrides of every end-to-end run, space-separated")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(1)
    tasks, cores = args.envs.split(","), args.cores.split(",")
    sizes = [int(n) for n in args.num_envs.split(",")]
    gym_sizes = [int(n) for n in args.gymnasium_num_envs.split(",") if n]
    gym_cores = [core for core in args.gymnasium_cores.split(",") if core]
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()} CPU, one torch thread"

    env_rows = []
    for task in tasks:
        for n in sorted(set(sizes) | set(gym_sizes)):
            batched = env_only_sps(task, n, "batched", device, args.env_seconds)
            reference = env_only_sps(task, n, "gymnasium", device, args.env_seconds) if n in gym_sizes else None
            ratio = f"{batched / reference:.1f}x" if reference else "-"
            env_rows.append([task, n, f"{batched:,.0f}", f"{reference:,.0f}" if reference else "-", ratio])
            print(*env_rows[-1], sep=" | ", flush=True)

    e2e_rows = []
    with TemporaryDirectory() as log_dir:
        for task in tasks:
            for core in cores:
                runs = [("batched", n) for n in sizes] + [("gymnasium", n) for n in gym_sizes if core in gym_cores]
                for vectorization, n in runs:
                    result = end_to_end(task, core, n, vectorization, device, args.updates, log_dir, args.profile,
                                        tuple(args.overrides.split()))
                    e2e_rows.append([task, core, vectorization, n, f"{result['sps']:,.0f}",
                                     f"{result['acting']:.3f}", f"{result['update']:.3f}"])
                    print(*e2e_rows[-1], sep=" | ", flush=True)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()

    env_table = markdown_table(["task", "num envs", "batched steps/s", "reference steps/s", "ratio"], env_rows)
    e2e_table = markdown_table(
        ["task", "core", "vectorization", "num envs", "PPO steps/s", "acting s/update", "update s/update"], e2e_rows
    )
    command = "python benchmarks/throughput.py " + " ".join(shlex.quote(arg) for arg in sys.argv[1:])
    body = (
        f"`{command}` on {card}, torch {torch.__version__}. Tasks: tmaze = passive T-Maze 100, "
        "visual_match = Passive Visual Match 750, repeat_previous = popgym RepeatPreviousEasy. "
        f"PPO: rollouts of {ROLLOUT_LENGTH} steps, 4 epochs x 4 minibatches, presets of each core "
        f"(memory=<core>), {args.updates} timed updates after a warm-up one.\n\n"
        f"Env only (random actions):\n\n{env_table}\n\nEnd to end:\n\n{e2e_table}"
    )
    print(body)
    if args.record:
        record(args.section or f"Throughput ({'GPU' if device.type == 'cuda' else 'CPU'})", body)


if __name__ == "__main__":
    main()
