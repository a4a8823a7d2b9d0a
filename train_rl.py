"""Train an agent with PPO: `python train_rl.py [group=option ...] [key=value ...]`.

    python train_rl.py                                   # hqlt on passive T-Maze (minutes on a CPU)
    python train_rl.py memory=lstm env=repeat_previous_easy total_steps=1_000_000
    python train_rl.py -m memory=lstm,gru,transformer,deltanet,hqlt seed=0,1,2
    python train_rl.py resume=runs/<env>/<core>/<run>/checkpoints/<step>.pt
    python -m hqlt.compare runs/<env>                    # learning curves and a final-score table

Groups and keys: hqlt/configs/config.yaml; `python train_rl.py --cfg job` prints the composed config.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from hqlt.agents import TrainingError, train
from hqlt.configs import ConfigError, check_overrides, register_schemas, resumed_config, to_train_config

register_schemas()


@hydra.main(version_base=None, config_path="pkg://hqlt.configs", config_name="config")
def main(cfg: DictConfig) -> float | None:
    try:
        config = to_train_config(cfg)
        if config.resume:
            config = resumed_config(config.resume, list(HydraConfig.get().overrides.task))
        summary = train(config)
    except ConfigError as error:
        sys.exit(f"config error: {error}")
    except TrainingError as error:
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            sys.exit(f"training error: {error}")
        print(f"training error: {error}", file=sys.stderr)  # the sweep goes on with its next job
        return None
    return summary.get("eval_return")


if __name__ == "__main__":
    try:
        check_overrides([arg for arg in sys.argv[1:] if "=" in arg and not arg.startswith("-")])
    except ConfigError as error:
        sys.exit(f"config error: {error}")
    main()
