"""A training run: envs, policy, PPO updates, TensorBoard, evaluation, checkpoints (IMPALA's trainer,
hqlt.agents.impala, and the replay learners' ones, hqlt.agents.replay, replace the PPO parts and share
the rest).

    train(cfg)  ->  runs/<env>/<core>/seed<k>-<time>/  (events, config.yaml, checkpoints/)

Checkpoints are taken at update boundaries and never change training. They hold the model, the
optimiser, every RNG state, the learning-rate schedule, what the learner keeps besides
(`_learner_state`: SAC's critics and temperature, DQN's target network, their replay buffer) and, with
a batched env, the collector's carry and the env's state tensors: a run resumed from one continues
exactly as the uninterrupted run.
Gymnasium vector envs cannot be saved: such a run resumes with fresh episodes (seeded from the step
counter), the same in model, optimiser and random streams only.
Ctrl-C or SIGTERM finishes the current rollout or update, saves a checkpoint, closes the writer and
raises TrainingInterrupted; a NaN or inf loss stops the run before the parameters change, keeping the
last good checkpoint.

Under torchrun (hqlt.agents.distributed) every rank steps envs of its own, seeded apart, and the PPO
update averages over the ranks, so that every rank holds the same parameters; the run's counters,
steps/s and episode statistics count all ranks' steps and episodes, and rank 0 alone writes the run
directory. Its checkpoints hold rank 0's random streams and episodes: on resume rank 0 continues
them exactly, and the other ranks start fresh episodes and streams seeded from the step counter (as
gymnasium envs do). A stop (Ctrl-C, SIGTERM, a NaN loss) reaches every rank at the same update.
"""

from __future__ import annotations

import dataclasses
import math
import random
import signal
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams
from tqdm import tqdm

from hqlt.agents import distributed, metrics
from hqlt.agents.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from hqlt.agents.policy import EPISODE_TIME, Policy, build_policy
from hqlt.agents.ppo import NonFiniteLossError, ppo_update
from hqlt.agents.rollout import Collector, EpisodeStats, Rollout, training_sequences
from hqlt.configs.schema import ConfigError, DQNConfig, ImpalaConfig, PPOConfig, SACConfig, TrainConfig, validate
from hqlt.envs import make_envs
from hqlt.memory import core_options

# Evaluation envs draw their episodes from seeds far from the training envs'.
EVAL_SEED_OFFSET = 1_000_000
# Rank r seeds its training envs and random streams with seed + r * RANK_SEED_OFFSET (rank 0: seed).
RANK_SEED_OFFSET = 10_000_000
# Every DIAGNOSTIC_INTERVAL updates, DIAGNOSTIC_SEQUENCES sequences are replayed without gradients to
# record the core's memory diagnostics.
DIAGNOSTIC_INTERVAL, DIAGNOSTIC_SEQUENCES = 10, 8
# Config sections that define the model and the data; a resumed run must keep them.
RESUME_FIXED = ("env", "memory", "agent", "seed")
# The collector's carry besides the memory state: what its next step starts from.
CARRY = ("obs", "resets", "prev_action", "prev_reward")


class TrainingError(RuntimeError):
    """The run stopped; the message says why and where its last good checkpoint is."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the run after it saved a checkpoint.

    A KeyboardInterrupt, so that it passes through Hydra's sweep (which goes on to its next job after
    an Exception) and through code that handles Ctrl-C. `exit_code` is the shell's code for the
    signal: 130 for SIGINT, 143 for SIGTERM.
    """

    def __init__(self, signum: int, checkpoint: Path, global_step: int) -> None:
        self.signum, self.checkpoint, self.global_step = signum, checkpoint, global_step
        self.exit_code = 128 + signum
        super().__init__(
            f"interrupted by {signal.Signals(signum).name} at step {global_step}: checkpoint saved to "
            f"{checkpoint}; continue with resume={checkpoint}"
        )


