"""Typed schemas of the training config, and the checks run before training starts.

The Hydra tree beside this file (env/, memory/, agent/, experiment/) fills these dataclasses; a key
that is not declared here fails at composition, and `validate` rejects values that are declared but
wrong (unknown core, unknown env id, sizes that do not divide, rates out of range), each time naming
the valid choices. Each agent has a schema of its own (AGENT_SCHEMAS), picked by `agent.name`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

DEVICES = ("auto", "cpu", "cuda", "cuda:<index>")
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
# The bounds `validate` checks numeric keys against.
BOUNDS: dict[str, Callable[[float], bool]] = {
    ">= 1": lambda value: value >= 1,
    ">= 0": lambda value: value >= 0,
    "> 0": lambda value: value > 0,
    "in [0, 1]": lambda value: 0 <= value <= 1,
    "in (0, 1]": lambda value: 0 < value <= 1,
    "in [0, 1)": lambda value: 0 <= value < 1,
}


class ConfigError(ValueError):
    """A config value that cannot run; the message names the key and the valid choices."""


@dataclass
class EnvConfig:
    """An environment: `id` goes to `hqlt.envs.make_envs(id, **kwargs)`; `name` labels run directories
    (the presets derive it with `env_name`)."""

    name: str = MISSING
    id: str = MISSING
    kwargs: dict[str, Any] = field(default_factory=dict)
    # auto | batched | gymnasium: the env's batched torch port on the training device (auto: where
    # one exists, hqlt.envs.BATCHED_IDS) or gymnasium vector envs on the host.
    vectorization: str = "auto"


@dataclass
class MemoryConfig:
    """A memory core: `build_core(core, input_dim, hidden_dim, **options)`; `name` labels run directories."""

    name: str = MISSING
    core: str = MISSING
    hidden_dim: int = 128
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class PPOConfig:
    """PPO over whole rollouts, and the policy around the memory core."""

    name: str = "ppo"
    num_envs: int = 16
    rollout_length: int = 128
    # Training sequence length; 0 trains on whole rollouts. Must divide rollout_length.
    sequence_length: int = 0
    # Every env starts a new episode at each rollout's start; the episodes still running at a rollout's end
    # are truncated there (bootstrapped). Then every episode no longer than rollout_length lies whole in
    # one training row: the gradient from its decision reaches its cue, and the recall objective pairs its
    # first step (stored states at row starts are detached). Costs the truncated tails' steps; an episode
    # longer than rollout_length never ends.
    align_episodes: bool = False
    num_minibatches: int = 4
    update_epochs: int = 4
    learning_rate: float = 3e-4
    anneal_lr: bool = True
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_coef: float = 0.2
    # Clip the value loss around the acting values (by clip_coef in normalised units): off, it slows the
    # critic without a measured gain.
    clip_value_loss: bool = False
    # PopArt: the critic learns values normalised by running statistics of the returns, so the value
    # loss's gradient does not grow with the reward scale and swamp the policy's in the shared core.
    normalize_values: bool = True
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    # Weight of the episodic recall objective (hqlt/agents/recall.py): the memory learns to keep what
    # told its episode apart from the others, before the policy acts on it; 0 turns it off.
    recall_coef: float = 0.1
    # Anchor steps t of that objective per minibatch, each paired with a random earlier step and with its
    # episode's first step: each pair costs a [B, B] logit matrix, so many are cheap.
    recall_pairs: int = 32
    # Least entropy of each step's action distribution, as a fraction of the uniform one's (discrete
    # actions): below it a penalty holds the policy, so that a state the rest of the policy's
    # determinism generalised to (a T-Maze junction) still tries its other actions; 0 turns it off.
    min_entropy: float = 0.01
    # The last final_steps steps of an episode as long as the longest ended so far act with probability epsilon
    # uniformly (discrete action spaces; sampled actions only: greedy ones never explore), trained on as the
    # policy's own actions (their log-probs are the policy's): a task's last decision that the policy's
    # determinism elsewhere generalised to (a T-Maze junction) is tried in a constant share of the episodes,
    # and each try with a positive advantage raises it by up to PPO's clip (benchmarks/RESULTS.md, "PPO tries
    # the T-Maze turn"). The price: that share of the last steps acts at random in training. 0: off.
    final_steps: int = 1
    epsilon: float = 0.1
    max_grad_norm: float = 0.5
    normalize_advantages: bool = True
    # Stop an update's epochs early once the approximate KL passes this; null never stops.
    target_kl: float | None = None
    # Hold each update's approximate KL (train/approx_kl) near this times the policy's entropy share (its
    # entropy over the uniform one's; 1 for continuous actions) by scaling the learning rate (its schedule's
    # value) up after an update below half of it and down above twice it (Trainer.adapt_learning_rate);
    # null: the schedule alone. Where PPO's updates barely moved the policy (POPGym's CountRecall, Autoencode,
    # RepeatPreviousMedium) it learned far more in the same steps (benchmarks/RESULTS.md, "the rate's ceiling").
    lr_target_kl: float | None = 0.01
    # Width of the observation encoder's output, which is the memory core's input.
    encoder_dim: int = 64
    # Width of the hidden layer of the actor and critic heads.
    head_dim: int = 64
    # The heads read y + (W_m y) * (W_v x), y the core's output and x the current observation's features: a
    # multiplicative term that compares what the memory holds with what is in view (Policy, ViewComparison).
    compare: bool = False


@dataclass
class ImpalaConfig:
    """IMPALA: actor processes step envs with a recent copy of the policy and send fixed-length segments
    to a V-trace learner (hqlt.agents.impala); and the policy around the memory core."""

    name: str = "impala"
    num_actors: int = 2
    envs_per_actor: int = 8
    # Env steps per segment (T): what one actor sends at a time, and the length the learner trains on.
    # Gradients never cross a segment start: a memory that must span N steps needs T > N.
    segment_length: int = 64
    # Shared-memory segment buffers the actors fill and the learner empties; at least batch_segments.
    num_buffers: int = 8
    # Segments per update (each holds envs_per_actor env rows).
    batch_segments: int = 2
    # V-trace steps on each batch, each replaying it with the parameters the last one left (the ratios to
    # the actors' policy grow with each, and V-trace clips them), as PPO's epochs reuse a rollout. With one
    # pass IMPALA stayed at chance on popgym RepeatPreviousEasy for 1M steps where 4 learned it by 560k
    # (benchmarks/RESULTS.md, "IMPALA: passes over each batch"); each pass costs the learner one step.
    update_epochs: int = 4
    # Segments collected more than this many updates ago are dropped (and counted) instead of trained on.
    max_policy_lag: int = 4
    # R2D2's burn-in: the steps before each segment (at most segment_length) are replayed without
    # gradient to refresh the stored core state with the current parameters; 0 trains from the stored state.
    burn_in: int = 0
    learning_rate: float = 3e-4
    anneal_lr: bool = True
    # As in PPOConfig (the KL of the update's own move), but off by default: with the actors' lag, updates
    # that moved the policy at that rate took the lstm off T-Maze 100's corridor (benchmarks/RESULTS.md,
    # "what holds the lstm back on T-Maze 100").
    lr_target_kl: float | None = None
    gamma: float = 0.99
    # V-trace's truncation of the importance ratios (Espeholt et al. 2018): rho_bar for the targets'
    # deltas and the policy gradient, c_bar for the traces.
    rho_bar: float = 1.0
    c_bar: float = 1.0
    # lambda of the V-trace targets and advantages: on-policy they are PPO's GAE(gae_lambda) ones.
    gae_lambda: float = 1.0
    # PopArt value normalisation, as in PPOConfig; the policy gradient is normalised by the same std.
    normalize_values: bool = True
    # Standardise the V-trace advantages over each batch (PPO's normalize_advantages, per minibatch there).
    # With gae_lambda=0.95 it took batches of 4,096 env steps off chance where neither did alone
    # (benchmarks/RESULTS.md, "IMPALA: batches of 4,096 env steps").
    normalize_advantages: bool = False
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    # PPO's episodic recall objective, entropy floor and exploration of an episode's last steps
    # (PPOConfig.recall_coef, .recall_pairs, .min_entropy, .final_steps, .epsilon).
    recall_coef: float = 0.1
    recall_pairs: int = 32
    min_entropy: float = 0.01
    final_steps: int = 1
    epsilon: float = 0.1
    max_grad_norm: float = 0.5
    encoder_dim: int = 64
    head_dim: int = 64
    compare: bool = False


@dataclass
class ReplayConfig:
    """What the replay learners share (hqlt.agents.replay; SACConfig, DQNConfig): envs stepped as for PPO,
    their training sequences kept in a replay buffer and replayed from their stored start states."""

    name: str = MISSING
    num_envs: int = 16
    # Env steps per env per collection; each collection is followed by updates_per_collect updates.
    rollout_length: int = 64
    # Training sequence length; 0: rollout_length. Must divide rollout_length.
    sequence_length: int = 0
    # Episodes aligned with rollouts (PPOConfig.align_episodes).
    align_episodes: bool = False
    # Training sequences the replay buffer keeps (the oldest are overwritten); at least one collection's.
    replay_size: int = 2048
    # Sequences per gradient step.
    batch_size: int = 32
    # Gradient steps per collection: with the other sizes, the replay ratio (env steps trained on per env
    # step collected) is updates_per_collect x batch_size / (num_envs x rollout_length / sequence_length).
    updates_per_collect: int = 4
    # Env steps collected before the first update.
    learning_starts: int = 5000
    # Adam's learning rate of every network the learner trains.
    learning_rate: float = 3e-4
    anneal_lr: bool = False
    gamma: float = 0.99
    # Polyak weight of the online network in each update of its target copy.
    tau: float = 0.005


@dataclass
class SACConfig(ReplayConfig):
    """Recurrent SAC-Discrete (hqlt.agents.sac): twin soft Q-functions on a memory core of their own, and
    the policy around the memory core. Discrete action spaces only."""

    name: str = "sac"
    # Target entropy as a fraction of the uniform policy's, log|A|. Christodoulou's 0.98 keeps the
    # policy close to uniform (the temperature grows until it is), too high to commit to a remembered
    # choice; 0.3 leaves one action about 90% of the probability among 3-4 actions.
    target_entropy_ratio: float = 0.3
    # The temperature alpha at the start (it is learned as log alpha).
    initial_alpha: float = 0.1
    # The critics learn the returns of rewards x reward_scale (the policy's reward input is unscaled).
    # The entropy bonus alpha H competes with Q-value gaps in these units, and log alpha moves only
    # about learning_rate per update, so initial_alpha must suit reward_scale (only their ratio
    # matters much). Visual Match 0 on the CPU (final reward 100, 100k steps): scale 1 with alpha 0.1
    # collapsed the policy (entropy 0.001 by 15k steps), scale 0.01 with alpha 0.1 kept it uniform,
    # scale 1 with alpha 1 kept the entropy between 0.8 and 1.4 nats; none learned within 100k steps.
    reward_scale: float = 1.0
    # Clip of the actor's and the critic's gradient norms, each on its own: the losses are in reward
    # units (no PopArt), so the clip is loose, against blow-ups only.
    max_grad_norm: float = 10.0
    encoder_dim: int = 64
    head_dim: int = 64
    compare: bool = False


@dataclass
class DQNConfig(ReplayConfig):
    """Recurrent DQN (hqlt.agents.dqn, in the style of R2D2): an exploring Q-network (a QPolicy) acts,
    double Q-learning towards n-step targets of a Polyak-averaged target network. Discrete action spaces
    only."""

    name: str = "dqn"
    # Rewards summed before the target bootstraps (R2D2's 5): values travel n steps back per target update.
    n_step: int = 5
    # Lambda of Peng's Q(lambda) targets over the whole replayed sequence (hqlt.agents.dqn.lambda_targets), in
    # place of n-step ones when > 0: a value crosses a long corridor in one target, not in a chain of them.
    q_lambda: float = 0.0
    # Exploration (hqlt.agents.policy.QPolicy): env i of N samples from (1 - eps_i) softmax(Q / (std x tau_i)) +
    # eps_i / num_actions, std the value statistics', tau_i = temperature ** (1 + temperature_alpha * i / (N - 1))
    # and eps_i = epsilon ** (the same exponent), spread as Ape-X spreads epsilons. epsilon 0: Boltzmann alone.
    temperature: float = 0.4
    temperature_alpha: float = 7.0
    epsilon: float = 0.4
    # The last final_steps steps of an episode as long as the longest ended so far are explored with epsilon by
    # every env: a task's last decision (a T-Maze junction) is tried in O(L) env steps, not O(L^2). 0: off.
    final_steps: int = 1
    # PPO's episodic recall objective (PPOConfig.recall_coef, .recall_pairs) on the replayed sequences; 0 turns it off.
    recall_coef: float = 0.1
    recall_pairs: int = 32
    # Clip of the gradient norm; the TD loss is in units of the value statistics' std (PopArt).
    max_grad_norm: float = 10.0
    encoder_dim: int = 64
    head_dim: int = 64
    compare: bool = False


# agent.name -> the agent's schema.
AGENT_SCHEMAS: dict[str, type] = {"ppo": PPOConfig, "impala": ImpalaConfig, "sac": SACConfig, "dqn": DQNConfig}


def agent_config(agent: Any) -> PPOConfig | ImpalaConfig | SACConfig | DQNConfig:
    """The agent section as its schema's dataclass: `agent` itself if it is one, else a mapping (a
    checkpoint's stored config) read into the schema its `name` picks (default ppo)."""
    if isinstance(agent, tuple(AGENT_SCHEMAS.values())):
        return agent
    name = agent.get("name", "ppo")
    if name not in AGENT_SCHEMAS:
        raise ConfigError(f"unknown agent {name!r} (agent.name); valid agents: {', '.join(AGENT_SCHEMAS)}")
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(AGENT_SCHEMAS[name]), agent))
    except OmegaConfBaseException as error:  # a key the schema lacks, a value of the wrong type
        where = f"agent.{error.full_key}" if error.full_key else f"agent={name}"
        valid = ", ".join(f.name for f in fields(AGENT_SCHEMAS[name]))
        raise ConfigError(f"{where}: {str(error).splitlines()[0]}; the keys of agent={name}: {valid}") from None


