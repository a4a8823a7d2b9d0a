"""IMPALA (Espeholt et al. 2018): actor processes collect while a V-trace learner trains.

    python train_rl.py agent=impala [agent.num_actors=16] [agent.burn_in=10] ...

    actor i (a process)                      shared memory                     learner (the trainer)
    envs + CPU copy of the policy ── segment ──> buffer pool ── full queue ──> replay from the stored
    memory state per env, carried <── parameters + version <── publish ──────── states, V-trace, a step

Each actor steps its own vector envs (`make_envs`, through the Collector) with a CPU copy of the
policy and carries every env's memory state from segment to segment. It fills a free buffer of the
pool with a segment of T = `segment_length` steps (what the policy saw and did, the behaviour
log-probs, rewards and episode flags, the values of truncated episodes' final observations, the
observation after the segment) and the core state before it, then puts the buffer's index on the
full queue with the parameter version it acted with. With a burn-in of B > 0 steps the buffer also
holds the B steps before the segment, and the stored state is the one before those (R2D2,
Kapturowski et al. 2019).

The learner takes `batch_segments` segments per update. A segment's policy lag is the learner's
version (its number of updates) minus the segment's; segments older than `max_policy_lag` are
dropped and counted. It re-runs the core in sequence mode from the stored states (the burn-in
without gradient), computes V-trace targets and advantages with its own values (the bootstrap value
after each segment included; truncated episodes' final values are the actor's), takes one step on
the policy-gradient, value and entropy losses and publishes its parameters (with its buffers:
PopArt's statistics) under the new version.

Stored states are stale: the actor computed them with older parameters than the learner replays
them with. benchmarks/RESULTS.md, "IMPALA: stale states and burn-in", measures what that costs.

Failures: an actor that raises reports its traceback and the run stops with "IMPALA actor <i>
failed: <exception>"; an actor that dies without a word (killed, a crash in native code) stops it
with its exit code; every wait has a timeout, and actors stop once their learner is gone. Actors
ignore Ctrl-C and SIGTERM: the learner handles them as for PPO (a checkpoint, then stop) and stops
the actors on its way out, as on any error.
"""

from __future__ import annotations

import copy
import math
import multiprocessing
import queue
import signal
import statistics
import time
import traceback
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from hqlt.agents import distributed, metrics
from hqlt.agents.policy import Policy, build_policy
from hqlt.agents.ppo import (
    ENTROPY_FLOOR_WEIGHT, approx_kl, checked_step, entropy_deficit, entropy_floor, explained_variance,
    policy_advantages,
)
from hqlt.agents.rollout import CARRY_FIELDS, Collector, EpisodeStats, Rollout
from hqlt.agents.trainer import Trainer, TrainingError, env_options, merge_episodes, seed_everything
from hqlt.agents.vtrace import vtrace
from hqlt.configs.schema import ImpalaConfig, TrainConfig
from hqlt.envs import make_envs
from hqlt.memory import State

CPU = torch.device("cpu")
# Actor i seeds its envs and random streams with the learner's seed + i * ACTOR_SEED_OFFSET.
ACTOR_SEED_OFFSET = 10_000
# How often a wait on a queue wakes up to check on the other side.
POLL_SECONDS = 0.5
# The learner stops the run when no actor has sent a segment for this long (an env that hangs).
ACTOR_TIMEOUT_SECONDS = 300.0
# How long the actors have to finish their segment and exit when stopped, before they are killed.
STOP_SECONDS = 10.0


@dataclass
class Segments:
    """Trajectory segments of T steps after a burn-in prefix of B steps (B may be 0); rows are envs.

    obs `[N, B + T + 1, *obs_shape]`, prev_actions `[N, B + T + 1, *action_shape]`, prev_rewards
    `[N, B + T + 1]`, resets bool `[N, B + T + 1]`: what the policy saw at the B prefix steps, the T
    steps and the step after them; actions `[N, T, *action_shape]`, log_probs (the behaviour
    policy's), rewards, final_values (of info["final_obs"] where truncated, else 0) `[N, T]`,
    terminated/truncated bool `[N, T]`; states `{name: [N, ...]}`: the policy's memory state
    (`Policy.initial_state`'s entries) before step 0.
    """

    obs: Tensor
    prev_actions: Tensor
    prev_rewards: Tensor
    resets: Tensor
    actions: Tensor
    log_probs: Tensor
    rewards: Tensor
    final_values: Tensor
    terminated: Tensor
    truncated: Tensor
    states: State

    def map(self, function: Callable[[Tensor], Tensor]) -> Segments:
        """`function` applied to every tensor, states included."""
        tensors = {f.name: function(getattr(self, f.name)) for f in fields(self) if f.name != "states"}
        return Segments(**tensors, states={name: function(value) for name, value in self.states.items()})

    def rows(self, index: Tensor) -> Segments:
        """The env rows at `index` (int `[N']`)."""
        return self.map(lambda x: x[index])