def resolve_device(name: str, cpu_threads: int = 0, tf32: bool = False) -> torch.device:
    """`auto` -> cuda when available, else cpu; `cuda` or `cuda:<index>` without that GPU is an error.
    Under torchrun with several processes, each takes the GPU of its LOCAL_RANK (`cuda` or `auto`).

    Also sets torch's CPU thread count when `cpu_threads` > 0, whether fp32 matrix products on CUDA
    may use TF32, and the current CUDA device to `cuda:<index>` (process-wide torch settings).
    """
    if cpu_threads > 0:
        torch.set_num_threads(cpu_threads)
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type != "cuda":
        return device
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ConfigError(f"device={name} but torch sees no CUDA device; use device=auto or device=cpu")
    if distributed.launched():
        if device.index is not None:
            raise ConfigError(
                f"device={name}: under torchrun each process takes cuda:LOCAL_RANK; give device=cuda or auto"
            )
        if distributed.local_rank() >= count:
            raise ConfigError(
                f"LOCAL_RANK={distributed.local_rank()} but torch sees {count} CUDA device(s) on this node: "
                f"start at most {count} processes per node (--nproc_per_node)"
            )
        device = torch.device("cuda", distributed.local_rank())
    if device.index is not None:
        if device.index >= count:
            valid = ", ".join(["cuda", *(f"cuda:{index}" for index in range(count))])
            raise ConfigError(f"device={name} but torch sees {count} CUDA device(s); valid choices: {valid}")
        torch.cuda.set_device(device)  # CUDA graphs and streams are made on the current device
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def restart_seed(seed: int, global_step: int) -> int:
    """Seed of the fresh episodes (and, on ranks other than 0, random streams) of a run resumed from a
    checkpoint at `global_step`."""
    return seed + global_step


# The KL-adaptive learning rate (agent.lr_target_kl): the factor per update and the bounds of its scale. The
# upper bound is for a uniform policy: it shrinks with the policy's entropy share (Trainer.adapt_learning_rate).
LR_ADAPT_FACTOR = 1.5
LR_SCALE_BOUNDS = (0.01, 30.0)


@dataclasses.dataclass(frozen=True)
class LearningRateSchedule:
    """The learning rate annealed linearly from `start_lr` at update `start` to 0 at update `end`, times
    `scale`, which `adapted` moves to hold each update's KL near a target."""

    start: int
    start_lr: float
    end: int
    scale: float = 1.0

    def at(self, update: int) -> float:
        return self.start_lr * (1.0 - (update - self.start) / (self.end - self.start))

    def adapted(self, kl: float, target_kl: float, max_scale: float = LR_SCALE_BOUNDS[1]) -> LearningRateSchedule:
        """The schedule after an update whose approximate KL was `kl`: the scale up by LR_ADAPT_FACTOR
        below half the target, down above twice it, within [LR_SCALE_BOUNDS[0], max_scale]."""
        scale = self.scale
        if kl < target_kl / 2:
            scale *= LR_ADAPT_FACTOR
        elif kl > target_kl * 2:
            scale /= LR_ADAPT_FACTOR
        scale = min(max(scale, LR_SCALE_BOUNDS[0]), max_scale)
        return self if scale == self.scale else dataclasses.replace(self, scale=scale)


def entropy_share(entropy: float, max_entropy: float | None) -> float:
    """A policy's mean entropy as a share of the uniform distribution's `max_entropy` (1 for continuous
    actions, None): what scales agent.lr_target_kl. A nearly deterministic policy reaches a given KL only
    by moving off its best action, so on a solved task the target shrinks instead of the rate growing
    until one update collapses the policy (benchmarks/RESULTS.md, "a learning rate held to a KL target")."""
    return 1.0 if max_entropy is None else min(max(entropy / max_entropy, 0.0), 1.0)


