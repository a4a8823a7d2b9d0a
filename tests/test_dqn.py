"""agent=dqn: n-step targets against a per-step loop, the dueling QPolicy (Boltzmann exploration with
per-env temperatures, its value statistics), the replay of a fresh rollout against the collector, the target
network's stored start states, truncated windows, config errors, exact resume, and learning a short
passive T-Maze on the CPU."""

import math
import shutil

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from hqlt.agents import DqnTrainer, Policy, QPolicy, dqn_update, lambda_targets, metrics, n_step_targets, train
from hqlt.agents.checkpoint import load_checkpoint
from hqlt.configs import ConfigError, compose

NUM_ENVS, ROLLOUT_LENGTH, SEQUENCE_LENGTH = 2, 8, 4
STEPS_PER_UPDATE = NUM_ENVS * ROLLOUT_LENGTH


def tiny_config(tmp_path, *extra, env=("env.kwargs.corridor_length=3",)):
    return compose([*env,
        "agent=dqn", "memory=lstm", "memory.hidden_dim=16", "agent.encoder_dim=16", "agent.head_dim=16",
        f"agent.num_envs={NUM_ENVS}", f"agent.rollout_length={ROLLOUT_LENGTH}",
        f"agent.sequence_length={SEQUENCE_LENGTH}", "agent.n_step=3",
        "agent.replay_size=16", "agent.batch_size=3", "agent.updates_per_collect=2", "agent.learning_starts=0",
        f"total_steps={4 * STEPS_PER_UPDATE}", "eval.episodes=2", "eval.num_envs=2",
        "eval.interval=0", "checkpoint_interval=2", "keep_checkpoints=5", "device=cpu", "progress=false",
        f"log_dir={tmp_path / 'runs'}", *extra,
    ])


def n_step_loop(rewards, terminated, truncated, next_values, gamma, n):
    """y_t and kept_t written step by step from the definition (hqlt.agents.dqn's docstring)."""
    batch, length = rewards.shape
    targets, kept = torch.zeros(batch, length), torch.ones(batch, length, dtype=torch.bool)
    for b in range(batch):
        for t in range(length):
            total = 0.0
            for k in range(n):
                s = t + k
                total += gamma**k * rewards[b, s]
                if terminated[b, s]:
                    break
                if truncated[b, s]:
                    kept[b, t] = False
                    break
                if k == n - 1 or s == length - 1:
                    total += gamma ** (k + 1) * next_values[b, s]
                    break
            targets[b, t] = total
    return targets, kept


@pytest.mark.parametrize("lam", [0.0, 0.5, 0.9, 1.0])
def test_lambda_targets_are_the_lambda_weighted_n_step_targets(lam):
    """Forward view: G_t = (1 - lam) sum_{n < L} lam^(n-1) y^(n)_t + lam^(L-1) y^(L)_t, the n-step targets
    y^(n) stopping at episode ends; and a truncated step is not kept while the step before it
    bootstraps from the truncated step's own value."""
    torch.manual_seed(0)
    length = 7
    rewards, next_values = torch.randn(3, length), torch.randn(3, length)
    terminated = torch.zeros(3, length, dtype=torch.bool)
    terminated[0, 2] = terminated[1, 6] = True
    no_truncations = torch.zeros_like(terminated)
    targets, kept = lambda_targets(rewards, terminated, no_truncations, next_values, 0.9, lam)
    n_step = [n_step_loop(rewards, terminated, no_truncations, next_values, 0.9, n)[0] for n in range(1, length + 1)]
    expected = sum((1 - lam) * lam ** (n - 1) * n_step[n - 1] for n in range(1, length)) + lam ** (length - 1) * n_step[-1]
    torch.testing.assert_close(targets, expected)
    assert kept.all()

    truncated = torch.zeros_like(terminated)
    truncated[2, 3] = True
    targets, kept = lambda_targets(rewards, terminated, truncated, next_values, 0.9, lam)
    assert kept.sum() == kept.numel() - 1 and not kept[2, 3]
    torch.testing.assert_close(targets[2, 2], rewards[2, 2] + 0.9 * next_values[2, 2])


