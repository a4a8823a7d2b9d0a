"""Checkpoints: exact resume, Ctrl-C, NaN losses."""

import shutil
import signal

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import hqlt.agents.trainer as trainer_module
from hqlt.agents import Trainer, TrainingError, metrics, train
from hqlt.agents.checkpoint import load_checkpoint
from hqlt.configs import compose

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


def test_checkpoint_contents_load_with_weights_only(tmp_path):
    train(tiny_config(tmp_path))
    (run_dir,) = run_dirs(tmp_path)
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == [f"step{2 * STEPS_PER_UPDATE:010d}.pt", f"step{4 * STEPS_PER_UPDATE:010d}.pt"]
    checkpoint = load_checkpoint(run_dir / "checkpoints" / names[-1])
    assert set(checkpoint) >= {"model", "optimizer", "config", "counters", "rng"}
    assert checkpoint["counters"] == {"update": 4, "global_step": 4 * STEPS_PER_UPDATE}
    assert checkpoint["config"]["memory"]["core"] == "lstm"
    assert not list((run_dir / "checkpoints").glob("*.tmp"))


def test_resume_continues_the_counter_and_matches_an_uninterrupted_run(tmp_path):
    cfg = tiny_config(tmp_path)
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


def test_resume_refuses_a_different_model(tmp_path):
    train(tiny_config(tmp_path))
    (run_dir,) = run_dirs(tmp_path)
    checkpoint = sorted((run_dir / "checkpoints").iterdir())[0]
    cfg = tiny_config(tmp_path, "memory.hidden_dim=32", f"resume={checkpoint}")
    with pytest.raises(ValueError, match="cannot resume .* differs in memory"):
        Trainer(cfg)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_sigint_or_sigterm_saves_a_checkpoint_and_closes_the_writer(tmp_path, monkeypatch, signum):
    real_update, calls = trainer_module.ppo_update, []
    previous_sigterm = signal.getsignal(signal.SIGTERM)

    def update_then_ctrl_c(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            signal.raise_signal(signum)
        return real_update(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "ppo_update", update_then_ctrl_c)
    summary = train(tiny_config(tmp_path, "checkpoint_interval=0"))
    assert summary["interrupted"] == 1.0 and len(calls) == 1
    (run_dir,) = run_dirs(tmp_path)
    checkpoint = load_checkpoint(run_dir / "checkpoints" / f"step{STEPS_PER_UPDATE:010d}.pt")
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
