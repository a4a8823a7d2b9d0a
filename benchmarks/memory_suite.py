"""Learning on the memory suites: many training runs side by side, curves and a table against anchors.

    python benchmarks/memory_suite.py SUITE [--tasks TASK,...] [--cores hqlt,transformer,deltanet,lstm]
        [--seeds 0,1,2] [--jobs 8] [--device cuda] [--log-dir runs/suites] [--record] [--time-limit SECONDS]
        [--resume | --summarize] [-- OVERRIDE ...]

SUITE is one of SUITES below: tasks (each a list of config overrides, e.g. an experiment preset), the
cores' sizes (the paper's for its comparison, else the memory presets) and, for the probes, defaults
of every run (a budget of 20M steps, so that a probe runs until --time-limit). Every (task, core, seed)
is one `python train_rl.py ...` process; up to --jobs run at once on the one device (batched envs keep
each run on the GPU). Each task's runs are then read back from their TensorBoard events
(hqlt.compare): a PNG of training success and return per core, mean and min..max over seeds, and a
table of final greedy evaluation per core next to the anchor published for the task, written into
benchmarks/RESULTS.md with --record. Overrides after `--` go to every run (e.g. total_steps=...).
--resume continues the suite's earlier runs from their latest checkpoints (a run stopped at the time
limit saves one), so that a suite longer than one device call runs over several. The same command line
serves: a resumed run takes only the overrides its checkpoint does not keep (total_steps, eval.*; not
agent=... or agent.*). --summarize only reads back the runs under --log-dir (e.g. copied from the
device machine) and writes the curves and table.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import markdown_table, record  # noqa: E402

from hqlt.compare import load_runs, plot  # noqa: E402
from hqlt.configs import GROUPS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# POPGym's best MMER per task (POPGym paper, PPO, 15M steps; GRU unless another model was better).
POPGYM_ANCHORS = {
    "RepeatPreviousEasy": 1.000, "RepeatPreviousMedium": -0.315,
    "RepeatFirstEasy": 1.000, "RepeatFirstMedium": 1.000,
    "CountRecallEasy": 0.177, "CountRecallMedium": -0.528,
    "AutoencodeEasy": -0.283, "AutoencodeMedium": -0.425,
    "PositionOnlyCartPoleEasy": 1.0, "PositionOnlyCartPoleMedium": 1.0,
    "NoisyPositionOnlyCartPoleEasy": 0.995, "NoisyPositionOnlyCartPoleMedium": 0.642,
}
# The HQLT paper's sizes (width 100 with 2 heads there; 128 with 2 heads here, since our kernels take
# power-of-two head dims), and the memory presets for the other suites.
PAPER_CORES = {
    "hqlt": ["memory=hqlt", "memory.options.num_layers=3", "memory.options.num_heads=2", "memory.options.window=64"],
    "transformer": ["memory=transformer", "memory.options.num_layers=2", "memory.options.num_heads=2",
                    "memory.options.window=null"],
    "deltanet": ["memory=deltanet", "memory.options.num_layers=3", "memory.options.num_heads=2"],
    "lstm": ["memory=lstm"],
}
PRESET_CORES = {core: [f"memory={core}"] for core in ("hqlt", "transformer", "deltanet", "lstm", "gru")}
# agent=dqn's replay sizes on the GPU probes (dqn_probe).
DQN_SIZES = ["agent.batch_size=64", "agent.replay_size=4096", "agent.learning_starts=50000"]
# The probes' tasks take the config's default total_steps (150k) otherwise; with the learning issue's budget
# a probe runs until --time-limit stops it (and --resume continues it). Their evaluations run all 32
# episodes at once (the config's 8 envs would step a T-Maze 1000 evaluation as 4 x 1,001 sequential steps),
# every 500k steps.
PROBE_DEFAULTS = ["total_steps=20000000", "eval.num_envs=32", "eval.interval=500000"]
SUITES = {
    "visual_match_750": {"tasks": {"visual_match_750": ["experiment=visual_match_750"]}, "cores": PAPER_CORES},
    "tmaze_passive_1000": {
        "tasks": {"tmaze_passive_1000": ["experiment=tmaze_passive_1000"]},
        # max_context (default 1024) covers the 1001 steps of an episode
        "cores": {**PRESET_CORES, "transformer": PAPER_CORES["transformer"]},
    },
    "popgym_suite": {
        "tasks": {name: ["experiment=popgym_suite", f"env.id=popgym-{name}-v0"] for name in POPGYM_ANCHORS},
        "cores": PRESET_CORES,
    },
    # Where learning starts: short Visual Match, T-Maze 100 and 1000, with the learner's defaults. 256 envs
    # learn Visual Match in 4x fewer env steps than 1024 (4x the updates; RESULTS, "updates per env step").
    "memory_probe": {
        "defaults": PROBE_DEFAULTS,
        "tasks": {
            "visual_match_0": ["env=visual_match", "env.kwargs.distractor_steps=0", "agent.num_envs=256"],
            "visual_match_30": ["env=visual_match", "env.kwargs.distractor_steps=30", "agent.num_envs=256"],
            # the cue beyond hqlt's window of 32; episodes of up to 130 steps, so rollouts of 256 hold them
            # whole (the stored states are detached: no gradient crosses a rollout's start)
            "visual_match_100": ["env=visual_match", "env.kwargs.distractor_steps=100", "agent.num_envs=128",
                                 "agent.rollout_length=256"],
            "tmaze_passive_100": ["env=tmaze_passive", "env.kwargs.corridor_length=100", "agent.num_envs=512",
                                  "agent.rollout_length=101"],
            "tmaze_passive_1000": ["env=tmaze_passive", "env.kwargs.corridor_length=1000", "agent.num_envs=64",
                                   "agent.rollout_length=1001"],
        },
        "cores": {**PRESET_CORES, "transformer": PAPER_CORES["transformer"]},
    },
    # The same tasks with agent=dqn, sized as on the H100 (RESULTS, "updates per env step, and DQN"): about
    # 4 replayed sequences per collected one.
    "dqn_probe": {
        "defaults": PROBE_DEFAULTS,
        "tasks": {
            "visual_match_0": ["agent=dqn", "env=visual_match", "env.kwargs.distractor_steps=0", "agent.num_envs=256",
                               "agent.rollout_length=128", *DQN_SIZES, "agent.updates_per_collect=16"],
            "visual_match_30": ["agent=dqn", "env=visual_match", "env.kwargs.distractor_steps=30", "agent.num_envs=256",
                                "agent.rollout_length=128", *DQN_SIZES, "agent.updates_per_collect=16"],
            "visual_match_100": ["agent=dqn", "env=visual_match", "env.kwargs.distractor_steps=100", "agent.num_envs=128",
                                 "agent.rollout_length=256", *DQN_SIZES, "agent.updates_per_collect=16"],
            # the fourth probe's replay sizes (RESULTS; its rows were 1024 steps, the preset's aligned rollouts now 780):
            # 16 sequences per gradient step, 64 gradient steps per collection of 64 rows
            "visual_match_750": ["agent=dqn", "experiment=visual_match_750", "agent.batch_size=16", "agent.replay_size=512",
                                 "agent.learning_starts=200000", "agent.updates_per_collect=64"],
            "tmaze_passive_100": ["agent=dqn", "env=tmaze_passive", "env.kwargs.corridor_length=100", "agent.num_envs=512",
                                  "agent.rollout_length=101", *DQN_SIZES, "agent.updates_per_collect=32"],
            # the sizes with which hqlt learned T-Maze 200 on the CPU (RESULTS, "the episodic recall objective with
            # the episode's first step"); the third probe's (128 envs, batch 16) had not walked 1000 in 5M steps
            "tmaze_passive_1000": ["agent=dqn", "env=tmaze_passive", "env.kwargs.corridor_length=1000", "agent.num_envs=64",
                                   "agent.rollout_length=1001", "agent.batch_size=32", "agent.replay_size=1024",
                                   "agent.learning_rate=1e-3", "agent.learning_starts=10000", "agent.updates_per_collect=16"],
        },
        "cores": {**PRESET_CORES, "transformer": PAPER_CORES["transformer"]},
    },
}
ANCHORS = {
    "visual_match_750": "paper (SAC-Discrete, 2.0M steps): transformer best, hqlt close to it, one hqlt seed above 70% success",
    "tmaze_passive_1000": "Ni et al. 2023: transformers solve passive T-Maze up to memory length 1500",
}


def resumable_overrides(overrides: list[str]) -> list[str]:
    """The overrides a resumed run takes: not those of the config groups and seed, which its checkpoint
    keeps (`agent=sac`, `agent.num_envs=64`), but keys such as total_steps."""
    fixed = (*GROUPS, "seed")
    return [override for override in overrides if override.lstrip("+~").split("=", 1)[0].split(".")[0] not in fixed]


def latest_checkpoint(core_dir: Path, seed: str) -> Path | None:
    """The newest checkpoint of the runs `<core_dir>/seed<seed>-*/`, or None if there is none."""
    checkpoints = sorted(core_dir.glob(f"seed{seed}-*/checkpoints/step*.pt"), key=lambda path: path.name)
    return checkpoints[-1] if checkpoints else None


def run_all(commands: list[tuple[str, list[str]]], jobs: int, log_dir: Path, time_limit: float | None) -> None:
    """Runs `(name, argv)` commands, at most `jobs` at once; each one's output goes to log_dir/<name>.log."""
    pending, running = list(commands), []
    deadline = time.monotonic() + time_limit if time_limit else None
    while pending or running:
        while pending and len(running) < jobs:
            name, argv = pending.pop(0)
            log = open(log_dir / f"{name}.log", "w")
            running.append((name, subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT), log))
        time.sleep(1.0)
        if deadline is not None and time.monotonic() > deadline:
            for name, process, _ in running:
                process.terminate()  # the trainer saves a checkpoint and writes what it has
            for name, process, log in running:
                process.wait()
                log.close()
                print(f"{name}: stopped at the time limit", flush=True)
            for name, _ in pending:
                print(f"{name}: not started (time limit)", flush=True)
            return
        for entry in [entry for entry in running if entry[1].poll() is not None]:
            name, process, log = entry
            log.close()
            running.remove(entry)
            print(f"{name}: exit {process.returncode}", flush=True)


