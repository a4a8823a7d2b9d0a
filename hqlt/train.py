"""Train an agent with PPO: `hqlt-train [group=option ...] [key=value ...]` (or `python train_rl.py ...`).

    hqlt-train                                   # hqlt on passive T-Maze (minutes on a CPU)
    hqlt-train memory=lstm env=repeat_previous_easy total_steps=1_000_000
    hqlt-train -m memory=lstm,gru,transformer,deltanet,hqlt seed=0,1,2
    hqlt-train resume=runs/<env>/<core>/<run>/checkpoints/<step>.pt
    torchrun --standalone --nproc_per_node=4 -m hqlt.train ...   # 4 processes (GPUs), one run
    python -m hqlt.compare runs/<env>            # learning curves and a final-score table
    python -m hqlt.evaluate <checkpoint>         # return, success and length of a trained agent

Groups and keys: hqlt/configs/config.yaml; `hqlt-train --cfg job` prints the composed config.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from hqlt.agents import TrainingError, distributed, train
from hqlt.agents.checkpoint import CheckpointError
from hqlt.agents.trainer import TrainingInterrupted
from hqlt.configs import ConfigError, check_overrides, register_schemas, resumed_config, to_train_config

register_schemas()


@hydra.main(version_base=None, config_path="pkg://hqlt.configs", config_name="config")
def run(cfg: DictConfig) -> float | None:
    """One training job of Hydra's (one per sweep point); returns the final evaluation return."""
    try:
        config = to_train_config(cfg)
        if config.resume:
            config = resumed_config(config.resume, list(HydraConfig.get().overrides.task))
        summary = train(config)
    except CheckpointError as error:  # only resume= is read as a checkpoint
        sys.exit(f"config error: resume: {error}")
    except ConfigError as error:
        sys.exit(f"config error: {error}")
    except TrainingError as error:
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            sys.exit(f"training error: {error}")
        print(f"training error: {error}", file=sys.stderr)  # the sweep goes on with its next job
        return None
    return summary.get("eval_return")


def main() -> None:
    """The command line: key overrides are checked (with the valid choices) before Hydra starts, so
    that a bad sweep fails before its first job. Ctrl-C or SIGTERM stops the whole sweep, after the
    current run saved its checkpoint, with the shell's code for the signal (130, 143)."""
    try:
        check_overrides([arg for arg in sys.argv[1:] if "=" in arg and not arg.startswith("-")])
    except ConfigError as error:
        sys.exit(f"config error: {error}")
    try:
        run()
    except TrainingInterrupted as interrupted:  # the trainer has printed where the checkpoint is
        sys.exit(interrupted.exit_code)
    distributed.shutdown()  # under torchrun: leave the process group before a clean exit


if __name__ == "__main__":
    main()
