"""TensorBoard tag names: the one place that defines them (the trainer writes, hqlt.compare reads)."""

from __future__ import annotations

# Training episodes (from the rollouts), at the env step they ended.
EPISODE_RETURN = "episode/return"
EPISODE_SUCCESS = "episode/success"
EPISODE_LENGTH = "episode/length"

# Evaluation episodes on separate envs.
EVAL_RETURN = "eval/return"
EVAL_SUCCESS = "eval/success"
EVAL_LENGTH = "eval/length"

# Final evaluation, also the HParams tab's metrics.
FINAL_RETURN = "final/return"
FINAL_SUCCESS = "final/success"

SPS = "perf/sps"
LEARNING_RATE = "train/learning_rate"
# The approximate KL of an update (PPO: of the acting policy to the learner's over the update's minibatches;
# IMPALA: of the policy at the update's start to the learner's over its passes): what agent.lr_target_kl
# holds the learning rate to.
APPROX_KL = "train/approx_kl"

# ppo_update's summary keys -> tags.
UPDATE_TAGS = {
    "loss": "loss/total",
    "policy_loss": "loss/policy",
    "value_loss": "loss/value",  # in units of the value statistics' std (PopArt)
    "entropy": "loss/entropy",
    "recall_loss": "loss/recall",  # the episodic recall objective's InfoNCE (ln of the minibatch's rows at chance)
    "approx_kl": APPROX_KL,
    "clip_fraction": "train/clip_fraction",
    "explained_variance": "train/explained_variance",
    "grad_norm": "train/grad_norm",
    # gradient norms of the actor's loss (with the entropy bonus) and the critic's (with vf_coef) on the
    # shared encoder, mix and core, before clipping: which of the two trains the memory
    "policy_grad_norm": "train/policy_grad_norm",
    "value_grad_norm": "train/value_grad_norm",
    # max |log-prob of the learner's replay - the actor's| before the first gradient step: should be ~0
    "replay_error": "train/replay_error",
}

# impala_update's summary keys -> tags: what PPO has too keeps PPO's tag.
IMPALA_UPDATE_TAGS = {
    **{name: UPDATE_TAGS[name] for name in ("loss", "policy_loss", "value_loss", "entropy", "recall_loss",
                                            "explained_variance", "grad_norm")},
    # fraction of the steps whose importance ratio pi/mu was clipped at rho_bar (at rho_bar = 1, about half
    # of them as soon as the policy moved at all)
    "rho_clip_fraction": "train/rho_clip_fraction",
    "approx_kl": UPDATE_TAGS["approx_kl"],
    # KL(mu || pi) of the behaviour policy mu to the learner's pi on the batch (PPO's estimator): how far
    # off-policy the batch was
    "behaviour_kl": "impala/behaviour_kl",
}
# IMPALA's collection, once per update: the mean policy lag (in updates) of the segments trained on,
# the segments dropped so far for a lag above agent.max_policy_lag, the env steps per second that the
# actors delivered (dropped segments included) and the fraction of the learner's time spent waiting.
POLICY_LAG = "impala/policy_lag"
DROPPED_SEGMENTS = "impala/dropped_segments"
ACTOR_SPS = "perf/actor_sps"
LEARNER_IDLE = "perf/learner_idle"

# sac_update's summary keys -> tags (means over the updates after a collection).
SAC_UPDATE_TAGS = {
    "critic_loss": "loss/critic",  # 1/2 the squared soft TD error of each Q head, summed over the two
    "actor_loss": "loss/actor",
    "alpha_loss": "loss/temperature",
    "entropy": UPDATE_TAGS["entropy"],  # of the actor on the replayed steps
    "alpha": "sac/alpha",
    "q_mean": "sac/q_mean",  # min of the two Q heads at the replayed actions
    "target_mean": "sac/target_mean",  # the soft TD targets
    # mean |log pi(a_t) - log mu(a_t)| of the replayed actions, mu the policy that acted: how off-policy the
    # replayed sequences are (0 for a fresh rollout)
    "log_ratio": "sac/log_ratio",
    "critic_grad_norm": "train/critic_grad_norm",
    "actor_grad_norm": "train/actor_grad_norm",
}
# dqn_update's summary keys -> tags (means over the updates after a collection).
DQN_UPDATE_TAGS = {
    "loss": "loss/total",  # 1/2 the squared n-step TD error in units of the value statistics' std, plus the recall term
    "q_mean": "dqn/q_mean",  # Q at the replayed actions
    "target_mean": "dqn/target_mean",  # the n-step targets
    "td_error": "dqn/td_error",  # mean |TD error| in units of the value statistics' std
    # fraction of the replayed actions that are greedy for the network now: how far the exploring policy
    # that acted is from the greedy one
    "greedy_fraction": "dqn/greedy_fraction",
    "recall_loss": UPDATE_TAGS["recall_loss"],
    "grad_norm": UPDATE_TAGS["grad_norm"],
}
# The sequences the replay buffer holds (SAC, DQN), once per collection.
REPLAY_SEQUENCES = "replay/sequences"

# Memory diagnostics of the core (core.last_diagnostics) are logged as memory/<name>.
MEMORY_PREFIX = "memory/"