@pytest.mark.parametrize("n", [1, 3, 8])
def test_n_step_targets_match_a_per_step_loop(n):
    torch.manual_seed(0)
    rewards, next_values = torch.randn(3, 7), torch.randn(3, 7)
    terminated = torch.zeros(3, 7, dtype=torch.bool)
    truncated = torch.zeros(3, 7, dtype=torch.bool)
    terminated[0, 2] = terminated[1, 6] = True  # inside a sequence and at its last step
    truncated[2, 3] = True
    truncated[0, 5] = terminated[0, 5] = True  # a termination on the time limit's step terminates
    targets, kept = n_step_targets(rewards, terminated, truncated, next_values, 0.9, n)
    expected_targets, expected_kept = n_step_loop(rewards, terminated, truncated, next_values, 0.9, n)
    torch.testing.assert_close(kept, expected_kept)
    torch.testing.assert_close(targets[kept], expected_targets[kept])



def test_temperatures_and_epsilons_spread_from_their_value_down_to_its_power():
    policy = QPolicy.__new__(QPolicy)  # only the exploration settings are read
    policy.temperature, policy.temperature_alpha, policy.epsilon = 0.4, 7.0, 0.1
    temperatures, epsilons = policy.exploration(5, torch.device("cpu"))
    torch.testing.assert_close(temperatures, torch.tensor([0.4 ** (1 + 7 * i / 4) for i in range(5)]))
    torch.testing.assert_close(epsilons, torch.tensor([0.1 ** (1 + 7 * i / 4) for i in range(5)]))
    torch.testing.assert_close(policy.exploration(1, torch.device("cpu")), (torch.tensor([0.4]), torch.tensor([0.1])))


@pytest.mark.parametrize("epsilon", [0.0, 0.4])
def test_acting_mixes_boltzmann_in_units_of_the_value_std_with_epsilon_and_greedy_is_argmax(tmp_path, epsilon):
    """Row b samples from (1 - eps_b) softmax(Q / (std * tau_b)) + eps_b / num_actions; the mode is argmax Q."""
    trainer = DqnTrainer(tiny_config(tmp_path, f"agent.epsilon={epsilon}"))
    policy = trainer.policy
    policy.update_value_statistics(torch.tensor([0.0, 6.0]))  # std 3
    inputs = (trainer.collector.obs[:, None], trainer.collector.prev_action[:, None],
              trainer.collector.prev_reward[:, None])
    state, resets = policy.initial_state(NUM_ENVS), torch.ones(NUM_ENVS, 1, dtype=torch.bool)
    with torch.no_grad():
        dist, values, _ = policy(*inputs, state, resets)
        q = policy.q_values(policy.memory(*inputs, state, resets)[0])
    temperatures, epsilons = policy.exploration(NUM_ENVS, torch.device("cpu"))
    boltzmann = (q / (3.0 * temperatures[:, None, None])).softmax(-1)
    expected = (1 - epsilons[:, None, None]) * boltzmann + epsilons[:, None, None] / q.shape[-1]
    torch.testing.assert_close(dist.log_probs[0].exp(), expected, rtol=1e-4, atol=1e-6)
    assert bool((dist.log_probs[0].exp() >= epsilons[:, None, None] / q.shape[-1] * (1 - 1e-5)).all())
    torch.testing.assert_close(dist.mode()[..., 0], q.argmax(-1))
    torch.testing.assert_close(values, q.max(-1).values)


