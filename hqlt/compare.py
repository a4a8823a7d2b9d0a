"""Compare memory cores on one env: `python -m hqlt.compare runs/<env> [--out DIR] [--tag eval]`.

Reads the TensorBoard event files of `runs/<env>/<core>/seed*/`, renders PNG learning curves of
return and success per core (mean over seeds, shaded min..max), and prints a final-score table
(the final evaluation of each seed, mean ± std over seeds).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from hqlt.agents import metrics

CURVES = {
    "episode": {"return": metrics.EPISODE_RETURN, "success": metrics.EPISODE_SUCCESS},
    "eval": {"return": metrics.EVAL_RETURN, "success": metrics.EVAL_SUCCESS},
}
FINAL = {"return": metrics.FINAL_RETURN, "success": metrics.FINAL_SUCCESS}


@dataclass
class Run:
    """One seed's scalars: tag -> (steps, values)."""

    core: str
    path: Path
    scalars: dict[str, tuple[np.ndarray, np.ndarray]]

    def final(self, quantity: str) -> float:
        """The final evaluation's value, or the last logged training value if the run has none yet."""
        for tag in (FINAL[quantity], CURVES["episode"][quantity]):
            if tag in self.scalars:
                return float(self.scalars[tag][1][-1])
        return float("nan")


def load_runs(env_dir: Path) -> list[Run]:
    """Every run directory `<env_dir>/<core>/<run>/` holding event files."""
    runs = []
    for run_dir in sorted(p for p in env_dir.glob("*/*") if p.is_dir()):
        if not any(run_dir.glob("events.out.tfevents.*")):
            continue
        accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
        accumulator.Reload()
        scalars = {}
        for tag in accumulator.Tags()["scalars"]:
            events = accumulator.Scalars(tag)
            scalars[tag] = (np.array([e.step for e in events]), np.array([e.value for e in events]))
        runs.append(Run(core=run_dir.parent.name, path=run_dir, scalars=scalars))
    return runs


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
    parser = argparse.ArgumentParser(prog="python -m hqlt.compare", description=__doc__.splitlines()[0])
    parser.add_argument("env_dir", type=Path, help="runs/<env>: holds <core>/seed<k>-<time>/ run directories")
    parser.add_argument("--out", type=Path, default=None, help="where to write the PNGs (default: env_dir)")
    parser.add_argument("--curves", choices=sorted(CURVES), default="episode",
                        help="training episodes (default) or periodic evaluations")
    args = parser.parse_args(argv)
    if not args.env_dir.is_dir():
        print(f"error: {args.env_dir} is not a directory (expected runs/<env>)", file=sys.stderr)
        return 2
    runs = load_runs(args.env_dir)
    if not runs:
        print(f"error: no run directories with event files under {args.env_dir}/<core>/", file=sys.stderr)
        return 2
    out_dir = args.out or args.env_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in plot(runs, args.curves, out_dir, args.env_dir.name):
        print(f"wrote {path}")
    print(final_table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