def collector_state(collector: Collector) -> dict[str, Any] | None:
    """What continues the collector's episodes exactly: its carry and the batched env's state tensors.

    None for gymnasium vector envs, whose state cannot be saved. After an aligned rollout the core's state
    is the initial one (`Collector`), so only the episode times are kept (QPolicy reads the ended episodes'
    lengths from them): a full-context transformer's KV window is hundreds of MB, and checkpoints stay
    small enough to carry between machines.
    """
    if not collector.batched:
        return None
    carry = {name: getattr(collector, name) for name in CARRY}
    state = {EPISODE_TIME: collector.state[EPISODE_TIME]} if collector.align_episodes else dict(collector.state)
    return {**carry, "state": state, "envs": collector.envs.snapshot()}


def restore_collector(collector: Collector, saved: dict[str, Any]) -> None:
    """Puts back what `collector_state` returned (from a checkpoint, on any device)."""
    device = collector.device
    for name in CARRY:
        setattr(collector, name, saved[name].to(device))
    saved_state = {name: value.to(device) for name, value in saved["state"].items()}
    collector.state = {**collector.policy.initial_state(collector.num_envs, device=device), **saved_state}
    collector.envs.restore(saved["envs"])  # in place: a CUDA graph over the env step reads these tensors


def hparam_value(value: Any) -> int | float | str | bool:
    """TensorBoard's hparams hold numbers, strings and bools; anything else (None, lists) as its str."""
    return value if isinstance(value, (int, float, str, bool)) else str(value)


def new_run_dir(cfg: TrainConfig) -> Path:
    """`<log_dir>/<env.name>/<memory.name>/seed<seed>-<time>`, with a suffix if that already exists."""
    base = Path(cfg.log_dir) / cfg.env.name / cfg.memory.name / f"seed{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir, suffix = base, 1
    while run_dir.exists():
        run_dir, suffix = base.with_name(f"{base.name}-{suffix}"), suffix + 1
    run_dir.mkdir(parents=True)
    return run_dir


def env_options(cfg: TrainConfig, device: torch.device) -> dict[str, Any]:
    """`make_envs`' keyword arguments for the run's envs on `device`, the env's own kwargs included."""
    return dict(device=device, vectorization=cfg.env.vectorization, asynchronous=cfg.async_envs, **cfg.env.kwargs)


def evaluate(collector: Collector, episodes: int, greedy: bool, seed: int) -> dict[str, float]:
    """Runs `episodes` episodes on the collector's envs; mean return, success and length.

    Sampling happens under a forked RNG, so evaluating never changes the training run's random stream.
    """
    stats = EpisodeStats([], [], [])
    with torch.random.fork_rng(devices=[collector.device] if collector.device.type == "cuda" else []):
        collector.restart(seed)
        while len(stats.returns) < episodes:
            stats.extend(collector.step(greedy).episodes)
    return summarize(stats)


def summarize(stats: EpisodeStats) -> dict[str, float]:
    """Means of the episodes' return, success (nan if the env defines none) and length."""
    successes = [s for s in stats.successes if not math.isnan(s)]
    return {
        "return": float(np.mean(stats.returns)),
        "success": float(np.mean(successes)) if successes else float("nan"),
        "length": float(np.mean(stats.lengths)),
    }


def merge_episodes(parts: list[EpisodeStats]) -> EpisodeStats:
    """The episodes of all `parts` (e.g. one per rank) in one EpisodeStats, in order."""
    fields = dataclasses.fields(EpisodeStats)
    return EpisodeStats(**{f.name: [value for part in parts for value in getattr(part, f.name)] for f in fields})


