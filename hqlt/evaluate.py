"""Evaluate a trained agent: `python -m hqlt.evaluate <checkpoint> [--episodes N] [--greedy | --sample] ...`.

    python -m hqlt.evaluate runs/<env>/<core>/<run>/checkpoints/step<N>.pt --episodes 100
    python -m hqlt.evaluate <checkpoint> --episodes 4 --video videos/    # one mp4 per episode

The policy is rebuilt from the checkpoint (`Policy.from_checkpoint`) and acts on envs made as its
training config makes them, carrying its memory state through every episode. Prints the mean,
standard deviation and range of the episodes' return, success and length. The checkpoint is only
read: nothing is written into its run directory.
"""

from __future__ import annotations

import argparse
import functools
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv, VectorEnv
from gymnasium.wrappers import RecordVideo
from torch import Tensor

from hqlt.agents.policy import Policy
from hqlt.agents.rollout import Collector, EpisodeStats
from hqlt.agents.trainer import EVAL_SEED_OFFSET, resolve_device, summarize
from hqlt.configs.schema import ConfigError, TrainConfig
from hqlt.envs import LiftEpisodeStats, make, make_envs

QUANTITIES = ("return", "success", "length")


def episode_quotas(episodes: int, num_envs: int) -> np.ndarray:
    """How many episodes each env contributes (int64 `[num_envs]`, summing to `episodes`)."""
    quotas = np.full(num_envs, episodes // num_envs, dtype=np.int64)
    quotas[: episodes % num_envs] += 1
    return quotas


def run_episodes(collector: Collector, quotas: np.ndarray, greedy: bool, seed: int) -> EpisodeStats:
    """Runs env i of the collector for its first `quotas[i]` episodes (from `seed`); their statistics.

    Taking each env's first episodes, rather than the first episodes to end across envs (what the
    trainer's periodic `evaluate` does), does not favour short episodes.
    """
    stats = EpisodeStats([], [], [])
    counted = np.zeros_like(quotas)
    collector.restart(seed)
    while (counted < quotas).any():
        info = collector.step(greedy).episodes
        if "episode" not in info:
            continue
        ended = info["_episode"]
        ended = (ended.cpu().numpy() if isinstance(ended, Tensor) else np.asarray(ended)) & (counted < quotas)
        stats.extend({"episode": info["episode"], "_episode": ended})
        counted += ended
    return stats


def spread(stats: EpisodeStats) -> dict[str, dict[str, float]]:
    """Mean (as `summarize` takes it), standard deviation, min and max of each of QUANTITIES."""
    means = summarize(stats)
    values = {
        "return": np.array(stats.returns, dtype=np.float64),
        "success": np.array([s for s in stats.successes if not np.isnan(s)], dtype=np.float64),
        "length": np.array(stats.lengths, dtype=np.float64),
    }
    nan = float("nan")
    return {
        name: {
            "mean": means[name],
            "std": float(values[name].std()) if values[name].size else nan,
            "min": float(values[name].min()) if values[name].size else nan,
            "max": float(values[name].max()) if values[name].size else nan,
        }
        for name in QUANTITIES
    }


def _record_first(count: int, episode: int) -> bool:
    """RecordVideo's episode trigger: film episodes 0 .. count - 1 (those `run_episodes` counts)."""
    return episode < count


def video_envs(config: TrainConfig, quotas: np.ndarray, video_dir: Path) -> VectorEnv:
    """gymnasium vector envs of the config's env, env i filming its first `quotas[i]` episodes into
    `video_dir/env<i>-episode-<k>.mp4` through gymnasium's RecordVideo (which needs moviepy)."""
    try:
        import moviepy  # noqa: F401
    except ImportError:
        raise ConfigError(
            "--video writes mp4 files through moviepy, which is not installed: pip install 'hqlt[video]' "
            "(in a checkout: pip install -e '.[video]')"
        ) from None

    def film(index: int) -> RecordVideo:
        env = make(config.env.id, render_mode="rgb_array", **config.env.kwargs)
        with warnings.catch_warnings():
            if index > 0:  # env 0 made the folder: the others would warn that they overwrite it
                warnings.filterwarnings("ignore", message=".*Overwriting existing videos")
            return RecordVideo(
                env, str(video_dir), episode_trigger=functools.partial(_record_first, int(quotas[index])),
                name_prefix=f"env{index}",
            )

    try:
        env_fns = [functools.partial(film, index) for index in range(len(quotas))]
        return LiftEpisodeStats(SyncVectorEnv(env_fns, autoreset_mode=AutoresetMode.SAME_STEP))
    except ValueError as error:
        raise ConfigError(f"--video: {config.env.id} cannot render rgb_array frames ({error})") from error


def _format(name: str, values: dict[str, float]) -> str:
    if np.isnan(values["mean"]):
        return f"  {name:<8} n/a (the env reports no success)"
    digits = 1 if name == "length" else 3
    mean, std, low, high = (f"{values[key]:.{digits}f}" for key in ("mean", "std", "min", "max"))
    return f"  {name:<8} {mean} ± {std}  [min {low}, max {high}]"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hqlt.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", type=Path, help="runs/<env>/<core>/<run>/checkpoints/step<N>.pt")
    parser.add_argument("--episodes", type=_positive_int, default=32, help="episodes to run (default 32)")
    actions = parser.add_mutually_exclusive_group()
    actions.add_argument("--greedy", dest="greedy", action="store_true", default=None,
                         help="most likely actions (default: the run's eval.greedy)")
    actions.add_argument("--sample", dest="greedy", action="store_false", help="sampled actions")
    parser.add_argument("--num-envs", type=_positive_int, default=None,
                        help="envs stepped together (default: the run's eval.num_envs, at most --episodes)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:<index>")
    parser.add_argument("--video", type=Path, default=None, metavar="DIR",
                        help="film every episode into DIR/env<i>-episode-<k>.mp4 (needs moviepy: pip install 'hqlt[video]')")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the episodes and sampled actions (default: the run's evaluation seed)")
    args = parser.parse_args(argv)

    try:
        policy, config = Policy.from_checkpoint(args.checkpoint)
        greedy = config.eval.greedy if args.greedy is None else args.greedy
        seed = config.seed + EVAL_SEED_OFFSET if args.seed is None else args.seed
        quotas = episode_quotas(args.episodes, min(args.num_envs or config.eval.num_envs, args.episodes))
        device = resolve_device(args.device, config.cpu_threads, config.tf32)
        if args.video is not None:
            envs = video_envs(config, quotas, args.video)
        else:
            envs = make_envs(config.env.id, len(quotas), seed, device=device, vectorization=config.env.vectorization,
                             **config.env.kwargs)
    except ValueError as error:  # ConfigError, CheckpointError and the env factories' invalid arguments
        print(f"error: {error}", file=sys.stderr)
        return 2

    torch.manual_seed(seed)
    collector = Collector(policy.to(device), envs, device, 1, 1, config.capture)
    try:
        stats = run_episodes(collector, quotas, greedy, seed)
    finally:
        envs.close()
    print(
        f"{args.checkpoint}: {config.env.id} ({config.env.name}), {config.memory.name}\n"
        f"{args.episodes} episodes, {'greedy' if greedy else 'sampled'} actions, {len(quotas)} envs, seed {seed}; "
        "mean ± std [min, max]:"
    )
    for name, values in spread(stats).items():
        print(_format(name, values))
    if args.video is not None:
        print(f"videos: {args.video}/env<i>-episode-<k>.mp4")
    return 0


if __name__ == "__main__":
    sys.exit(main())