def test_every_row_explores_the_last_steps_of_an_episode_as_long_as_the_longest_with_epsilon(tmp_path):
    """The last final_steps steps of an episode as long as the longest that has ended are explored with
    epsilon by every row; the other steps with eps_b, and all of them before any episode has ended."""
    trainer = DqnTrainer(tiny_config(tmp_path, "agent.final_steps=2", "agent.epsilon=0.3"))
    policy, collector, steps = trainer.policy, trainer.collector, 8
    inputs = (collector.obs[:, None].expand(-1, steps, -1), collector.prev_action[:, None].expand(-1, steps, -1),
              collector.prev_reward[:, None].expand(-1, steps))
    resets = torch.zeros(NUM_ENVS, steps, dtype=torch.bool)
    resets[:, 0] = True
    resets[0, 5] = True  # row 0: an episode of 5 steps ends; its next one starts at step 5
    temperatures, row_epsilons = policy.exploration(NUM_ENVS, torch.device("cpu"))

    def probabilities(epsilons, resets):
        """(1 - eps) softmax(Q / (std tau_b)) + eps / num_actions for eps `[B, T]`."""
        steps = resets.shape[1]
        q = policy.q_values(policy.memory(*(x[:, :steps] for x in inputs), policy.initial_state(NUM_ENVS), resets)[0])
        boltzmann = (q / (policy.value_layer.std * temperatures[:, None, None])).softmax(-1)
        return (1 - epsilons[..., None]) * boltzmann + epsilons[..., None] / q.shape[-1]

    with torch.no_grad():
        one_episode = resets[:, :5].clone()  # no episode ends in it: nothing is measured
        acting = policy(*(x[:, :5] for x in inputs), policy.initial_state(NUM_ENVS), one_episode)[0]
        assert float(policy.longest_episode) == 0
        expected = probabilities(row_epsilons[:, None].expand(-1, 5), one_episode)
        torch.testing.assert_close(acting.log_probs[0].exp(), expected, rtol=1e-4, atol=1e-6)
        acting = policy(*inputs, policy.initial_state(NUM_ENVS), resets)[0]  # ends row 0's episode of 5 steps
        assert float(policy.longest_episode) == 5
        # that call already explores the steps at times >= 5 - 2 as final ones
        final = torch.tensor([[0, 0, 0, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1, 1, 1]], dtype=torch.bool)
        expected = probabilities(torch.where(final, 0.3, row_epsilons[:, None]), resets)
        torch.testing.assert_close(acting.log_probs[0].exp(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_a_fresh_q_network_values_every_state_near_zero(tmp_path, seed):
    """Q starts near 0 (the statistics' mean) whatever the core's output: every Q-value bootstraps from
    the next one, so initial values that differ by state would be copied along an episode. Core outputs
    of unit scale, as hqlt's are: with the critic's unit gain V spreads over about +-1 here."""
    policy = DqnTrainer(tiny_config(tmp_path, f"seed={seed}")).policy  # seeds the generators too
    q = policy.q_values(torch.randn(64, policy.core.hidden_dim) * 3)
    assert q.abs().max() < 0.1


def test_value_statistics_keep_the_q_values(tmp_path):
    """PopArt for the dueling head: after the statistics move (the value layer and the advantages'
    output layer rescaled), every Q-value is what it was."""
    trainer = DqnTrainer(tiny_config(tmp_path))
    policy = trainer.policy
    y = torch.randn(4, 5, policy.core.hidden_dim)
    policy.update_value_statistics(torch.tensor([1.0, 3.0]))  # the first update takes its moments as they are
    before = policy.q_values(y)
    policy.update_value_statistics(torch.tensor([40.0, -20.0, 100.0]))
    assert policy.value_layer.std > 10
    torch.testing.assert_close(policy.q_values(y), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("core", ["lstm", "hqlt"])
def test_replayed_sequences_reproduce_the_collector_and_the_target_runs_over_whole_rows(tmp_path, core):
    """The online network's replay from the stored acting states gives the collector's greedy values; the
    target network's stored start states give the Q-values of one run over the whole rows."""
    options = ["memory.options.num_heads=2", "memory.options.window=4"] if core == "hqlt" else []
    trainer = DqnTrainer(tiny_config(tmp_path, f"memory={core}", *options, "agent.replay_size=32"))
    target = trainer.target
    with torch.no_grad():  # a target unlike the online network, so that a mix-up of their states shows
        for parameter in target.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    first_carry = {name: value.clone() for name, value in trainer.carries["target"].items()}
    rollouts = [trainer._collect()[0] for _ in range(2)]  # the second starts mid-episode
    batch = trainer.replay.storage.rows(torch.arange(trainer.replay.size))
    num_cuts = ROLLOUT_LENGTH // SEQUENCE_LENGTH

    with torch.no_grad():
        obs, prev_actions, prev_rewards, resets = batch.inputs(slice(SEQUENCE_LENGTH))
        y, _, _ = trainer.policy.memory(obs, prev_actions, prev_rewards, batch.states, resets)
        values = trainer.policy.q_values(y).max(-1).values
        acted = torch.cat([rollout.values for rollout in rollouts], dim=1)  # [N, 2T]
    expected = acted.view(NUM_ENVS, 2, num_cuts, SEQUENCE_LENGTH).transpose(0, 1).flatten(0, 2)  # rollout-major
    torch.testing.assert_close(values, expected, atol=1e-5, rtol=1e-5)

    def whole(name):
        return torch.cat([getattr(rollout, name) for rollout in rollouts], dim=1)

    with torch.no_grad():
        y_rows, _, _ = target.memory(whole("obs"), whole("prev_actions"), whole("prev_rewards"), first_carry,
                                     whole("resets"))
        y_sequences, _, _ = target.memory(obs, prev_actions, prev_rewards, batch.replayed_states["target"], resets)
    expected = y_rows.view(NUM_ENVS, 2, num_cuts, SEQUENCE_LENGTH, -1).transpose(0, 1).flatten(0, 2)
    torch.testing.assert_close(y_sequences, expected, atol=1e-5, rtol=1e-5)


def test_truncated_windows_are_left_out_of_the_loss(tmp_path):
    """Their bootstrap (the value of info["final_obs"]) is not kept: a batch of truncated steps leaves
    the network unchanged (the recall objective off)."""
    trainer = DqnTrainer(tiny_config(tmp_path, "agent.recall_coef=0"))
    trainer._collect()
    batch = trainer.replay.sample(3, trainer.generator)
    batch.truncated, batch.terminated = torch.ones_like(batch.truncated), torch.zeros_like(batch.terminated)
    before = [p.clone() for p in trainer.policy.parameters()]
    stats = dqn_update(trainer.policy, trainer.optimizer, trainer.target, batch, trainer.cfg.agent, trainer.generator)
    assert stats["loss"] == 0 and stats["grad_norm"] == 0
    for old, new in zip(before, trainer.policy.parameters()):
        torch.testing.assert_close(new, old, rtol=0, atol=0)


@pytest.mark.parametrize("recall_coef", [0.0, 0.1])
def test_the_recall_objective_trains_the_memory_only_when_weighed(tmp_path, recall_coef):
    """With agent.recall_coef > 0 the step adds the episodic recall objective: its projections move and
    its loss is logged; at 0 they stay as built."""
    trainer = DqnTrainer(tiny_config(tmp_path, f"agent.recall_coef={recall_coef}"))
    trainer._collect()
    batch = trainer.replay.sample(3, trainer.generator)
    before = [p.clone() for p in trainer.policy.recall.parameters()]
    stats = dqn_update(trainer.policy, trainer.optimizer, trainer.target, batch, trainer.cfg.agent, trainer.generator)
    moved = [not torch.equal(old, new) for old, new in zip(before, trainer.policy.recall.parameters())]
    assert all(moved) == bool(recall_coef) and any(moved) == bool(recall_coef)
    assert (stats["recall_loss"] > 0) == bool(recall_coef)


@pytest.mark.parametrize("override, message", [
    ("agent.n_step=0", "agent.n_step must be >= 1, got 0"),
    ("agent.q_lambda=1.5", r"agent.q_lambda must be in \[0, 1\], got 1.5"),
    ("agent.temperature=0", r"agent.temperature must be in \(0, 1\], got 0"),
    ("agent.temperature_alpha=-1", "agent.temperature_alpha must be >= 0, got -1"),
    ("agent.epsilon=1", r"agent.epsilon must be in \[0, 1\), got 1"),
    ("agent.final_steps=-1", "agent.final_steps must be >= 0, got -1"),
    ("agent.tau=0", r"agent.tau must be in \(0, 1\], got 0"),
    ("agent.recall_pairs=0", "agent.recall_pairs must be >= 1, got 0"),
    ("agent.replay_size=3", "agent.replay_size=3 must be >= 4: it must hold one collection's sequences"),
    ("agent.ent_coef=0.1", "unknown config key 'agent.ent_coef'; valid keys at agent: name, num_envs"),
])
def test_bad_values_fail_naming_the_key(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        DqnTrainer(tiny_config(tmp_path, override))


def test_continuous_actions_fail_as_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="agent=dqn takes Discrete action spaces"):
        DqnTrainer(tiny_config(tmp_path, env=("env=any", "env.id=hqlt/PendulumPositionOnly-v0")))


def test_resume_matches_an_uninterrupted_run_and_logs_the_dqn_tags(tmp_path):
    """The checkpoint holds the target network, the replay buffer and its carried state: training resumed
    halfway ends with the same parameters, bit for bit; the checkpoint's policy is a QPolicy."""
    train(tiny_config(tmp_path / "full"))
    (full_run,) = (tmp_path / "full" / "runs" / "tmaze_passive_3" / "lstm").iterdir()
    halfway = full_run / "checkpoints" / f"step{2 * STEPS_PER_UPDATE:010d}.pt"
    final_path = full_run / "checkpoints" / f"step{4 * STEPS_PER_UPDATE:010d}.pt"
    final = load_checkpoint(final_path)
    assert set(final["learner"]) == {"target", "replay"}
    assert set(final["collector"]["carries"]) == {"target"}
    policy, config = Policy.from_checkpoint(final_path)
    assert isinstance(policy, QPolicy) and config.agent.name == "dqn"

    resumed_dir = tmp_path / "resumed" / "checkpoints"
    resumed_dir.mkdir(parents=True)
    shutil.copy(halfway, resumed_dir / halfway.name)
    trainer = DqnTrainer(tiny_config(tmp_path / "resumed", f"resume={resumed_dir / halfway.name}"))
    assert (trainer.update, trainer.replay.size) == (2, 8)
    trainer.run()
    resumed = load_checkpoint(resumed_dir / final_path.name)
    assert resumed["counters"] == final["counters"]
    for part in ("model", "optimizer", "learner"):
        torch.testing.assert_close(resumed[part], final[part], rtol=0, atol=0)

    events = EventAccumulator(str(full_run))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert set(metrics.DQN_UPDATE_TAGS.values()) <= tags
    assert metrics.REPLAY_SEQUENCES in tags and metrics.EPISODE_RETURN in tags


def test_the_reward_input_scale_is_measured_before_learning_starts_then_kept(tmp_path):
    """The policy sees its previous reward over the rewards' rms, measured (for the target network too)
    on the collections before learning starts and then kept, so that replayed inputs stay as collected."""
    train(tiny_config(tmp_path, f"agent.learning_starts={2 * STEPS_PER_UPDATE}", "checkpoint_interval=1"))
    (run,) = (tmp_path / "runs" / "tmaze_passive_3" / "lstm").iterdir()
    scales = []
    for update in range(1, 5):
        checkpoint = load_checkpoint(run / "checkpoints" / f"step{update * STEPS_PER_UPDATE:010d}.pt")
        policy_scale = checkpoint["model"]["reward_scale.mean_square"]
        assert torch.equal(checkpoint["learner"]["target"]["reward_scale.mean_square"], policy_scale)
        scales.append(float(policy_scale))
    assert scales[0] != 1.0 and scales[1] != scales[0]  # the penalties of 1/3 and the rewards of 1 seen
    assert scales[3] == scales[2] == scales[1]


def test_dqn_lstm_learns_passive_tmaze_4(tmp_path):
    """Learning, not just running: a memoryless greedy policy succeeds in half the episodes."""
    summary = train(compose([
        "agent=dqn", "memory=lstm", "memory.hidden_dim=32", "agent.encoder_dim=32", "agent.head_dim=32",
        "agent.num_envs=16", "agent.rollout_length=16", "agent.batch_size=16", "agent.updates_per_collect=8",
        "agent.learning_rate=1e-3", "agent.learning_starts=1000", "env.kwargs.corridor_length=4",
        "total_steps=24000", "eval.interval=0", "eval.episodes=32", "checkpoint_interval=0", "device=cpu",
        "progress=false", f"log_dir={tmp_path}",
    ]))
    assert summary["eval_success"] >= 0.9, summary
    assert not math.isnan(summary["train_success"])