class SigintGuard:
    """Within the block, the first Ctrl-C or SIGTERM (what schedulers and `timeout` send before they
    kill) only records its number in `signum`; a second one interrupts at once if `escalate` (not
    under torchrun, which passes signals on after its workers may have had them and kills them itself
    after a grace period)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, escalate: bool = True) -> None:
        self.escalate = escalate
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: Any) -> None:
        if not self.requested:
            self.signum = signum
        elif self.escalate:
            raise KeyboardInterrupt

    def __enter__(self) -> SigintGuard:
        try:
            self._previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
        except ValueError:  # not the main thread: leave the signals alone
            self._previous = {}
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


class Trainer:
    """One PPO run of `cfg`; `run()` trains to `cfg.total_steps` and returns the final summary.

    The section "PPO" holds what is PPO's own: where the experience comes from, the update, what a
    checkpoint keeps of the episodes. ImpalaTrainer (hqlt.agents.impala) replaces that section and
    keeps the rest: the loop, logging, evaluation, checkpoints, resume and signal handling.
    """

    # The agent schema this trainer runs.
    AGENT: type = PPOConfig
    # What steps_per_update counts, for messages.
    STEPS_PER_UPDATE = "num_envs x rollout_length"

    def __init__(self, cfg: TrainConfig) -> None:
        validate(cfg)
        if not isinstance(cfg.agent, self.AGENT):
            raise ConfigError(
                f"{type(self).__name__} trains {self.AGENT.__name__}, not agent={cfg.agent.name}: hqlt.agents.train(cfg) "
                f"picks the agent's trainer"
            )
        self.cfg = cfg
        agent = cfg.agent
        self.device = resolve_device(cfg.device, cfg.cpu_threads, cfg.tf32)
        distributed.init(self.device)
        self.seed = cfg.seed + distributed.rank() * RANK_SEED_OFFSET
        seed_everything(self.seed)
        try:
            eval_envs = make_envs(cfg.env.id, cfg.eval.num_envs, cfg.seed + EVAL_SEED_OFFSET, **env_options(cfg, self.device))
            self.policy = build_policy(cfg, eval_envs.single_observation_space, eval_envs.single_action_space)
            self.policy.to(self.device)
            self._build_experience()
        except ValueError as error:
            raise ConfigError(str(error)) from error
        # fused: one kernel per step for all parameters (on CPU a third of the foreach version's time)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=agent.learning_rate, eps=1e-5, fused=True)
        self.generator = torch.Generator().manual_seed(cfg.seed)  # the same minibatch order on every rank
        self.eval_collector = Collector(self.policy, eval_envs, self.device, 1, 1, cfg.capture)
        self.num_updates = math.ceil(cfg.total_steps / self.steps_per_update)
        self.update = 0
        self.global_step = 0
        self.schedule = LearningRateSchedule(0, agent.learning_rate, self.num_updates)
        self.last_checkpoint: Path | None = None
        self.checkpoint_step = -1
        if cfg.resume:
            run_dir = self._resume(Path(cfg.resume))
        else:
            self._start_experience(self.seed, None)
            run_dir = new_run_dir(cfg) if distributed.is_main() else None
        # Every config error is behind us: from here on the ranks meet in collectives.
        self.run_dir: Path = distributed.broadcast_object(run_dir)
        distributed.broadcast_module(self.policy)  # the ranks initialised theirs from their own seeds
        self.writer: SummaryWriter | None = None  # rank 0's; the other ranks write nothing
        if distributed.is_main():
            (self.run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
            self.writer = SummaryWriter(str(self.run_dir))
        self.recent_returns: deque[float] = deque(maxlen=100)
        self.recent_successes: deque[float] = deque(maxlen=100)

    # ------------------------------------------------------------------ the loop

    def run(self) -> dict[str, float]:
        """Trains until `total_steps` and returns the final summary.

        Raises TrainingInterrupted after Ctrl-C or SIGTERM (a checkpoint saved), TrainingError on a
        non-finite loss.
        """
        cfg = self.cfg
        start_time, start_step = time.perf_counter(), self.global_step
        bar = tqdm(total=self.num_updates * self.steps_per_update, initial=self.global_step, unit="step",
                   disable=not (cfg.progress and distributed.is_main()), dynamic_ncols=True)
        try:
            with SigintGuard(escalate=not distributed.forwards_signals()) as sigint:
                # A signal may reach the ranks at different times: all stop at the first update after it.
                while self.update < self.num_updates and not any(distributed.all_gather_objects(sigint.requested)):
                    try:
                        self._train_one_update()
                    except NonFiniteLossError as error:
                        where = self.last_checkpoint or "none written yet"
                        raise TrainingError(
                            f"stopping at update {self.update + 1} (step {self.global_step}): {error}. "
                            f"The last good checkpoint is {where}."
                        ) from error
                    except Exception:
                        if sigint.requested:  # e.g. async env workers also got the Ctrl-C
                            break
                        raise
                    sps = (self.global_step - start_step) / (time.perf_counter() - start_time)
                    self._log({metrics.SPS: sps})
                    bar.update(self.steps_per_update)
                    bar.set_postfix(sps=f"{sps:.0f}", ret=self._recent(self.recent_returns), refresh=False)
                    if cfg.checkpoint_interval and self.update % cfg.checkpoint_interval == 0:
                        self._checkpoint()
            if self.checkpoint_step != self.global_step:
                self._checkpoint()
            if sigint.signum is not None:
                interrupted = TrainingInterrupted(sigint.signum, self.last_checkpoint, self.global_step)
                if distributed.is_main():
                    bar.write(str(interrupted))
                raise interrupted
            summary = self._final_summary(time.perf_counter() - start_time, start_step)
        finally:
            bar.close()
            if self.writer is not None:
                self.writer.close()
            self._close_experience()
            self.eval_collector.envs.close()
        return summary

    def _train_one_update(self) -> None:
        cfg = self.cfg
        learning_rate = self.set_learning_rate()
        experience, episodes = self._collect()
        self.global_step += self.steps_per_update
        self._log_episodes(merge_episodes(distributed.all_gather_objects(episodes)))

        update_stats = self._update(experience)
        self._log(update_stats)
        self.adapt_learning_rate(update_stats)
        self.update += 1
        self._log({metrics.LEARNING_RATE: learning_rate})
        diagnose = self.update % DIAGNOSTIC_INTERVAL == 1 or self.update == self.num_updates
        if diagnose and self.writer is not None:  # of rank 0's experience
            diagnostics = self._memory_diagnostics(experience)
            self._log({metrics.MEMORY_PREFIX + name: value for name, value in diagnostics.items()})

        previous_step = self.global_step - self.steps_per_update
        if cfg.eval.interval and self.global_step // cfg.eval.interval > previous_step // cfg.eval.interval:
            self._log_summary(self._evaluate(), metrics.EVAL_RETURN, metrics.EVAL_SUCCESS, metrics.EVAL_LENGTH)

    def set_learning_rate(self) -> float:
        """Sets the optimiser to this update's rate and returns it: the schedule's (annealed unless
        agent.anneal_lr is off) times its scale."""
        agent = self.cfg.agent
        learning_rate = (self.schedule.at(self.update) if agent.anneal_lr else agent.learning_rate) * self.schedule.scale
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        return learning_rate

    def adapt_learning_rate(self, update_stats: dict[str, float]) -> None:
        """After an update (its statistics by TensorBoard tag): moves the schedule's scale toward
        agent.lr_target_kl times the policy's entropy share, within bounds that shrink with that share;
        nothing when the key is null."""
        target_kl = self.cfg.agent.lr_target_kl
        if target_kl is None:
            return
        share = entropy_share(update_stats[metrics.UPDATE_TAGS["entropy"]], self.policy.action_head.max_entropy)
        # A nearly deterministic policy's KL is small whatever the rate, and Adam's steps on its small gradients
        # are the rate's size: above the schedule's rate they collapsed solved policies (benchmarks/RESULTS.md,
        # "the rate's ceiling"). So the ceiling falls with the share, to the schedule's own rate.
        max_scale = max(1.0, LR_SCALE_BOUNDS[1] * share)
        self.schedule = self.schedule.adapted(update_stats[metrics.APPROX_KL], target_kl * share, max_scale)

    # ------------------------------------------------------------------ PPO

    def _build_experience(self) -> None:
        """The training envs and their collector; sets steps_per_update (env steps of all ranks per update)."""
        cfg, agent = self.cfg, self.cfg.agent
        self.envs = make_envs(cfg.env.id, agent.num_envs, self.seed, **env_options(cfg, self.device))
        sequence_length = agent.sequence_length or agent.rollout_length
        self.collector = Collector(self.policy, self.envs, self.device, agent.rollout_length, sequence_length, cfg.capture,
                                   agent.align_episodes)
        self.steps_per_update = agent.num_envs * agent.rollout_length * distributed.world_size()

    def _start_experience(self, seed: int, saved: dict[str, Any] | None) -> None:
        """Fresh episodes seeded with `seed`, or the episodes of a checkpoint (`saved`, see `_experience_state`)."""
        if saved is None:
            self.collector.restart(seed)
        else:
            restore_collector(self.collector, saved)

    def _experience_state(self) -> dict[str, Any] | None:
        """What a checkpoint keeps of the episodes in flight; None: they start afresh on resume."""
        return collector_state(self.collector)

    def _collect(self) -> tuple[Rollout, EpisodeStats]:
        """The experience of one update, and the episodes that ended in it."""
        return self.collector.collect()

    def _update(self, rollout: Rollout) -> dict[str, float]:
        """One update on the experience; its statistics by TensorBoard tag."""
        stats = ppo_update(self.policy, self.optimizer, rollout, self.cfg.agent, self.generator)
        return {metrics.UPDATE_TAGS[name]: value for name, value in stats.items()}

    def _replay_for_diagnostics(self, rollout: Rollout, count: int) -> None:
        """Runs the policy's inputs and core over up to `count` training sequences of the experience from
        their stored states (the caller records the core's diagnostics)."""
        zeros = torch.zeros_like(rollout.values)
        batch = training_sequences(rollout, zeros, zeros)
        batch = batch.rows(torch.arange(min(count, batch.resets.shape[0]), device=batch.resets.device))
        self.policy.memory(batch.obs, batch.prev_actions, batch.prev_rewards, batch.states, batch.resets)

    def _agent_hparams(self) -> dict[str, Any]:
        """The agent's settings on the HParams tab (besides the learning rate)."""
        return {"num_envs": self.cfg.agent.num_envs, "rollout_length": self.cfg.agent.rollout_length}

    def _learner_state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the learner besides the policy and its optimiser (PPO: nothing)."""
        return {}

    def _restore_learner(self, saved: dict[str, Any]) -> None:
        """Puts back what `_learner_state` returned (from a checkpoint, on the CPU)."""

    def _close_experience(self) -> None:
        """Releases what `_build_experience` made (at the end of `run`, also after an error)."""
        self.collector.envs.close()

    # ------------------------------------------------------------------ logging

    def _log(self, scalars: dict[str, float]) -> None:
        """Writes `scalars` (tag -> value) at the current step, on rank 0."""
        if self.writer is not None:
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, self.global_step)

    def _log_episodes(self, episodes: EpisodeStats) -> None:
        if not episodes.returns:
            return
        summary = summarize(episodes)
        self.recent_returns.extend(episodes.returns)
        self.recent_successes.extend(s for s in episodes.successes if not math.isnan(s))
        self._log_summary(summary, metrics.EPISODE_RETURN, metrics.EPISODE_SUCCESS, metrics.EPISODE_LENGTH)

    def _log_summary(self, summary: dict[str, float], return_tag: str, success_tag: str, length_tag: str) -> None:
        self._log({return_tag: summary["return"], length_tag: summary["length"]})
        if not math.isnan(summary["success"]):
            self._log({success_tag: summary["success"]})

    def _memory_diagnostics(self, experience: Any) -> dict[str, float]:
        """The core's diagnostics over a few training sequences of `experience`, replayed without gradients."""
        core = self.policy.core
        core.record_diagnostics = True
        try:
            with torch.no_grad():
                self._replay_for_diagnostics(experience, DIAGNOSTIC_SEQUENCES)
        finally:
            core.record_diagnostics = False
        return dict(core.last_diagnostics)

    def _evaluate(self) -> dict[str, float]:
        cfg = self.cfg.eval
        return evaluate(self.eval_collector, cfg.episodes, cfg.greedy, self.cfg.seed + EVAL_SEED_OFFSET)

    @staticmethod
    def _recent(values: deque[float]) -> str:
        return f"{np.mean(values):.3f}" if values else "-"

    def _final_summary(self, seconds: float, start_step: int) -> dict[str, float]:
        final = self._evaluate()
        summary = {
            "global_step": float(self.global_step),
            "sps": (self.global_step - start_step) / seconds,
            "train_return": float(np.mean(self.recent_returns)) if self.recent_returns else float("nan"),
            "train_success": float(np.mean(self.recent_successes)) if self.recent_successes else float("nan"),
            "eval_return": final["return"],
            "eval_success": final["success"],
            "eval_length": final["length"],
            "parameters_agree": float(distributed.modules_agree(self.policy)),
        }
        self._log_summary(final, metrics.EVAL_RETURN, metrics.EVAL_SUCCESS, metrics.EVAL_LENGTH)
        if self.writer is None:  # rank 0 reports the run
            return summary
        self._write_hparams(final)
        cfg = self.cfg
        processes = f" on {distributed.world_size()} processes" if distributed.world_size() > 1 else ""
        agreement = "identical" if summary["parameters_agree"] else "DIFFERENT"
        ranks = f"\n  parameters on the {distributed.world_size()} ranks: {agreement}" if processes else ""
        print(
            f"\n{cfg.env.name} / {cfg.memory.name} / seed {cfg.seed}: {self.global_step} steps{processes} in "
            f"{seconds:.0f} s ({summary['sps']:.0f} steps/s)\n"
            f"  final evaluation ({cfg.eval.episodes} episodes, {'greedy' if cfg.eval.greedy else 'sampled'}): "
            f"return {final['return']:.3f}, success {final['success']:.3f}, length {final['length']:.1f}\n"
            f"  last 100 training episodes: return {summary['train_return']:.3f}, "
            f"success {summary['train_success']:.3f}\n"
            f"  run directory: {self.run_dir}{ranks}"
        )
        return summary

    def _write_hparams(self, final: dict[str, float]) -> None:
        """HParams tab: the run's main settings and the core's options, with the final evaluation as
        its metrics."""
        cfg = self.cfg
        options = {**core_options(cfg.memory.core), **cfg.memory.options}
        hparam_values = {
            "env": cfg.env.name,
            "memory": cfg.memory.name,
            "core": cfg.memory.core,
            "seed": cfg.seed,
            "hidden_dim": cfg.memory.hidden_dim,
            "total_steps": cfg.total_steps,
            **self._agent_hparams(),
            "learning_rate": cfg.agent.learning_rate,
            "compare": cfg.agent.compare,
            **{f"memory.{name}": hparam_value(value) for name, value in options.items()},
        }
        final_metrics = {metrics.FINAL_RETURN: final["return"], metrics.FINAL_SUCCESS: final["success"]}
        experiment, session_start, session_end = hparams(hparam_values, final_metrics)
        for summary in (experiment, session_start, session_end):
            self.writer.file_writer.add_summary(summary)
        for tag, value in final_metrics.items():
            self.writer.add_scalar(tag, value, self.global_step)

    # ------------------------------------------------------------------ checkpoints

    def _checkpoint(self) -> None:
        """Rank 0 saves the run (model, optimiser and counters are the same on every rank) with its own
        random streams and episodes; the other ranks only note the path."""
        path = self.run_dir / "checkpoints" / f"step{self.global_step:010d}.pt"
        if distributed.is_main():
            save_checkpoint(
                path,
                {
                    "model": self.policy.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "config": dataclasses.asdict(self.cfg),
                    "counters": {"update": self.update, "global_step": self.global_step},
                    "rng": capture_rng(self.generator),
                    "lr_schedule": dataclasses.asdict(self.schedule),
                    "collector": self._experience_state(),
                    "learner": self._learner_state(),
                },
            )
            for old in sorted(path.parent.glob("step*.pt"))[: -self.cfg.keep_checkpoints]:
                old.unlink()
        self.last_checkpoint, self.checkpoint_step = path, self.global_step

    def _resume(self, path: Path) -> Path:
        """Loads a checkpoint into this trainer and its collector; returns its run directory
        (checkpoints/ lives inside)."""
        checkpoint = load_checkpoint(path)
        stored, current = checkpoint["config"], dataclasses.asdict(self.cfg)
        changed = [key for key in RESUME_FIXED if stored[key] != current[key]]
        if changed:
            raise ConfigError(
                f"cannot resume {path}: the config differs in {', '.join(changed)} "
                f"(resume keeps env, memory, agent and seed; it may change total_steps, eval, device, ...)"
            )
        self.update = checkpoint["counters"]["update"]
        self.global_step = checkpoint["counters"]["global_step"]
        if self.global_step != self.update * self.steps_per_update:
            raise ConfigError(
                f"cannot resume {path}: it made {self.global_step // self.update} env steps per update, this "
                f"run makes {self.steps_per_update} ({self.STEPS_PER_UPDATE} x processes): resume it with "
                f"as many processes as it was trained with"
            )
        self.policy.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self._restore_learner(checkpoint.get("learner", {}))  # checkpoints before SAC have none
        self.schedule = self._resumed_schedule(LearningRateSchedule(**checkpoint["lr_schedule"]), path)
        saved = checkpoint["collector"]
        if distributed.is_main():  # the checkpoint holds rank 0's random streams and episodes
            restore_rng(checkpoint["rng"], self.generator)
        else:  # the other ranks' were not saved: fresh ones, seeded apart, and the shared minibatch order
            seed_everything(restart_seed(self.seed, self.global_step))
            self.generator.set_state(checkpoint["rng"]["generator"])
            saved = None
        self._start_experience(restart_seed(self.seed, self.global_step), saved)
        self.last_checkpoint, self.checkpoint_step = path, self.global_step
        return path.resolve().parent.parent

    def _resumed_schedule(self, stored: LearningRateSchedule, path: Path) -> LearningRateSchedule:
        """The stored schedule; if total_steps changed, one from the rate reached to 0 at the new end
        (no jump in the learning rate)."""
        if stored.end == self.num_updates:
            return stored
        schedule = LearningRateSchedule(self.update, stored.at(self.update), self.num_updates, stored.scale)
        if self.cfg.agent.anneal_lr and schedule.start_lr <= 0 and self.update < self.num_updates:
            raise ConfigError(
                f"cannot raise total_steps when resuming {path}: its learning rate has annealed to 0 "
                f"(agent.anneal_lr=true), so more updates would not train; resume from an earlier "
                f"checkpoint (its rate then anneals to 0 at the new total_steps) or start a longer run"
            )
        return schedule


def trainer_class(cfg: TrainConfig) -> type[Trainer]:
    """The trainer of cfg's agent: Trainer (PPO), ImpalaTrainer, SacTrainer (SAC-Discrete) or DqnTrainer."""
    from hqlt.agents.dqn import DqnTrainer  # they build on this module
    from hqlt.agents.impala import ImpalaTrainer
    from hqlt.agents.sac import SacTrainer

    return {ImpalaConfig: ImpalaTrainer, SACConfig: SacTrainer, DQNConfig: DqnTrainer}.get(type(cfg.agent), Trainer)


def train(cfg: TrainConfig) -> dict[str, float]:
    """Trains one run of `cfg` with its agent's trainer and returns its final summary."""
    return trainer_class(cfg)(cfg).run()
