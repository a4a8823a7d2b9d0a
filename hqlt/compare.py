"""Compare memory cores on one env: learning curves and final scores of a sweep.

    python -m hqlt.compare runs/<env> [--out DIR] [--curves episode|eval] [--mix-configs]

Reads the run directories `runs/<env>/<core>/<run>/` (their config.yaml and TensorBoard events).
Only complete runs count (they wrote the final evaluation), and of the complete runs of one core and
seed only the newest. The runs of a core must share one config (budget, agent, env kwargs, ...; not
the seed, nor where and how a run executed): otherwise compare stops, naming the keys that differ,
unless --mix-configs. Renders PNG learning curves of return and success per core (mean over seeds,
shaded min..max) and prints a line for each run left out, then a final-score table (the final
evaluation of each seed, mean ± std over seeds).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from hqlt.agents import metrics

CURVES = {
    "episode": {"return": metrics.EPISODE_RETURN, "success": metrics.EPISODE_SUCCESS},
    "eval": {"return": metrics.EVAL_RETURN, "success": metrics.EVAL_SUCCESS},
}
FINAL = {"return": metrics.FINAL_RETURN, "success": metrics.FINAL_SUCCESS}
# Keys of config.yaml that tell apart the seeds of one config (seed), or say where and how a run
# executed without changing what it trains and measures.
PER_RUN_KEYS = frozenset(
    {
        "seed",
        "device",
        "tf32",
        "cpu_threads",
        "capture",
        "async_envs",
        "env.vectorization",
        "log_dir",
        "resume",
        "progress",
        "checkpoint_interval",
        "keep_checkpoints",
        "eval.interval",
    }
)


class CompareError(ValueError):
    """Runs that cannot be compared as asked; the message says why and what to do."""


@dataclass
class Run:
    """One run directory: its config (PER_RUN_KEYS left out), seed and scalars (tag -> steps, values)."""

    core: str
    path: Path
    seed: int
    config: dict[str, Any]
    scalars: dict[str, tuple[np.ndarray, np.ndarray]]
    # Wall time of the final evaluation; None for a run that did not finish (interrupted, failed, running).
    finished: float | None

    def final(self, quantity: str) -> float:
        """The final evaluation's value, else the last periodic evaluation's (a run stopped before its
        end); nan where there is neither or the env defines no success."""
        for tag in (FINAL[quantity], CURVES["eval"][quantity]):
            if tag in self.scalars:
                return float(self.scalars[tag][1][-1])
        return float("nan")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections as dotted keys: {"agent": {"gamma": 0.99}} -> {"agent.gamma": 0.99}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def load_run(run_dir: Path) -> Run:
    config = flatten(OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml")))
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    scalars, finished = {}, None
    for tag in accumulator.Tags()["scalars"]:
        events = accumulator.Scalars(tag)
        scalars[tag] = (np.array([e.step for e in events]), np.array([e.value for e in events]))
        if tag in FINAL.values():
            finished = max(finished or 0.0, events[-1].wall_time)
    return Run(
        core=run_dir.parent.name,
        path=run_dir,
        seed=int(config["seed"]),
        config={key: value for key, value in config.items() if key not in PER_RUN_KEYS},
        scalars=scalars,
        finished=finished,
    )


def load_runs(env_dir: Path) -> tuple[list[Run], list[str]]:
    """Every run directory `<env_dir>/<core>/<run>/` with event files, and a note for each one that
    cannot be read as a run (no config.yaml)."""
    runs, notes = [], []
    for run_dir in sorted(p for p in env_dir.glob("*/*") if p.is_dir()):
        if not any(run_dir.glob("events.out.tfevents.*")):
            continue
        if not (run_dir / "config.yaml").is_file():
            notes.append(f"skipped {run_dir}: no config.yaml")
            continue
        runs.append(load_run(run_dir))
    return runs, notes


def config_differences(runs: list[Run]) -> list[str]:
    """`key: value (seeds ...) vs value (seeds ...)` for each config key on which `runs` differ."""
    differences = []
    for key in sorted({key for run in runs for key in run.config}):
        seeds_by_value: dict[str, list[int]] = {}
        for run in runs:
            seeds_by_value.setdefault(repr(run.config.get(key, "<unset>")), []).append(run.seed)
        if len(seeds_by_value) > 1:
            values = [f"{value} (seeds {', '.join(map(str, sorted(seeds)))})"
                      for value, seeds in seeds_by_value.items()]
            differences.append(f"{key}: {' vs '.join(values)}")
    return differences


def select_runs(runs: list[Run], mix_configs: bool = False) -> tuple[list[Run], list[str]]:
    """The runs to compare, one per (core, seed): the newest complete one; and a note per run left out.

    Raises CompareError for a core whose complete runs differ in config, unless `mix_configs`.
    """
    notes = [f"skipped {run.path}: incomplete (no final evaluation: interrupted, failed or still running)"
             for run in runs if run.finished is None]
    chosen = []
    for core in sorted({run.core for run in runs}):
        complete = [run for run in runs if run.core == core and run.finished is not None]
        differences = "\n  ".join(config_differences(complete))
        if differences and not mix_configs:
            raise CompareError(
                f"the runs of {core} differ in config, so their seeds are not one experiment:\n  {differences}\n"
                "move the runs of other configs out of this directory, or pass --mix-configs to average them anyway"
            )
        if differences:
            notes.append(f"averaging runs of {core} that differ in config (--mix-configs):\n  {differences}")
        for seed in sorted({run.seed for run in complete}):
            same_seed = [run for run in complete if run.seed == seed]
            newest = max(same_seed, key=lambda run: run.finished)
            chosen.append(newest)
            notes += [f"skipped {run.path}: an older run of {core} seed {seed} (using {newest.path.name})"
                      for run in same_seed if run is not newest]
    return chosen, notes


def curve_band(runs: list[Run], tag: str, points: int = 100) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Seeds interpolated on a common step grid: (steps, mean, min, max), or None without data."""
    series = [run.scalars[tag] for run in runs if tag in run.scalars and len(run.scalars[tag][0]) > 0]
    if not series:
        return None
    end = min(steps[-1] for steps, _ in series)
    grid = np.linspace(min(steps[0] for steps, _ in series), end, points)
    values = np.stack([np.interp(grid, steps, vals) for steps, vals in series])
    return grid, values.mean(0), values.min(0), values.max(0)


