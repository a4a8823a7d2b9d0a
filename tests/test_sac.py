"""agent=sac: the soft targets against a per-step loop, the replay sequences and the critics' stored
start states, the actor's replay of a fresh rollout reproduces the collector, config errors, the
trainer's tags, and exact resume (learning: tests/test_sac_learning.py)."""

import shutil

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from hqlt.agents import Policy, metrics, train
from hqlt.agents.checkpoint import load_checkpoint
from hqlt.agents.sac import SacTrainer, replay_actor, sac_update, soft_q_targets, soft_values
from hqlt.configs import ConfigError, compose

NUM_ENVS, ROLLOUT_LENGTH, SEQUENCE_LENGTH = 2, 8, 4
STEPS_PER_UPDATE = NUM_ENVS * ROLLOUT_LENGTH


def tiny_config(tmp_path, *extra, env=("env.kwargs.corridor_length=3",)):
    return compose([*env,
        "agent=sac", "memory=lstm", "memory.hidden_dim=16", "agent.encoder_dim=16", "agent.head_dim=16",
        f"agent.num_envs={NUM_ENVS}", f"agent.rollout_length={ROLLOUT_LENGTH}",
        f"agent.sequence_length={SEQUENCE_LENGTH}",
        "agent.replay_size=16", "agent.batch_size=3", "agent.updates_per_collect=2", "agent.learning_starts=0",
        f"total_steps={4 * STEPS_PER_UPDATE}", "eval.episodes=2", "eval.num_envs=2",
        "eval.interval=0", "checkpoint_interval=2", "keep_checkpoints=5", "device=cpu", "progress=false",
        f"log_dir={tmp_path / 'runs'}", *extra,
    ])


def test_soft_q_targets_match_a_per_step_loop():
    torch.manual_seed(0)
    rewards, next_values = torch.randn(3, 6), torch.randn(3, 6)
    terminated = torch.zeros(3, 6, dtype=torch.bool)
    terminated[0, 2] = terminated[1, 5] = True  # inside a sequence and at its last step
    expected = torch.empty(3, 6)
    for b in range(3):
        for t in range(6):
            expected[b, t] = rewards[b, t] + (0.0 if terminated[b, t] else 0.9 * next_values[b, t])
    torch.testing.assert_close(soft_q_targets(rewards, terminated, next_values, 0.9), expected)


def test_soft_values_are_the_expectation_of_q_minus_alpha_log_pi():
    log_pi = torch.tensor([[0.5, 0.25, 0.25]]).log()
    q = torch.tensor([[1.0, 2.0, 4.0]])
    expected = sum(p * (v - 0.1 * torch.tensor(p).log()) for p, v in zip([0.5, 0.25, 0.25], [1.0, 2.0, 4.0]))
    torch.testing.assert_close(soft_values(log_pi, q, torch.tensor(0.1)), expected.reshape(1))


@pytest.mark.parametrize("core", ["lstm", "hqlt"])
def test_replayed_sequences_reproduce_the_collector_and_the_critics_run_over_whole_rows(tmp_path, core):
    """The actor's replay from the stored acting states gives the collector's log-probs; each sequence's
    extra step is the next one's first (the collector's carry after the last); the critic's stored start
    states give the Q-values of one run over the whole rows from the first carry."""
    options = ["memory.options.num_heads=2", "memory.options.window=4"] if core == "hqlt" else []
    trainer = SacTrainer(tiny_config(tmp_path, f"memory={core}", *options, "agent.replay_size=32"))
    critic = trainer.learner.critic
    first_carry = {name: value.clone() for name, value in trainer.carries["critic"].items()}
    rollouts = [trainer._collect()[0] for _ in range(2)]  # the second starts mid-episode
    batch = trainer.replay.storage.rows(torch.arange(trainer.replay.size))
    num_cuts = ROLLOUT_LENGTH // SEQUENCE_LENGTH

    with torch.no_grad():
        log_pi = replay_actor(trainer.policy, batch)
    replayed = log_pi[:, :SEQUENCE_LENGTH].gather(-1, batch.actions)[..., 0]
    torch.testing.assert_close(replayed, batch.log_probs, atol=1e-5, rtol=1e-5)

    per_rollout = batch.obs.view(2, NUM_ENVS, num_cuts, SEQUENCE_LENGTH + 1, -1)
    torch.testing.assert_close(per_rollout[:, :, :-1, -1], per_rollout[:, :, 1:, 0])
    torch.testing.assert_close(per_rollout[0, :, -1, -1], rollouts[1].obs[:, 0])
    torch.testing.assert_close(per_rollout[1, :, -1, -1], trainer.collector.obs)

    def whole(name):
        return torch.cat([getattr(rollout, name) for rollout in rollouts], dim=1)

    with torch.no_grad():
        q_rows, _ = critic(whole("obs"), whole("prev_actions"), whole("prev_rewards"), first_carry, whole("resets"))
        q_sequences, _ = critic(batch.obs[:, :SEQUENCE_LENGTH], batch.prev_actions[:, :SEQUENCE_LENGTH],
                                batch.prev_rewards[:, :SEQUENCE_LENGTH], batch.replayed_states["critic"],
                                batch.resets[:, :SEQUENCE_LENGTH])
    expected = q_rows.view(2, NUM_ENVS, 2, num_cuts, SEQUENCE_LENGTH, -1).transpose(1, 2).flatten(1, 3)  # rollout-major
    torch.testing.assert_close(q_sequences, expected, atol=1e-5, rtol=1e-5)