def summarize_task(task: str, task_dir: Path, out_dir: Path) -> list[list[object]]:
    """Curves (PNG) and one table row per core of the runs under task_dir/<core>/<run>/."""
    runs, notes = load_runs(task_dir)
    for note in notes:
        print(note)
    if not runs:
        return []
    plot(runs, "episode", out_dir, task)
    if any("eval/success" in run.scalars or "eval/return" in run.scalars for run in runs):
        plot(runs, "eval", out_dir, task)
    rows = []
    for core in sorted({run.core for run in runs}):
        group = [run for run in runs if run.core == core]
        steps = [int(run.scalars["perf/sps"][0][-1]) if "perf/sps" in run.scalars else 0 for run in group]
        cells = []
        for quantity in ("success", "return"):
            values = np.array([run.final(quantity) for run in group])
            values = values[~np.isnan(values)]
            cells.append(f"{values.mean():.3f} ± {values.std():.3f}" if len(values) else "-")
        # POPGym's MMER: the best mean return of the training episodes logged at an update, per seed.
        best = [run.scalars["episode/return"][1].max() for run in group if "episode/return" in run.scalars]
        cells.append(f"{np.mean(best):.3f}" if best else "-")
        rows.append([task, core, len(group), f"{min(steps):,}-{max(steps):,}", *cells])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite")
    parser.add_argument("--tasks", default=None, help="a subset of the suite's tasks (default: all)")
    parser.add_argument("--cores", default="hqlt,transformer,deltanet,lstm")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--log-dir", type=Path, default=Path("runs/suites"))
    parser.add_argument("--time-limit", type=float, default=None, help="stop every run after this many seconds")
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--resume", action="store_true", help="continue the runs under --log-dir from their checkpoints")
    parser.add_argument("--summarize", action="store_true", help="train nothing: summarize the runs under --log-dir")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.overrides = argv[split + 1 :]  # config overrides for every run
    if args.suite not in SUITES:
        parser.error(f"unknown suite {args.suite!r}; suites: {', '.join(SUITES)}")
    tasks, core_overrides = SUITES[args.suite]["tasks"], SUITES[args.suite]["cores"]
    defaults = SUITES[args.suite].get("defaults", [])  # overrides of every run, before the task's own
    if args.tasks is not None:
        unknown = sorted(set(args.tasks.split(",")) - set(tasks))
        if unknown:
            parser.error(f"suite {args.suite} has no task(s) {unknown}; its tasks: {', '.join(tasks)}")
        tasks = {task: tasks[task] for task in args.tasks.split(",")}
    unknown = sorted(set(args.cores.split(",")) - set(core_overrides))
    if unknown:
        parser.error(f"suite {args.suite} has no sizes for core(s) {unknown}; its cores: {', '.join(core_overrides)}")
    suite_dir = args.log_dir / args.suite
    if args.summarize:
        summarize(args, tasks, suite_dir, "runs read back")
        return
    if suite_dir.exists() and not args.resume:
        shutil.rmtree(suite_dir)
    suite_dir.mkdir(parents=True, exist_ok=True)
    commands = []
    for task, task_overrides in tasks.items():
        for core in args.cores.split(","):
            for seed in args.seeds.split(","):
                checkpoint = latest_checkpoint(suite_dir / task / core, seed) if args.resume else None
                if checkpoint is None:
                    run = [*defaults, *task_overrides, *core_overrides[core], f"memory.name={core}", f"seed={seed}",
                           f"env.name={task}", f"log_dir={suite_dir}", *args.overrides]
                else:
                    run = [f"resume={checkpoint}", *resumable_overrides(args.overrides)]
                argv = [sys.executable, "train_rl.py", *run, f"device={args.device}", "progress=false"]
                commands.append((f"{task}-{core}-seed{seed}", argv))
    print(f"{len(commands)} runs, {args.jobs} at a time", flush=True)
    start = time.monotonic()
    run_all(commands, args.jobs, suite_dir, args.time_limit)
    minutes = (time.monotonic() - start) / 60
    summarize(args, tasks, suite_dir, f"{len(commands)} runs, {args.jobs} at a time, {minutes:.1f} min")


def summarize(args: argparse.Namespace, tasks: dict[str, list[str]], suite_dir: Path, how: str) -> None:
    """Curves and the table of the suite's runs under suite_dir, printed and (--record) recorded."""
    rows = [row for task in tasks for row in summarize_task(task, suite_dir / task, suite_dir)]
    header = ["task", "core", "seeds", "env steps", "final success", "final return", "MMER"]
    if args.suite == "popgym_suite":
        header.append("POPGym best MMER")
        rows = [row + [f"{POPGYM_ANCHORS[row[0]]:.3f}"] for row in rows]
    table = markdown_table(header, rows)
    command = "python benchmarks/memory_suite.py " + " ".join(shlex.quote(arg) for arg in sys.argv[1:])
    anchor = ANCHORS.get(args.suite, "")
    body = (f"`{command}` ({how}). Final = greedy "
            f"evaluation at the end of each run, mean ± std over seeds. Curves: `{suite_dir}/*.png`."
            + (f" Anchor: {anchor}." if anchor else "") + f"\n\n{table}")
    print(body)
    if args.record:
        record(f"Memory suite: {args.suite}", body)


if __name__ == "__main__":
    main()