def plot(runs: list[Run], curves: str, out_dir: Path, env_name: str) -> list[Path]:
    """One PNG per quantity (return, success) with a curve per core; returns the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    cores = sorted({run.core for run in runs})
    for quantity, tag in CURVES[curves].items():
        fig, ax = plt.subplots(figsize=(7, 4.5))
        drawn = False
        for core in cores:
            band = curve_band([run for run in runs if run.core == core], tag)
            if band is None:
                continue
            steps, mean, low, high = band
            seeds = sum(run.core == core and tag in run.scalars for run in runs)
            (line,) = ax.plot(steps, mean, label=f"{core} ({seeds} seed{'s' * (seeds > 1)})")
            ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
            drawn = True
        if not drawn:
            plt.close(fig)
            continue
        ax.set_xlabel("env steps")
        ax.set_ylabel(quantity)
        ax.set_title(f"{env_name}: {curves} {quantity} (mean, min..max over seeds)")
        ax.grid(alpha=0.3)
        ax.legend()
        path = out_dir / f"{env_name}_{curves}_{quantity}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def final_table(runs: list[Run]) -> str:
    """Markdown table: per core, seeds and final return/success as mean ± std over seeds."""
    lines = ["| core | seeds | final return | final success |", "|---|---|---|---|"]
    for core in sorted({run.core for run in runs}):
        group = [run for run in runs if run.core == core]
        cells = []
        for quantity in ("return", "success"):
            values = np.array([run.final(quantity) for run in group])
            values = values[~np.isnan(values)]
            cells.append(f"{values.mean():.3f} ± {values.std():.3f}" if len(values) else "-")
        lines.append(f"| {core} | {len(group)} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hqlt.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("env_dir", type=Path, help="runs/<env>: holds <core>/seed<k>-<time>/ run directories")
    parser.add_argument("--out", type=Path, default=None, help="where to write the PNGs (default: env_dir)")
    parser.add_argument("--curves", choices=sorted(CURVES), default="episode",
                        help="training episodes (default) or periodic evaluations")
    parser.add_argument("--mix-configs", action="store_true",
                        help="average the seeds of a core even where its runs differ in config")
    args = parser.parse_args(argv)
    if not args.env_dir.is_dir():
        print(f"error: {args.env_dir} is not a directory (expected runs/<env>)", file=sys.stderr)
        return 2
    runs, notes = load_runs(args.env_dir)
    try:
        runs, selection_notes = select_runs(runs, args.mix_configs)
    except CompareError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for note in notes + selection_notes:
        print(note)
    if not runs:
        print(f"error: no complete runs (config.yaml, events and a final evaluation) under {args.env_dir}/<core>/",
              file=sys.stderr)
        return 2
    out_dir = args.out or args.env_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in plot(runs, args.curves, out_dir, args.env_dir.name):
        print(f"wrote {path}")
    print(final_table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
