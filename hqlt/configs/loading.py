"""From command-line overrides to a validated TrainConfig.

Hydra reports an unknown key or group option with its own message, which does not list the valid
choices; `check_overrides` runs first and does (train_rl.py calls it before Hydra starts, so a bad
sweep fails before its first job). `compose` is the same path for code and tests.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, Override
from omegaconf import DictConfig, OmegaConf

from hqlt.configs.schema import ConfigError, TrainConfig, env_id_error, register_schemas, validate

CONFIG_MODULE = "hqlt.configs"
CONFIG_NAME = "config"
GROUPS = ("env", "memory", "agent", "experiment")


def group_options(group: str) -> list[str]:
    """The option names of a config group: its yaml files."""
    folder = resources.files(CONFIG_MODULE) / group
    return sorted(entry.name[: -len(".yaml")] for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def _values(override: Override) -> list[str]:
    """The values an override sets: one, or each of a choice sweep (a,b,c)."""
    if isinstance(override.value(), ChoiceSweep):
        return [str(value) for value in override.sweep_string_iterator()]
    return [override.get_value_element_as_str()]


def check_overrides(overrides: list[str]) -> None:
    """Raises ConfigError for an unknown group option or key among `overrides` (Hydra syntax)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = []
    for override in parsed:
        group = override.key_or_group
        if group not in GROUPS or override.is_delete():
            continue
        valid = group_options(group)
        for value in _values(override):
            if value not in valid and not (group == "experiment" and value == "null"):
                hint = _any_env_hint(group, value)
                raise ConfigError(f"unknown {group} {value!r}; valid choices: {', '.join(valid)}{hint}")
        choices.append(f"{group}={_values(override)[0]}")
    reference = _compose(choices)
    for override in parsed:
        key = override.key_or_group
        if key in GROUPS or key.split(".")[0] == "hydra" or override.is_add() or override.is_force_add():
            continue
        _check_key(reference, key)


def _any_env_hint(group: str, value: str) -> str:
    """For an unknown env option: how to run an env id that has no preset."""
    if group != "env":
        return ""
    from hqlt.envs import ENV_IDS

    if value in ENV_IDS:
        return f"; {value!r} is an env id: run it with env=any env.id={value}"
    return "; any registered env id runs with env=any env.id=<id> (--help lists the ids)"


def _check_key(cfg: DictConfig, key: str) -> None:
    node: Any = cfg
    parts = key.split(".")
    for depth, part in enumerate(parts):
        where = ".".join(parts[:depth]) or "the top level"
        if not isinstance(node, DictConfig):
            raise ConfigError(f"unknown config key {key!r}: {where} is a value, not a section")
        if part not in node.keys():  # `in node` is false for a key whose value is missing (???)
            valid = ", ".join(str(name) for name in node.keys()) or "none"
            raise ConfigError(
                f"unknown config key {key!r}; valid keys at {where}: {valid} (prefix with + to add a new "
                "dict entry such as an env kwarg or a memory option)"
            )
        node = node._get_node(part)


def _compose(overrides: list[str]) -> DictConfig:
    register_schemas()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
        return hydra_compose(config_name=CONFIG_NAME, overrides=overrides)


def to_train_config(cfg: DictConfig) -> TrainConfig:
    """The typed, validated TrainConfig of a config composed from this tree."""
    if OmegaConf.is_missing(cfg.env, "id"):
        raise env_id_error(None)
    config = OmegaConf.to_object(cfg)
    validate(config)
    return config


def compose(overrides: list[str] | None = None) -> TrainConfig:
    """The TrainConfig that `python train_rl.py <overrides>` would run."""
    overrides = overrides or []
    check_overrides(overrides)
    return to_train_config(_compose(overrides))


def resumed_config(checkpoint_path: str, overrides: list[str]) -> TrainConfig:
    """The config stored in a checkpoint, with the command line's key overrides applied on top.

    Config groups (env=..., memory=...) cannot change on resume; the trainer also refuses changes to
    the env, memory, agent and seed keys.
    """
    from hqlt.agents.checkpoint import load_checkpoint

    stored = OmegaConf.merge(OmegaConf.structured(TrainConfig), load_checkpoint(checkpoint_path)["config"])
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.key_or_group in GROUPS:
            raise ConfigError(
                f"cannot change config group {override.key_or_group!r} on resume; the checkpoint keeps its config"
            )
        OmegaConf.update(stored, override.key_or_group, override.value(), merge=True)
    stored.resume = checkpoint_path
    config = OmegaConf.to_object(stored)
    validate(config)
    return config
