"""hqlt.agents: the recurrent actor-critic and Q-network, rollout storage, PPO over whole rollouts, V-trace,
SAC-Discrete and DQN.

    from hqlt.agents import train
    from hqlt.configs import compose
    summary = train(compose(["memory=lstm"]))
"""

from hqlt.agents.dqn import DqnTrainer, dqn_update, lambda_targets, n_step_targets
from hqlt.agents.policy import Policy, QPolicy
from hqlt.agents.ppo import NonFiniteLossError, compute_gae, ppo_update, replay
from hqlt.agents.rollout import Collector, Rollout, SequenceBatch, training_sequences
from hqlt.agents.sac import SacTrainer, sac_update, soft_q_targets
from hqlt.agents.trainer import Trainer, TrainingError, evaluate, train
from hqlt.agents.vtrace import vtrace

__all__ = [
    "Collector",
    "DqnTrainer",
    "NonFiniteLossError",
    "Policy",
    "QPolicy",
    "Rollout",
    "SacTrainer",
    "SequenceBatch",
    "Trainer",
    "TrainingError",
    "compute_gae",
    "dqn_update",
    "evaluate",
    "lambda_targets",
    "n_step_targets",
    "ppo_update",
    "replay",
    "sac_update",
    "soft_q_targets",
    "train",
    "training_sequences",
    "vtrace",
]