@dataclass
class EvalConfig:
    """Evaluation episodes on separate envs: every `interval` env steps (0: only at the end)."""

    interval: int = 0
    episodes: int = 32
    num_envs: int = 8
    # Greedy (most likely action) or sampled actions.
    greedy: bool = True


@dataclass
class TrainConfig:
    """Everything one training run needs; `python train_rl.py --cfg job` prints the composed values."""

    env: EnvConfig = field(default_factory=EnvConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    # One of AGENT_SCHEMAS, picked by agent.name (OmegaConf types no union of schemas): composed as a
    # plain mapping (the agent group's file, a checkpoint's stored config), checked and typed against
    # its schema in __post_init__.
    agent: Any = field(default_factory=lambda: {"name": "ppo"})
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    total_steps: int = 200_000
    device: str = "auto"
    # fp32 matrix products on CUDA through TF32 tensor cores (about 10 mantissa bits per product, fp32
    # accumulation), for acting and learning alike, in torch's products and the Triton kernels'; false keeps
    # full fp32 products (three-pass TF32 in the kernels).
    tf32: bool = True
    # torch CPU threads; small RL models run fastest on one (several spin-wait against the envs), 0 keeps torch's default.
    cpu_threads: int = 1
    # Run directories are <log_dir>/<env.name>/<memory.name>/seed<seed>-<time>.
    log_dir: str = "runs"
    # Checkpoint every this many updates (0: only the final one); checkpoints never change training.
    checkpoint_interval: int = 50
    keep_checkpoints: int = 3
    # Path of a checkpoint to continue from (its run directory is reused).
    resume: str | None = None
    async_envs: bool = False
    # Act through a CUDA graph of the whole policy step, the memory state stepped in place
    # (hqlt.agents.Collector): null on CUDA only, false never, true also on the CPU (the same
    # protocol run eagerly).
    capture: bool | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        self.agent = agent_config(self.agent)


def id_label(env_id: str) -> str:
    """An env id as a run directory name: ids such as hqlt/TMazePassive-v0 hold a '/'."""
    return env_id.replace("/", "_")


def env_name(preset_id: str | None = None, label: str = "", *kwarg_names: str, _parent_: DictConfig) -> str:
    """`env.name` of the env presets (the resolver `hqlt.env_name`), so that runs are named after the env
    actually run.

    `${hqlt.env_name:<preset id>,<label>,<kwarg>...}`: `<label>_<value of each kwarg that is set>` while
    env.id is the preset's id, else the id (`id_label`). `${hqlt.env_name:}`: always the id.
    """
    if _parent_.id != preset_id:
        return id_label(_parent_.id)
    return "_".join([label, *(str(_parent_.kwargs[name]) for name in kwarg_names if name in _parent_.kwargs)])


def register_schemas() -> None:
    """Registers the root schema as `train_schema` (the first entry of config.yaml's defaults) and the
    resolvers the config tree uses: `hqlt.env_name` and `hqlt.help` (`python train_rl.py --help`)."""
    from hqlt.configs.help import help_text

    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    OmegaConf.register_new_resolver("hqlt.env_name", env_name, replace=True)
    OmegaConf.register_new_resolver("hqlt.help", help_text, replace=True)


def env_id_error(env_id: str | None) -> ConfigError:
    """The error for an env id that is not registered (None: not set), listing every registered id."""
    from hqlt.envs import ENV_IDS

    if env_id is None:
        problem, close = "env.id is not set (env=any runs any registered id: env=any env.id=<id>)", []
    else:
        problem, close = f"unknown env id {env_id!r} (env.id)", difflib.get_close_matches(env_id, ENV_IDS, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    own = "module:EnvId for an env that the module registers when imported"
    return ConfigError(f"{problem}; {hint}valid ids: {', '.join(ENV_IDS)}; or {own}")


def validate(cfg: TrainConfig) -> None:
    """Raises ConfigError for values the schema's types cannot catch."""
    from hqlt.envs import BATCHED_IDS, ENV_IDS, VECTORIZATIONS, has_batched_port, is_user_env_id, user_env_spec
    from hqlt.memory import CORE_NAMES, core_options

    if cfg.memory.core not in CORE_NAMES:
        raise ConfigError(f"unknown memory core {cfg.memory.core!r} (memory.core); valid cores: {', '.join(CORE_NAMES)}")
    unknown_options = sorted(set(cfg.memory.options) - set(core_options(cfg.memory.core)))
    if unknown_options:
        valid = ", ".join(core_options(cfg.memory.core)) or "none"
        raise ConfigError(f"unknown memory.options {unknown_options} for core {cfg.memory.core!r}; its options: {valid}")
    if is_user_env_id(cfg.env.id):
        try:
            user_env_spec(cfg.env.id)
        except ValueError as error:
            raise ConfigError(f"{error} (env.id)") from error
    elif cfg.env.id not in ENV_IDS:
        raise env_id_error(cfg.env.id)
    for key, name in (("env.name", cfg.env.name), ("memory.name", cfg.memory.name)):
        if "/" in name:
            raise ConfigError(
                f"{key}={name!r} names a run directory (<log_dir>/<env.name>/<memory.name>/): no '/' in it"
            )
    if cfg.env.vectorization not in VECTORIZATIONS:
        raise ConfigError(
            f"unknown env.vectorization {cfg.env.vectorization!r}; valid choices: {', '.join(VECTORIZATIONS)}"
        )
    if cfg.env.vectorization == "batched" and not has_batched_port(cfg.env.id):
        raise ConfigError(
            f"env.vectorization=batched but {cfg.env.id!r} has no batched port; ids with one: {', '.join(BATCHED_IDS)}"
        )
    if cfg.env.vectorization == "batched" and cfg.async_envs:
        raise ConfigError("async_envs=true runs gymnasium envs in subprocesses; it needs env.vectorization=gymnasium or auto")
    if not DEVICE_PATTERN.fullmatch(cfg.device):
        raise ConfigError(f"unknown device {cfg.device!r}; valid choices: {', '.join(DEVICES)}")
    if AGENT_SCHEMAS.get(cfg.agent.name) is not type(cfg.agent):
        raise ConfigError(
            f"agent.name={cfg.agent.name!r} is not the name of the agent whose keys these are "
            f"({type(cfg.agent).__name__}); choose the agent with agent=<name>: {', '.join(AGENT_SCHEMAS)}"
        )
    bounds = [
        ("total_steps", cfg.total_steps, ">= 1"),
        ("memory.hidden_dim", cfg.memory.hidden_dim, ">= 1"),
        ("eval.num_envs", cfg.eval.num_envs, ">= 1"),
        ("eval.episodes", cfg.eval.episodes, ">= 1"),
        ("keep_checkpoints", cfg.keep_checkpoints, ">= 1"),
        ("eval.interval", cfg.eval.interval, ">= 0"),
        ("checkpoint_interval", cfg.checkpoint_interval, ">= 0"),
        ("cpu_threads", cfg.cpu_threads, ">= 0"),
        *agent_bounds(cfg.agent),
    ]
    for key, value, bound in bounds:
        if not BOUNDS[bound](value):  # nan fails every bound
            raise ConfigError(f"{key} must be {bound}, got {value}")
    if isinstance(cfg.agent, PPOConfig):
        validate_ppo_sizes(cfg.agent)
    elif isinstance(cfg.agent, ReplayConfig):
        validate_replay_sizes(cfg.agent)
    else:
        validate_impala(cfg)


def agent_bounds(agent: PPOConfig | ImpalaConfig | SACConfig | DQNConfig) -> list[tuple[str, float, str]]:
    """(key, value, bound) of every numeric key of the agent section that has a bound."""
    shared = [("learning_rate", "> 0"), ("gamma", "in [0, 1]"), ("max_grad_norm", "> 0")]
    # PPO's and IMPALA's losses weigh an entropy bonus and a value loss; SAC's temperature is learned.
    coefficients = [("ent_coef", ">= 0"), ("vf_coef", ">= 0")]
    replay = [("num_envs", ">= 1"), ("rollout_length", ">= 1"), ("sequence_length", ">= 0"), ("replay_size", ">= 1"),
              ("batch_size", ">= 1"), ("updates_per_collect", ">= 1"), ("learning_starts", ">= 0"), ("tau", "in (0, 1]")]
    if isinstance(agent, SACConfig):
        own = [*replay, ("target_entropy_ratio", "in [0, 1]"), ("initial_alpha", "> 0"), ("reward_scale", "> 0")]
    elif isinstance(agent, DQNConfig):
        own = [*replay, ("n_step", ">= 1"), ("q_lambda", "in [0, 1]"), ("temperature", "in (0, 1]"),
               ("temperature_alpha", ">= 0"), ("epsilon", "in [0, 1)"), ("final_steps", ">= 0"),
               ("recall_coef", ">= 0"), ("recall_pairs", ">= 1")]
    elif isinstance(agent, PPOConfig):
        own = [("num_envs", ">= 1"), ("rollout_length", ">= 1"), ("update_epochs", ">= 1"), ("sequence_length", ">= 0"),
               ("gae_lambda", "in [0, 1]"), ("clip_coef", "> 0"), ("recall_coef", ">= 0"), ("recall_pairs", ">= 1"),
               ("min_entropy", "in [0, 1]"), ("final_steps", ">= 0"), ("epsilon", "in [0, 1]"), *coefficients]
        if agent.target_kl is not None:
            own.append(("target_kl", "> 0"))
    else:
        own = [("num_actors", ">= 1"), ("envs_per_actor", ">= 1"), ("segment_length", ">= 1"), ("num_buffers", ">= 1"),
               ("batch_segments", ">= 1"), ("update_epochs", ">= 1"), ("max_policy_lag", ">= 0"), ("burn_in", ">= 0"),
               ("rho_bar", "> 0"), ("c_bar", "> 0"), ("gae_lambda", "in [0, 1]"), ("recall_coef", ">= 0"),
               ("recall_pairs", ">= 1"), ("min_entropy", "in [0, 1]"), ("final_steps", ">= 0"), ("epsilon", "in [0, 1]"),
               *coefficients]
    if isinstance(agent, (PPOConfig, ImpalaConfig)) and agent.lr_target_kl is not None:
        own.append(("lr_target_kl", "> 0"))
    return [(f"agent.{name}", getattr(agent, name), bound) for name, bound in own + shared]


def sequences_per_rollout(agent: PPOConfig | ReplayConfig) -> int:
    """The training sequences a rollout is cut into (num_envs x rollout_length / sequence_length); raises
    ConfigError unless sequence_length (0: rollout_length) divides rollout_length."""
    sequence_length = agent.sequence_length or agent.rollout_length
    if agent.rollout_length % sequence_length:
        raise ConfigError(
            f"agent.sequence_length={agent.sequence_length} must divide agent.rollout_length={agent.rollout_length}"
        )
    return agent.num_envs * (agent.rollout_length // sequence_length)


def validate_ppo_sizes(agent: PPOConfig) -> None:
    """Raises ConfigError unless the training sequences cut the rollout and the minibatches evenly."""
    num_sequences = sequences_per_rollout(agent)
    if agent.num_minibatches < 1 or num_sequences % agent.num_minibatches:
        raise ConfigError(
            f"agent.num_minibatches={agent.num_minibatches} must divide the number of training sequences "
            f"per rollout ({num_sequences} = num_envs x rollout_length / sequence_length)"
        )


def validate_replay_sizes(agent: ReplayConfig) -> None:
    """Raises ConfigError unless the training sequences cut the rollout evenly and the replay buffer
    holds one collection's sequences and a batch."""
    per_collect = sequences_per_rollout(agent)
    if agent.replay_size < max(per_collect, agent.batch_size):
        raise ConfigError(
            f"agent.replay_size={agent.replay_size} must be >= {max(per_collect, agent.batch_size)}: it must hold "
            f"one collection's sequences ({per_collect} = num_envs x rollout_length / sequence_length) and "
            f"agent.batch_size={agent.batch_size}"
        )


def validate_impala(cfg: TrainConfig) -> None:
    """Raises ConfigError for IMPALA settings that cannot run together."""
    agent = cfg.agent
    if agent.burn_in > agent.segment_length:
        raise ConfigError(
            f"agent.burn_in={agent.burn_in} must be <= agent.segment_length={agent.segment_length}: the burn-in "
            f"prefix is the end of the previous segment"
        )
    if agent.num_buffers < agent.batch_segments:
        raise ConfigError(
            f"agent.num_buffers={agent.num_buffers} must be >= agent.batch_segments={agent.batch_segments}: the "
            f"learner waits for batch_segments filled buffers at once"
        )
    if cfg.async_envs:
        raise ConfigError(
            "async_envs=true steps envs in subprocesses of one process; IMPALA's actors are processes already: "
            "raise agent.num_actors instead"
        )
