"""hqlt.configs: the Hydra config tree of train_rl.py (env/, memory/, agent/, experiment/) and its schemas.

    from hqlt.configs import compose
    cfg = compose(["memory=lstm", "total_steps=10000"])   # a validated TrainConfig
"""

from hqlt.configs.loading import GROUPS, check_overrides, compose, group_options, resumed_config, to_train_config
from hqlt.configs.schema import (
    ConfigError,
    EnvConfig,
    EvalConfig,
    MemoryConfig,
    PPOConfig,
    TrainConfig,
    register_schemas,
    validate,
)

__all__ = [
    "GROUPS",
    "ConfigError",
    "EnvConfig",
    "EvalConfig",
    "MemoryConfig",
    "PPOConfig",
    "TrainConfig",
    "check_overrides",
    "compose",
    "group_options",
    "register_schemas",
    "resumed_config",
    "to_train_config",
    "validate",
]