class Actor:
    """Collects segments from `envs` with `policy` on the CPU, carrying each env's memory state.

    `segment()` steps every env `segment_length` times: the Segments of the N envs, the Rollout they
    are cut from and the episodes that ended.
    """

    def __init__(
        self, policy: Policy, envs: Any, segment_length: int, burn_in: int, seed: int, capture: bool | None = None
    ) -> None:
        self.segment_length, self.burn_in = segment_length, burn_in
        # The collector stores the state every gcd(T, B) steps: the one before step T - B, where the
        # next segment's burn-in starts, is then among them.
        self.state_interval = math.gcd(segment_length, burn_in)
        self.collector = Collector(policy, envs, CPU, segment_length, self.state_interval, capture)
        self.collector.restart(seed)
        # Before the first segment there is no history: a prefix of zeros from a fresh state. Every env
        # resets at the first step (restart), which discards what the burn-in computed.
        carry = self._carry()
        self.prefix = {name: torch.zeros(len(x), burn_in, *x.shape[1:], dtype=x.dtype) for name, x in carry.items()}
        self.prefix_state = policy.initial_state(len(carry["resets"]), device=CPU)

    def _carry(self) -> dict[str, Tensor]:
        """The collector's carry (what its next step starts from) under the Rollout's field names."""
        collector = self.collector
        return dict(zip(CARRY_FIELDS, (collector.obs, collector.prev_action, collector.prev_reward, collector.resets)))

    def segment(self) -> tuple[Segments, Rollout, EpisodeStats]:
        """The next `segment_length` steps of every env (see the class docstring)."""
        rollout, episodes = self.collector.collect()
        length, burn_in = self.segment_length, self.burn_in
        after = self._carry()
        carry = {name: torch.cat([self.prefix[name], getattr(rollout, name), after[name][:, None]], dim=1)
                 for name in CARRY_FIELDS}
        states = self.prefix_state if burn_in else {name: value[:, 0] for name, value in rollout.states.items()}
        segments = Segments(
            **carry, actions=rollout.actions, log_probs=rollout.log_probs, rewards=rollout.rewards,
            final_values=rollout.final_values, terminated=rollout.terminated, truncated=rollout.truncated,
            states=states,
        )
        # The next segment's burn-in: this one's last B steps, from the state before them.
        self.prefix = {name: getattr(rollout, name)[:, length - burn_in :] for name in CARRY_FIELDS}
        if burn_in:
            cut = (length - burn_in) // self.state_interval
            self.prefix_state = {name: value[:, cut] for name, value in rollout.states.items()}
        return segments, rollout, episodes


