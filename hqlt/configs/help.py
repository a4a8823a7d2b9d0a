"""`python train_rl.py --help`: how to run, the config groups, the most used keys, every core and env id.

config.yaml sets Hydra's help template to `${hqlt.help:}` (this module's `help_text`, registered by
`register_schemas`), so any entry point built on this config tree prints it; Hydra then fills in
$APP_CONFIG_GROUPS with every group's options.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

# (key, what it does); `help_text` shows each with its composed value.
MOST_USED_KEYS = (
    ("seed", "the run's seed (a sweep over seeds: -m seed=0,1,2)"),
    ("total_steps", "env steps to train"),
    ("device", "auto | cpu | cuda | cuda:<index>"),
    ("env.id", "the env: any id listed below with env=any env.id=<id>"),
    ("memory.hidden_dim", "width of the memory core"),
    ("agent.num_envs", "envs stepped together"),
    ("agent.rollout_length", "steps per env between updates"),
    ("agent.learning_rate", "Adam's learning rate (annealed to 0 while agent.anneal_lr, scaled by agent.lr_target_kl)"),
    ("agent.ent_coef", "entropy bonus"),
    ("eval.interval", "env steps between evaluations (0: only the final one)"),
    ("checkpoint_interval", "updates between checkpoints (0: only the final one)"),
    ("log_dir", "runs go to <log_dir>/<env.name>/<memory.name>/seed<seed>-<time>/"),
    ("resume", "a checkpoint to continue (checkpoints/step<N>.pt of a run)"),
)
WIDTH = 100


def _listing(name: str, items: list[str]) -> str:
    return textwrap.fill(
        ", ".join(items), WIDTH, initial_indent=f"  {name}: ", subsequent_indent="      ", break_on_hyphens=False
    )


def _columns(rows: list[tuple[str, str]]) -> str:
    width = max(len(left) for left, _ in rows) + 2
    return "\n".join(f"  {left:<{width}}{right}".rstrip() for left, right in rows)


def _value(cfg: DictConfig, key: str) -> str:
    value = OmegaConf.select(cfg, key, throw_on_missing=False)
    return "null" if value is None else str(value)


def core_listing() -> str:
    """One line per memory core: its options (memory.options.<option>)."""
    from hqlt.memory import CORE_NAMES, core_options

    return "\n".join(_listing(core, list(core_options(core))) for core in CORE_NAMES)


def env_listing() -> str:
    """Every registered env id, by family."""
    from hqlt.envs import FAMILIES

    return "\n".join(_listing(family.name, list(family.ids)) for family in FAMILIES)


def help_text(*, _root_: DictConfig) -> str:
    """The help of the training entry point, showing the values composed from `_root_` (the config)."""
    program = Path(sys.argv[0]).name
    command = f"python {program}" if program.endswith(".py") else program
    usage = _columns([
        (f"{command} [group=option ...] [key=value ...]", ""),
        (f"{command} -m memory=lstm,gru,hqlt seed=0,1,2", "a sweep, one run after another"),
        (f"{command} env=any env.id=<id> +env.kwargs.<k>=<v>", "any registered env id, with its arguments"),
        (f"{command} agent=dqn", "off-policy: recurrent DQN (n-step double Q) from a replay buffer"),
        (f"{command} agent=sac agent.updates_per_collect=8", "off-policy: recurrent SAC-Discrete from a replay buffer"),
        (f"{command} resume=<run>/checkpoints/step<N>.pt", "continue a run"),
        (f"{command} --cfg job", "print the composed config"),
        ("python -m hqlt.compare runs/<env.name>", "learning curves and final scores of a sweep"),
    ])
    keys = _columns([
        *((f"{key}={_value(_root_, key)}", what) for key, what in MOST_USED_KEYS),
        ("+env.kwargs.<k>=<v>", "an argument of the env's constructor"),
        ("memory.options.<option>=<v>", "an option of the memory core (listed below)"),
    ])
    return f"""Train a memory agent with PPO (agent=ppo), IMPALA (agent=impala), SAC-Discrete (agent=sac) or DQN
(agent=dqn) on a partially observable env.

{usage}

== Config groups (group=option) ==
$APP_CONFIG_GROUPS

== Most used keys (key=value as composed) ==
{keys}
Every key and its type: hqlt/configs/schema.py; a mistyped key fails with the valid ones.

== Memory cores (memory.core) and their options ==
{core_listing()}

== Env ids (env=any env.id=<id>) ==
{env_listing()}

--hydra-help: Hydra's own flags (--cfg, --multirun, --info, ...)
"""
