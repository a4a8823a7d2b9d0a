"""hqlt.agents: the recurrent actor-critic, rollout storage, PPO over whole rollouts, V-trace and SAC-Discrete.

    from hqlt.agents import train
    from hqlt.configs import compose
    summary = train(compose(["memory=lstm"]))
"""

from hqlt.agents.policy import Policy
from hqlt.agents.ppo import NonFiniteLossError, compute_gae, ppo_update, replay
from hqlt.agents.rollout import Collector, Rollout, SequenceBatch, training_sequences
from hqlt.agents.sac import SacTrainer, sac_update, soft_q_targets
from hqlt.agents.trainer import Trainer, TrainingError, evaluate, train
from hqlt.agents.vtrace import vtrace

__all__ = [
    "Collector",
    "NonFiniteLossError",
    "Policy",
    "Rollout",
    "SacTrainer",
    "SequenceBatch",
    "Trainer",
    "TrainingError",
    "compute_gae",
    "evaluate",
    "ppo_update",
    "replay",
    "sac_update",
    "soft_q_targets",
    "train",
    "training_sequences",
    "vtrace",
]
