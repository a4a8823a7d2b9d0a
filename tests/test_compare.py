"""python -m hqlt.compare: one run per (core, seed), complete runs only, one config per core."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter

from hqlt import compare
from hqlt.agents import metrics
from hqlt.configs import compose


def fake_run(env_dir: Path, core: str, name: str, seed: int, steps: int, final: float | None,
             finished_at: float = 1000.0, **overrides: str) -> Path:
    """A run directory as the trainer writes it: config.yaml and events (final evaluation if `final`)."""
    run_dir = env_dir / core / name
    run_dir.mkdir(parents=True)
    extra = [f"{key}={value}" for key, value in overrides.items()]
    cfg = compose([f"memory={core}", f"seed={seed}", f"total_steps={steps}", *extra])
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    writer = SummaryWriter(str(run_dir))
    for step in range(0, steps + 1, steps // 4):
        writer.add_scalar(metrics.EPISODE_RETURN, step / steps, step, walltime=finished_at - 1)
    if final is not None:
        writer.add_scalar(metrics.FINAL_RETURN, final, steps, walltime=finished_at)
        writer.add_scalar(metrics.FINAL_SUCCESS, final, steps, walltime=finished_at)
    writer.close()
    return run_dir


def test_one_run_per_seed_the_newest_complete_one(tmp_path, capsys):
    env_dir = tmp_path / "runs" / "tmaze_passive_20"
    fake_run(env_dir, "lstm", "seed0-a", 0, 400, final=0.2, finished_at=1000.0)
    fake_run(env_dir, "lstm", "seed0-b", 0, 400, final=0.6, finished_at=2000.0)
    fake_run(env_dir, "lstm", "seed1-a", 1, 400, final=0.8)
    interrupted = fake_run(env_dir, "lstm", "seed2-a", 2, 400, final=None)
    runs, notes = compare.load_runs(env_dir)
    chosen, selection_notes = compare.select_runs(runs)
    assert sorted(run.path.name for run in chosen) == ["seed0-b", "seed1-a"]
    assert f"skipped {interrupted}: incomplete" in selection_notes[0]
    assert any("seed0-a: an older run of lstm seed 0 (using seed0-b)" in note for note in selection_notes)

    assert compare.main([str(env_dir), "--out", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    assert "| lstm | 2 | 0.700 ± 0.100 | 0.700 ± 0.100 |" in out  # seeds 0 (newest: 0.6) and 1 (0.8)
    assert "skipped" in out and "incomplete" in out


def test_incomplete_runs_do_not_cut_the_curves(tmp_path):
    env_dir = tmp_path / "runs" / "env"
    fake_run(env_dir, "lstm", "seed0-a", 0, 400, final=0.5)
    fake_run(env_dir, "lstm", "seed1-a", 1, 400, final=0.5)
    fake_run(env_dir, "lstm", "seed2-a", 2, 100, final=None)  # interrupted early
    runs, _ = compare.load_runs(env_dir)
    chosen, _ = compare.select_runs(runs)
    steps, *_ = compare.curve_band(chosen, metrics.EPISODE_RETURN)
    assert steps[-1] == 400


def test_a_core_with_runs_of_different_configs_is_refused_unless_mixed(tmp_path, capsys):
    env_dir = tmp_path / "runs" / "tmaze_passive_20"
    fake_run(env_dir, "hqlt", "seed0-a", 0, 400, final=0.5)
    fake_run(env_dir, "hqlt", "seed1-a", 1, 800, final=0.5, **{"agent.learning_rate": "1e-3"})
    # Where and how a run executed is not its config.
    fake_run(env_dir, "lstm", "seed0-a", 0, 400, final=0.5, device="cpu", checkpoint_interval="7")
    fake_run(env_dir, "lstm", "seed1-a", 1, 400, final=0.5, progress="false")
    assert compare.main([str(env_dir), "--out", str(tmp_path / "plots")]) == 2
    error = capsys.readouterr().err
    assert "the runs of hqlt differ in config" in error
    assert "total_steps: 400 (seeds 0) vs 800 (seeds 1)" in error
    assert "agent.learning_rate: 0.0003 (seeds 0) vs 0.001 (seeds 1)" in error
    assert "--mix-configs" in error and "lstm" not in error

    assert compare.main([str(env_dir), "--out", str(tmp_path / "plots"), "--mix-configs"]) == 0
    out = capsys.readouterr().out
    assert "averaging runs of hqlt that differ in config" in out
    assert "| hqlt | 2 |" in out and "| lstm | 2 |" in out


def test_no_complete_run_is_an_error(tmp_path, capsys):
    env_dir = tmp_path / "runs" / "env"
    fake_run(env_dir, "gru", "seed0-a", 0, 400, final=None)
    assert compare.main([str(env_dir)]) == 2
    assert "no complete runs" in capsys.readouterr().err


def test_help_names_the_real_options(capsys):
    with pytest.raises(SystemExit):
        compare.main(["--help"])
    text = capsys.readouterr().out
    assert "--tag" not in text and "--curves {episode,eval}" in text and "--mix-configs" in text
    assert "--tag" not in compare.__doc__


def test_a_run_stopped_early_reports_its_last_evaluation(tmp_path):
    # benchmarks/memory_suite.py stops runs at a time limit, before their final evaluation.
    run_dir = fake_run(tmp_path / "runs" / "env", "lstm", "seed0-a", 0, 400, final=None)
    writer = SummaryWriter(str(run_dir))
    for step, success in ((100, 0.25), (200, 0.75)):
        writer.add_scalar(metrics.EVAL_SUCCESS, success, step)
    writer.close()
    run = compare.load_run(run_dir)
    assert run.final("success") == 0.75
    assert run.final("return") != run.final("return")  # nan: no evaluation of the return was written
