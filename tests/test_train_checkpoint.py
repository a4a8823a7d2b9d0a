"""Checkpoints: exact resume, training independent of checkpointing, the learning rate on resume,
Ctrl-C and SIGTERM, NaN losses."""

import dataclasses
import shutil
import signal

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import hqlt.agents.trainer as trainer_module
from hqlt.agents import Trainer, TrainingError, metrics, train
from hqlt.agents.checkpoint import load_checkpoint
from hqlt.agents.policy import EPISODE_TIME
from hqlt.agents.trainer import TrainingInterrupted
from hqlt.configs import ConfigError, compose

STEPS_PER_UPDATE = 2 * 8


def tiny_config(tmp_path, *extra):
    return compose(
        [
            "memory=lstm",
            "env.kwargs.corridor_length=3",
            "memory.hidden_dim=16",
            "agent.encoder_dim=16",
            "agent.head_dim=16",
            "agent.num_envs=2",
            "agent.rollout_length=8",
            "agent.num_minibatches=2",
            "agent.update_epochs=2",
            f"total_steps={4 * STEPS_PER_UPDATE}",
            "eval.episodes=2",
            "eval.num_envs=2",
            "eval.interval=0",
            "checkpoint_interval=2",
            "keep_checkpoints=5",
            "device=cpu",
            "progress=false",
            f"log_dir={tmp_path / 'runs'}",
            *extra,
        ]
    )


def run_dirs(tmp_path):
    return sorted((tmp_path / "runs" / "tmaze_passive_3" / "lstm").iterdir())


def checkpoint_path(run_dir, update):
    return run_dir / "checkpoints" / f"step{update * STEPS_PER_UPDATE:010d}.pt"


def resume_copy(checkpoint, run_dir):
    """`checkpoint` copied into a run directory of its own, so that resuming it writes there."""
    (run_dir / "checkpoints").mkdir(parents=True)
    return shutil.copy(checkpoint, run_dir / "checkpoints" / checkpoint.name)


def assert_same_parameters(model, reference):
    for name, value in reference.items():
        torch.testing.assert_close(model[name], value, rtol=0, atol=0, msg=name)