def test_truncated_steps_are_left_out_of_the_critic_loss(tmp_path):
    """Their bootstrap (the value of info["final_obs"]) is not kept: a batch of truncated steps only
    trains the actor and the temperature."""
    trainer = SacTrainer(tiny_config(tmp_path))
    trainer._collect()
    batch = trainer.replay.sample(3, trainer.generator)
    batch.truncated, batch.terminated = torch.ones_like(batch.truncated), torch.zeros_like(batch.terminated)
    critic_before = [p.clone() for p in trainer.learner.critic.parameters()]
    stats = sac_update(trainer.policy, trainer.optimizer, trainer.learner, batch, trainer.cfg.agent)
    assert stats["critic_loss"] == 0 and stats["critic_grad_norm"] == 0
    for before, after in zip(critic_before, trainer.learner.critic.parameters()):
        torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert stats["actor_grad_norm"] > 0


@pytest.mark.parametrize("override, message", [
    ("agent.tau=0", r"agent.tau must be in \(0, 1\], got 0"),
    ("agent.target_entropy_ratio=1.5", r"agent.target_entropy_ratio must be in \[0, 1\], got 1.5"),
    ("agent.updates_per_collect=0", "agent.updates_per_collect must be >= 1"),
    ("agent.reward_scale=0", "agent.reward_scale must be > 0, got 0"),
    ("agent.replay_size=3", "agent.replay_size=3 must be >= 4: it must hold one collection's sequences"),
    ("agent.sequence_length=3", "agent.sequence_length=3 must divide agent.rollout_length=8"),
    ("agent.ent_coef=0.1", "unknown config key 'agent.ent_coef'; valid keys at agent: name, num_envs"),
])
def test_bad_values_fail_naming_the_key(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        SacTrainer(tiny_config(tmp_path, override))


def test_continuous_actions_fail_as_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="SAC-Discrete.* takes Discrete action spaces"):
        SacTrainer(tiny_config(tmp_path, env=("env=any", "env.id=hqlt/PendulumPositionOnly-v0")))


def test_resume_matches_an_uninterrupted_run_and_logs_the_sac_tags(tmp_path):
    """The checkpoint holds the critics, the temperature, every optimiser, the replay buffer and the
    critics' carried states: training resumed halfway ends with the same parameters, bit for bit."""
    train(tiny_config(tmp_path / "full"))
    (full_run,) = (tmp_path / "full" / "runs" / "tmaze_passive_3" / "lstm").iterdir()
    halfway = full_run / "checkpoints" / f"step{2 * STEPS_PER_UPDATE:010d}.pt"
    final = load_checkpoint(full_run / "checkpoints" / f"step{4 * STEPS_PER_UPDATE:010d}.pt")
    learner_parts = {"critic", "target_critic", "temperature", "critic_optimizer", "alpha_optimizer", "replay"}
    assert set(final["learner"]) == learner_parts
    assert set(final["collector"]) == {"collector", "carries"}
    assert set(final["collector"]["carries"]) == {"critic", "target_critic"}
    assert final["learner"]["replay"]["size"] == 16  # 4 collections of 4 sequences
    policy, config = Policy.from_checkpoint(full_run / "checkpoints" / f"step{4 * STEPS_PER_UPDATE:010d}.pt")
    assert config.agent.name == "sac" and policy.core.hidden_dim == 16  # the actor, for hqlt.evaluate

    resumed_dir = tmp_path / "resumed" / "checkpoints"
    resumed_dir.mkdir(parents=True)
    shutil.copy(halfway, resumed_dir / halfway.name)
    trainer = SacTrainer(tiny_config(tmp_path / "resumed", f"resume={resumed_dir / halfway.name}"))
    assert (trainer.update, trainer.replay.size) == (2, 8)
    trainer.run()
    resumed = load_checkpoint(resumed_dir / f"step{4 * STEPS_PER_UPDATE:010d}.pt")
    assert resumed["counters"] == final["counters"]
    for part in ("model", "optimizer"):
        torch.testing.assert_close(resumed[part], final[part], rtol=0, atol=0)
    torch.testing.assert_close(resumed["learner"], final["learner"], rtol=0, atol=0)

    events = EventAccumulator(str(full_run))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    names = ("critic_loss", "actor_loss", "alpha", "q_mean", "entropy", "log_ratio")
    assert {metrics.SAC_UPDATE_TAGS[name] for name in names} <= tags
    assert metrics.REPLAY_SEQUENCES in tags and metrics.EPISODE_RETURN in tags