def replay_segments(
    policy: Policy, segments: Segments, burn_in: int, recall_pairs: int = 0, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Re-runs the policy over the segments from their stored states: log-probs of the taken actions,
    entropies and values, each `[N, T]`, the values `[N]` of the observations after the segments, and
    the episodic recall loss over the T steps (`recall_pairs` pairs, as PPO's `replay`; 0 without `generator`).

    The burn-in prefix (the first `burn_in` steps) runs without gradient: it only brings the stored
    states up to date with the current parameters. The T steps and the step after them run from there.
    """
    inputs = (segments.obs, segments.prev_actions, segments.prev_rewards)
    states = segments.states
    if burn_in:
        with torch.no_grad():
            _, _, states = policy(*(x[:, :burn_in] for x in inputs), states, segments.resets[:, :burn_in])
    y, features, _ = policy.memory(*(x[:, burn_in:] for x in inputs), states, segments.resets[:, burn_in:])
    dist, values = policy.action_head(y), policy.critic(y).squeeze(-1)
    # The step after the segment is replayed for its value alone: any action fills its place.
    actions = torch.cat([segments.actions, segments.actions[:, -1:]], dim=1)
    log_probs, entropy = dist.log_prob(actions), dist.entropy()
    recall_loss = policy.recall.loss(
        y[:, :-1], features[:, :-1], segments.resets[:, burn_in:-1], recall_pairs, generator
    )
    return log_probs[:, :-1], entropy[:, :-1], values[:, :-1], values[:, -1].detach(), recall_loss


def impala_update(
    policy: Policy, optimizer: torch.optim.Optimizer, segments: Segments, cfg: ImpalaConfig, generator: torch.Generator
) -> dict[str, float]:
    """`cfg.update_epochs` V-trace steps on a batch of segments, each replaying it with the parameters the
    previous one left (as PPO's epochs reuse a rollout); returns the means of their losses and diagnostics."""
    passes, start_log_probs = [], None
    for _ in range(cfg.update_epochs):
        summary, log_probs = vtrace_step(policy, optimizer, segments, cfg, generator, start_log_probs)
        passes.append(summary)
        if start_log_probs is None:
            start_log_probs = log_probs
    return {name: statistics.fmean(one[name] for one in passes) for name in passes[0]}


def vtrace_step(
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    segments: Segments,
    cfg: ImpalaConfig,
    generator: torch.Generator,
    start_log_probs: Tensor | None = None,
) -> tuple[dict[str, float], Tensor]:
    """One V-trace actor-critic step on a batch of segments; returns its losses and diagnostics (means
    over ranks) and the log-probs `[N, T]` of the batch's actions before the step. `generator` draws the
    episodic recall objective's pairs; `start_log_probs` `[N, T]`: the update's first pass's log-probs
    (None on the first pass), against which the update's own KL is measured."""
    # 1. Re-run the core from the stored states: the burn-in without gradient, then the segments.
    log_probs, entropy, values, bootstrap_values, recall_loss = replay_segments(
        policy, segments, cfg.burn_in, cfg.recall_pairs, generator if cfg.recall_coef else None
    )

    # 2. V-trace targets and advantages of the current policy from the behaviour policy's steps.
    # The value after step t is the next step's, the final observation's where truncated, and the
    # bootstrap value after the last step; vtrace zeroes it where terminated.
    log_rhos = log_probs.detach() - segments.log_probs
    following = torch.cat([values.detach()[:, 1:], bootstrap_values[:, None]], dim=1)
    next_values = torch.where(segments.truncated, segments.final_values, following)
    vs, advantages = vtrace(
        log_rhos, segments.rewards, values.detach(), next_values, segments.terminated, segments.truncated,
        cfg.gamma, cfg.rho_bar, cfg.c_bar, cfg.gae_lambda,
    )

    # 3. Losses in units of the value statistics' std (PopArt; 1 without normalize_values), so that
    # neither the policy gradient nor the value loss grows with the reward scale; the entropy bonus,
    # PPO's entropy floor under every step's entropy (a T-Maze junction that the corridor's "right"
    # generalised to keeps trying its turns) and PPO's episodic recall objective on the memory.
    value_scale = policy.value_layer.std
    policy_loss = -(policy_advantages(advantages, value_scale, cfg.normalize_advantages) * log_probs).mean()
    value_loss = 0.5 * (((values - vs) / value_scale) ** 2).mean()
    entropy_mean = entropy.mean()
    floor_deficit = entropy_deficit(entropy, entropy_floor(policy, cfg))
    actor_loss = policy_loss - cfg.ent_coef * entropy_mean + ENTROPY_FLOOR_WEIGHT * floor_deficit
    loss = actor_loss + cfg.vf_coef * value_loss + cfg.recall_coef * recall_loss

    # 4. The step: gradients averaged over ranks, clipped, never applied on a NaN/inf (as PPO's).
    optimizer.zero_grad()
    loss.backward()
    grad_norm = checked_step(policy, optimizer, loss, cfg.max_grad_norm, "IMPALA",
                             {"policy": policy_loss, "value": value_loss, "entropy": entropy_mean})

    # 5. The value statistics follow the targets: after the step, since the backward pass needed the
    # output layer's weights as they were (PopArt rescales them in place, keeping the values). The
    # reward input's scale (Policy.update_reward_scale, which PPO moves) stays at 1: moved here, it
    # kept passive T-Maze 20 from being learned (benchmarks/RESULTS.md, "IMPALA: learning the T-Maze").
    if cfg.normalize_values:
        policy.value_layer.update(vs)

    rhos = log_rhos.exp()
    # The update's own KL, from the policy at its start to this pass's (0 on the first pass): what PPO's
    # approx_kl measures and agent.lr_target_kl holds. The behaviour policy's KL also counts the actors'
    # lag, so a rate held to it reacted to stale segments (benchmarks/RESULTS.md, "the update's step size").
    # Both on the batch's actions, which the behaviour policy drew.
    update_kl = 0.0 if start_log_probs is None else approx_kl(log_probs.detach() - start_log_probs).item()
    summary = {
        "loss": loss.item(),
        "policy_loss": policy_loss.item(),
        "value_loss": value_loss.item(),
        "entropy": entropy_mean.item(),
        "recall_loss": recall_loss.item(),
        "grad_norm": grad_norm.item(),
        "rho_clip_fraction": (rhos > cfg.rho_bar).float().mean().item(),
        "approx_kl": update_kl,
        "behaviour_kl": approx_kl(log_rhos).item(),
        "explained_variance": explained_variance(values.detach().flatten(), vs.flatten()),
    }
    ranks = distributed.all_gather_objects(summary)
    return {name: statistics.fmean(r[name] for r in ranks) for name in summary}, log_probs.detach()


# ---------------------------------------------------------------------- what actors and learner share


class SegmentPool:
    """`num_buffers` buffers of `rows` env rows each in shared memory, shaped like `template` (one env's
    Segments), and the queues of their indices: an actor takes an index from `free`, fills that
    buffer and puts the index on `full` (with a SegmentSent); the learner reads it and frees it."""

    def __init__(self, template: Segments, num_buffers: int, rows: int, context: Any) -> None:
        self.buffers = template.map(lambda x: torch.zeros(num_buffers, rows, *x.shape[1:], dtype=x.dtype).share_memory_())
        self.free, self.full = context.Queue(), context.Queue()
        for index in range(num_buffers):
            self.free.put(index)

    def write(self, index: int, segments: Segments) -> None:
        buffer = self.buffers.map(lambda x: x[index])
        for f in fields(Segments):
            if f.name != "states":
                getattr(buffer, f.name).copy_(getattr(segments, f.name))
        for name, value in segments.states.items():
            buffer.states[name].copy_(value)

    def read(self, indices: list[int]) -> Segments:
        """The segments in the buffers at `indices`, copied out (rows: buffer by buffer, env by env);
        the buffers are free again."""
        index = torch.tensor(indices)
        segments = self.buffers.map(lambda x: x[index].flatten(0, 1))
        for buffer in indices:
            self.free.put(buffer)
        return segments


class SharedParameters:
    """The learner's parameters and buffers (its policy's state dict) in shared memory, and their version."""

    def __init__(self, policy: Policy, context: Any) -> None:
        self.tensors = {name: value.detach().to(CPU, copy=True).share_memory_() for name, value in policy.state_dict().items()}
        self.version = context.Value("q", -1)  # int64, with the lock that guards the tensors too

    def publish(self, policy: Policy, version: int) -> None:
        with self.version.get_lock():
            for name, value in policy.state_dict().items():
                self.tensors[name].copy_(value)
            self.version.value = version

    def pull(self, policy: Policy, version: int) -> int:
        """Loads the published parameters into `policy` if they are not `version`, the version it holds;
        returns the version it holds now."""
        with self.version.get_lock():
            if self.version.value != version:
                policy.load_state_dict(self.tensors)
                version = self.version.value
        return version


@dataclass
class SegmentSent:
    """An actor's message on the full queue: its segment is in `buffer`, collected with parameter
    version `version`; `episodes` ended in it."""

    buffer: int
    version: int
    episodes: EpisodeStats


@dataclass
class ActorFailure:
    """An actor's last message, on the error queue: what went wrong (its traceback)."""

    actor: int
    error: str


@dataclass
class Channels:
    """What an actor process shares with its learner."""

    pool: SegmentPool
    parameters: SharedParameters
    errors: Any  # queue of ActorFailure
    stop: Any  # event: the learner asks the actors to stop

    def free_buffer(self) -> int | None:
        """The index of a free buffer (waiting for one); None once the learner asks to stop or is gone."""
        while not self.stop.is_set() and multiprocessing.parent_process().is_alive():
            try:
                return self.pool.free.get(timeout=POLL_SECONDS)
            except queue.Empty:
                continue
        return None


def actor_envs(cfg: TrainConfig, num_envs: int, seed: int) -> Any:
    """An actor's envs: the run's envs on the CPU."""
    return make_envs(cfg.env.id, num_envs, seed, **env_options(cfg, CPU))


def run_actor(index: int, cfg: TrainConfig, seed: int, channels: Channels) -> None:
    """An actor process: fills free buffers with segments until the learner stops it (or is gone); an
    exception goes to the learner as an ActorFailure."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)  # the learner decides when the actors stop
    try:
        torch.set_num_threads(1)  # many actors share the cores
        seed_everything(seed)
        with closing(actor_envs(cfg, cfg.agent.envs_per_actor, seed)) as envs:
            policy = build_policy(cfg, envs.single_observation_space, envs.single_action_space)
            actor = Actor(policy, envs, cfg.agent.segment_length, cfg.agent.burn_in, seed, cfg.capture)
            version = -1
            while (buffer := channels.free_buffer()) is not None:
                version = channels.parameters.pull(policy, version)
                segments, _, episodes = actor.segment()
                channels.pool.write(buffer, segments)
                channels.pool.full.put(SegmentSent(buffer, version, episodes))
        channels.pool.full.cancel_join_thread()  # stopping: messages the learner no longer reads may go
    except BaseException:
        channels.errors.put(ActorFailure(index, traceback.format_exc()))


class ActorPool:
    """The actor processes of a run (spawned by `start`), their segment buffers and the shared parameters."""

    def __init__(self, cfg: TrainConfig, policy: Policy) -> None:
        agent = cfg.agent
        self.cfg = cfg
        self.context = torch.multiprocessing.get_context("spawn")
        # One env's segment, collected here, gives the shapes and dtypes of what the actors send.
        with closing(actor_envs(cfg, 1, cfg.seed)) as envs:
            template, _, _ = Actor(copy.deepcopy(policy).to(CPU), envs, agent.segment_length, agent.burn_in, cfg.seed).segment()
        pool = SegmentPool(template, agent.num_buffers, agent.envs_per_actor, self.context)
        self.channels = Channels(pool, SharedParameters(policy, self.context), self.context.Queue(), self.context.Event())
        self.processes: list[Any] = []

    def start(self, seed: int, policy: Policy, version: int) -> None:
        """Publishes `policy` as `version` and starts the actors, actor i seeded with seed + i * ACTOR_SEED_OFFSET."""
        self.channels.parameters.publish(policy, version)
        for index in range(self.cfg.agent.num_actors):
            process = self.context.Process(
                target=run_actor, args=(index, self.cfg, seed + index * ACTOR_SEED_OFFSET, self.channels),
                name=f"impala-actor-{index}", daemon=True,
            )
            process.start()
            self.processes.append(process)

    def publish(self, policy: Policy, version: int) -> None:
        self.channels.parameters.publish(policy, version)

    def receive(self) -> SegmentSent:
        """The next segment an actor sent, waiting for it. Raises TrainingError when an actor failed or
        died, or none sent a segment for ACTOR_TIMEOUT_SECONDS."""
        waited = 0.0
        while True:
            self._check_actors()
            try:
                return self.channels.pool.full.get(timeout=POLL_SECONDS)
            except queue.Empty:
                waited += POLL_SECONDS
                if waited >= ACTOR_TIMEOUT_SECONDS:
                    raise TrainingError(
                        f"no IMPALA actor sent a segment for {ACTOR_TIMEOUT_SECONDS:.0f} s, and all are alive: "
                        f"an env may hang"
                    ) from None

    def _check_actors(self) -> None:
        """Raises TrainingError, naming the actor, if one reported a failure or is dead."""
        failure = self._failure(timeout=0)
        if failure is None:
            dead = [index for index, process in enumerate(self.processes) if not process.is_alive()]
            if not dead:
                return
            # It may have sent its traceback just before it exited.
            failure = self._failure(timeout=POLL_SECONDS)
            if failure is None:
                exit_code = self.processes[dead[0]].exitcode
                raise TrainingError(f"IMPALA actor {dead[0]} died with exit code {exit_code} (killed, or a crash "
                                    f"outside Python) without reporting an error")
        last_line = failure.error.strip().splitlines()[-1]
        raise TrainingError(f"IMPALA actor {failure.actor} failed: {last_line}\n{failure.error}")

    def _failure(self, timeout: float) -> ActorFailure | None:
        try:
            return self.channels.errors.get(timeout=timeout)
        except queue.Empty:
            return None

    def release(self, buffer: int) -> None:
        """Frees a buffer without reading it."""
        self.channels.pool.free.put(buffer)

    def read(self, buffers: list[int]) -> Segments:
        return self.channels.pool.read(buffers)

    def close(self) -> None:
        """Stops the actors: each finishes its segment and exits; those still running after STOP_SECONDS
        are killed."""
        self.channels.stop.set()
        deadline = time.monotonic() + STOP_SECONDS
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in self.processes:
            if process.is_alive():
                process.kill()
                process.join()
        for channel in (self.channels.pool.free, self.channels.pool.full, self.channels.errors):
            channel.cancel_join_thread()
            channel.close()


# ---------------------------------------------------------------------- the trainer


@dataclass
class Collected:
    """One update's experience: segments `[batch_segments * envs_per_actor rows]`, and the statistics of
    their collection by TensorBoard tag."""

    segments: Segments
    stats: dict[str, float]


class ImpalaTrainer(Trainer):
    """One run of agent=impala: Trainer's loop, logging, evaluation, checkpoints, resume and signal
    handling, with actor processes for experience and V-trace updates (Trainer's section "PPO"
    replaced). Checkpoints hold no episodes (the actors' envs stay in their processes): a resumed run
    starts the actors afresh, seeded from the step counter, as PPO does with gymnasium envs."""

    AGENT = ImpalaConfig
    STEPS_PER_UPDATE = "batch_segments x envs_per_actor x segment_length"

    def _build_experience(self) -> None:
        agent = self.cfg.agent
        self.actors = ActorPool(self.cfg, self.policy)
        self.steps_per_update = agent.batch_segments * agent.envs_per_actor * agent.segment_length * distributed.world_size()
        self.dropped_segments = 0

    def _start_experience(self, seed: int, saved: dict[str, Any] | None) -> None:
        """The actors start with `run`, seeded from `seed` (`saved` is always None: nothing is saved)."""
        self.actor_seed = seed

    def _experience_state(self) -> None:
        return None

    def run(self) -> dict[str, float]:
        self.actors.start(self.actor_seed, self.policy, self.update)
        self.last_collected = time.perf_counter()
        return super().run()

    def _collect(self) -> tuple[Collected, EpisodeStats]:
        """Publishes the parameters of the last update, then waits for `batch_segments` segments within
        the lag bound, dropping older ones."""
        agent = self.cfg.agent
        self.actors.publish(self.policy, self.update)
        received: list[SegmentSent] = []
        kept: list[SegmentSent] = []
        waiting = 0.0
        while len(kept) < agent.batch_segments:
            start = time.perf_counter()
            sent = self.actors.receive()
            waiting += time.perf_counter() - start
            received.append(sent)
            if self.update - sent.version > agent.max_policy_lag:
                self.actors.release(sent.buffer)
                self.dropped_segments += 1
            else:
                kept.append(sent)
        segments = self.actors.read([sent.buffer for sent in kept]).map(lambda x: x.to(self.device))
        now = time.perf_counter()
        seconds, self.last_collected = now - self.last_collected, now
        delivered = len(received) * agent.envs_per_actor * agent.segment_length
        stats = {
            metrics.POLICY_LAG: statistics.fmean(self.update - sent.version for sent in kept),
            metrics.DROPPED_SEGMENTS: self.dropped_segments,
            metrics.ACTOR_SPS: delivered / seconds,
            metrics.LEARNER_IDLE: waiting / seconds,
        }
        return Collected(segments, stats), merge_episodes([sent.episodes for sent in received])

    def _update(self, collected: Collected) -> dict[str, float]:
        stats = impala_update(self.policy, self.optimizer, collected.segments, self.cfg.agent, self.generator)
        return {**{metrics.IMPALA_UPDATE_TAGS[name]: value for name, value in stats.items()}, **collected.stats}

    def _replay_for_diagnostics(self, collected: Collected, count: int) -> None:
        segments = collected.segments
        replay_segments(self.policy, segments.rows(torch.arange(min(count, len(segments.rewards)))), self.cfg.agent.burn_in)

    def _agent_hparams(self) -> dict[str, Any]:
        agent = self.cfg.agent
        names = ("num_actors", "envs_per_actor", "segment_length", "batch_segments", "burn_in", "max_policy_lag")
        return {name: getattr(agent, name) for name in names}

    def _close_experience(self) -> None:
        self.actors.close()