def learning_rates(run_dir):
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {e.step // STEPS_PER_UPDATE - 1: e.value for e in events.Scalars(metrics.LEARNING_RATE)}  # by update


def test_checkpoint_contents_load_with_weights_only(tmp_path):
    train(tiny_config(tmp_path, "agent.lr_target_kl=null"))  # the schedule alone: its scale stays 1
    (run_dir,) = run_dirs(tmp_path)
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == [f"step{2 * STEPS_PER_UPDATE:010d}.pt", f"step{4 * STEPS_PER_UPDATE:010d}.pt"]
    checkpoint = load_checkpoint(run_dir / "checkpoints" / names[-1])
    assert set(checkpoint) >= {"model", "optimizer", "config", "counters", "rng", "lr_schedule", "collector"}
    assert checkpoint["lr_schedule"] == {"start": 0, "start_lr": 3e-4, "end": 4, "scale": 1.0}
    assert set(checkpoint["collector"]) == {"obs", "resets", "prev_action", "prev_reward", "state", "envs"}
    assert checkpoint["counters"] == {"update": 4, "global_step": 4 * STEPS_PER_UPDATE}
    assert checkpoint["config"]["memory"]["core"] == "lstm"
    assert not list((run_dir / "checkpoints").glob("*.tmp"))


@pytest.mark.parametrize("capture", ["false", "true"])
def test_resume_continues_the_counter_and_matches_an_uninterrupted_run(tmp_path, capture):
    cfg = tiny_config(tmp_path, f"capture={capture}")
    train(cfg)
    (full_run,) = run_dirs(tmp_path)
    halfway = full_run / "checkpoints" / f"step{2 * STEPS_PER_UPDATE:010d}.pt"
    final = load_checkpoint(full_run / "checkpoints" / f"step{4 * STEPS_PER_UPDATE:010d}.pt")

    resumed_dir = tmp_path / "resumed" / "checkpoints"
    resumed_dir.mkdir(parents=True)
    shutil.copy(halfway, resumed_dir / halfway.name)
    cfg.resume = str(resumed_dir / halfway.name)
    trainer = Trainer(cfg)
    assert (trainer.update, trainer.global_step) == (2, 2 * STEPS_PER_UPDATE)
    summary = trainer.run()
    assert summary["global_step"] == 4 * STEPS_PER_UPDATE

    resumed = load_checkpoint(resumed_dir / f"step{4 * STEPS_PER_UPDATE:010d}.pt")
    assert resumed["counters"] == final["counters"]
    for name, value in final["model"].items():
        torch.testing.assert_close(resumed["model"][name], value, rtol=0, atol=0, msg=name)
    events = EventAccumulator(str(tmp_path / "resumed"))
    events.Reload()
    assert [e.step for e in events.Scalars(metrics.SPS)] == [3 * STEPS_PER_UPDATE, 4 * STEPS_PER_UPDATE]


@pytest.mark.parametrize("memory", [["memory=lstm"], ["memory=hqlt", "memory.options.num_heads=2", "memory.options.window=4"]])
def test_aligned_checkpoints_leave_out_the_memory_state_and_resume_exactly(tmp_path, memory):
    """After an aligned rollout every row starts a new episode, so the core's state is not saved; resuming
    from such a checkpoint still matches the uninterrupted run."""
    extra = [*memory, "agent.align_episodes=true"]
    train(tiny_config(tmp_path / "full", *extra))
    (full_run,) = sorted((tmp_path / "full" / "runs" / "tmaze_passive_3").glob("*/*"))
    halfway = load_checkpoint(checkpoint_path(full_run, 2))
    assert set(halfway["collector"]["state"]) == {EPISODE_TIME}
    assert halfway["collector"]["resets"].all()

    resumed_run = tmp_path / "resumed" / "run"
    copy = resume_copy(checkpoint_path(full_run, 2), resumed_run)
    train(tiny_config(tmp_path / "resumed", *extra, f"resume={copy}"))
    final = load_checkpoint(checkpoint_path(full_run, 4))
    assert_same_parameters(load_checkpoint(checkpoint_path(resumed_run, 4))["model"], final["model"])


def test_resume_after_sigterm_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    """The checkpoint of an interrupted run holds the envs' episodes and the carry: resuming it
    continues exactly, wherever the run stopped."""
    train(tiny_config(tmp_path / "full", "checkpoint_interval=0"))
    (full_run,) = run_dirs(tmp_path / "full")
    signal_in_first_update(monkeypatch, signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as interrupted:
        train(tiny_config(tmp_path / "stopped", "checkpoint_interval=0"))
    monkeypatch.undo()
    train(tiny_config(tmp_path / "stopped", "checkpoint_interval=0", f"resume={interrupted.value.checkpoint}"))
    (stopped_run,) = run_dirs(tmp_path / "stopped")
    final = load_checkpoint(checkpoint_path(full_run, 4))
    assert_same_parameters(load_checkpoint(checkpoint_path(stopped_run, 4))["model"], final["model"])


@pytest.mark.parametrize("vectorization", ["batched", "gymnasium"])
def test_checkpoint_interval_does_not_change_training(tmp_path, vectorization):
    models = {}
    for interval in (1, 0):
        overrides = [f"env.vectorization={vectorization}", f"checkpoint_interval={interval}"]
        cfg = tiny_config(tmp_path / str(interval), *overrides)
        trainer = Trainer(cfg)
        trainer.run()
        models[interval] = trainer.policy.state_dict()
    assert len(list((run_dirs(tmp_path / "1")[0] / "checkpoints").iterdir())) == 4
    assert_same_parameters(models[1], models[0])


def test_gymnasium_envs_resume_with_fresh_episodes(tmp_path):
    """Gymnasium vector envs cannot be saved: the checkpoint holds no collector state, and a resumed
    run starts new episodes (seeded from the step counter) and continues the counters."""
    train(tiny_config(tmp_path, "env.vectorization=gymnasium"))
    (run_dir,) = run_dirs(tmp_path)
    halfway = load_checkpoint(checkpoint_path(run_dir, 2))
    assert halfway["collector"] is None
    resumed = resume_copy(checkpoint_path(run_dir, 2), tmp_path / "resumed")
    summary = train(tiny_config(tmp_path, "env.vectorization=gymnasium", f"resume={resumed}"))
    assert summary["global_step"] == 4 * STEPS_PER_UPDATE


def test_raising_total_steps_on_resume_continues_the_learning_rate(tmp_path):
    """The schedule anneals from the rate reached at the checkpoint to 0 at the new end (no jump), and
    a second resume keeps that schedule (the schedule alone: no KL target)."""
    fixed = "agent.lr_target_kl=null"
    train(tiny_config(tmp_path, fixed))
    (run_dir,) = run_dirs(tmp_path)
    rates = learning_rates(run_dir)
    assert rates == pytest.approx({update: 3e-4 * (1 - update / 4) for update in range(4)})

    extended = resume_copy(checkpoint_path(run_dir, 2), tmp_path / "extended")
    train(tiny_config(tmp_path, fixed, f"total_steps={8 * STEPS_PER_UPDATE}", f"resume={extended}"))
    expected = {update: 1.5e-4 * (1 - (update - 2) / 6) for update in range(2, 8)}
    assert learning_rates(tmp_path / "extended") == pytest.approx(expected)

    again = resume_copy(checkpoint_path(tmp_path / "extended", 6), tmp_path / "again")
    train(tiny_config(tmp_path, fixed, f"total_steps={8 * STEPS_PER_UPDATE}", f"resume={again}"))
    assert learning_rates(tmp_path / "again") == pytest.approx({update: expected[update] for update in (6, 7)})


@pytest.mark.parametrize(("target_kl", "factor"), [(1e3, 1.5), (1e-12, 1 / 1.5)])
def test_lr_target_kl_scales_the_rate_after_each_update_and_resume_keeps_the_scale(tmp_path, target_kl, factor):
    """Each update's approximate KL far below the target raises the rate by 1.5, far above lowers it; a
    resumed run goes on from the scale reached."""
    extra = ("agent.anneal_lr=false", f"agent.lr_target_kl={target_kl}")
    train(tiny_config(tmp_path, *extra))
    (run_dir,) = run_dirs(tmp_path)
    expected = {update: 3e-4 * factor**update for update in range(4)}
    assert learning_rates(run_dir) == pytest.approx(expected)
    resumed = resume_copy(checkpoint_path(run_dir, 2), tmp_path / "resumed")
    train(tiny_config(tmp_path, *extra, f"resume={resumed}"))
    assert learning_rates(tmp_path / "resumed") == pytest.approx({update: expected[update] for update in (2, 3)})


def test_the_kl_target_scales_with_the_policys_entropy_share():
    assert trainer_module.entropy_share(0.5, 2.0) == 0.25
    assert trainer_module.entropy_share(3.0, 2.0) == 1.0  # clamped
    assert trainer_module.entropy_share(-1.0, None) == 1.0  # continuous actions: the target as given


def test_adapted_schedule_stays_within_its_scale_bounds():
    schedule = trainer_module.LearningRateSchedule(0, 1.0, 10)
    low, high = trainer_module.LR_SCALE_BOUNDS
    for _ in range(50):
        schedule = schedule.adapted(kl=1.0, target_kl=0.01)
    assert schedule.scale == low
    assert schedule.adapted(kl=0.01, target_kl=0.01) is schedule  # inside [target / 2, 2 x target]: kept
    for _ in range(50):
        schedule = schedule.adapted(kl=0.0, target_kl=0.01)
    assert schedule.scale == high
    assert schedule.adapted(kl=0.01, target_kl=0.01, max_scale=2.0).scale == 2.0  # a lower ceiling clamps at once


@pytest.mark.parametrize(("entropy_share", "scale"), [(1.0, 1.5), (0.5, 1.5), (0.02, 1.0)])
def test_the_rates_ceiling_falls_with_the_policys_entropy_share(tmp_path, entropy_share, scale):
    """Below the target the scale rises, but on a nearly deterministic policy not above the schedule's rate."""
    trainer = Trainer(tiny_config(tmp_path, "agent.lr_target_kl=0.01"))
    entropy = entropy_share * trainer.policy.action_head.max_entropy
    trainer.schedule = dataclasses.replace(trainer.schedule, scale=1.0 if scale > 1.0 else 10.0)
    trainer.adapt_learning_rate({metrics.UPDATE_TAGS["entropy"]: entropy, metrics.APPROX_KL: 0.0})
    assert trainer.schedule.scale == pytest.approx(scale)


def test_raising_total_steps_of_a_finished_annealed_run_is_refused(tmp_path):
    train(tiny_config(tmp_path))
    (run_dir,) = run_dirs(tmp_path)
    cfg = tiny_config(tmp_path, f"total_steps={8 * STEPS_PER_UPDATE}", f"resume={checkpoint_path(run_dir, 4)}")
    with pytest.raises(ConfigError, match="its learning rate has annealed to 0 .* resume from an earlier checkpoint"):
        Trainer(cfg)


def test_resume_refuses_a_different_model(tmp_path):
    train(tiny_config(tmp_path))
    (run_dir,) = run_dirs(tmp_path)
    checkpoint = sorted((run_dir / "checkpoints").iterdir())[0]
    cfg = tiny_config(tmp_path, "memory.hidden_dim=32", f"resume={checkpoint}")
    with pytest.raises(ValueError, match="cannot resume .* differs in memory"):
        Trainer(cfg)


def signal_in_first_update(monkeypatch, signum):
    """Makes the run's first PPO update deliver `signum` to the process; returns the list of updates."""
    real_update, calls = trainer_module.ppo_update, []

    def update_then_signal(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            signal.raise_signal(signum)
        return real_update(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "ppo_update", update_then_signal)
    return calls


@pytest.mark.parametrize("signum, exit_code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_sigint_or_sigterm_saves_a_checkpoint_and_raises_with_the_signal(tmp_path, monkeypatch, signum, exit_code):
    previous_sigterm = signal.getsignal(signal.SIGTERM)
    calls = signal_in_first_update(monkeypatch, signum)
    with pytest.raises(TrainingInterrupted) as interrupted:
        train(tiny_config(tmp_path, "checkpoint_interval=0"))
    assert len(calls) == 1
    (run_dir,) = run_dirs(tmp_path)
    assert (interrupted.value.signum, interrupted.value.exit_code) == (signum, exit_code)
    assert interrupted.value.checkpoint == checkpoint_path(run_dir, 1)
    assert f"interrupted by {signal.Signals(signum).name} at step {STEPS_PER_UPDATE}" in str(interrupted.value)
    # A KeyboardInterrupt, so that Hydra's sweep, which goes on after an Exception, stops.
    assert isinstance(interrupted.value, KeyboardInterrupt) and not isinstance(interrupted.value, Exception)
    checkpoint = load_checkpoint(checkpoint_path(run_dir, 1))
    assert checkpoint["counters"]["update"] == 1
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert metrics.SPS in events.Tags()["scalars"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is previous_sigterm


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real_update, calls = trainer_module.ppo_update, []

    def poisoned_update(policy, optimizer, rollout, cfg, generator):
        calls.append(1)
        if len(calls) == 3:
            rollout.rewards[0, 0] = float("nan")
        return real_update(policy, optimizer, rollout, cfg, generator)

    monkeypatch.setattr(trainer_module, "ppo_update", poisoned_update)
    with pytest.raises(TrainingError, match=r"stopping at update 3 .* PPO loss is nan.* last good checkpoint is .*step0000000032\.pt"):
        train(tiny_config(tmp_path))
    (run_dir,) = run_dirs(tmp_path)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step0000000032.pt"]
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "step0000000032.pt")
    assert all(torch.isfinite(value).all() for value in checkpoint["model"].values())


def test_capture_key_reaches_both_collectors_and_trains_the_same(tmp_path):
    """`capture=true` on the CPU runs the captured-step protocol eagerly: same parameters as without."""
    models = {}
    for capture in (True, False):
        cfg = tiny_config(tmp_path / str(capture), f"capture={str(capture).lower()}", f"total_steps={2 * STEPS_PER_UPDATE}")
        trainer = Trainer(cfg)
        assert (trainer.collector.capture, trainer.eval_collector.capture) == (capture, capture)
        trainer.run()
        models[capture] = {name: value.clone() for name, value in trainer.policy.state_dict().items()}
    for name, value in models[False].items():
        torch.testing.assert_close(models[True][name], value, rtol=0, atol=0, msg=name)
