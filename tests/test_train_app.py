"""train_rl.py end to end (a Hydra multirun over every memory preset), and config errors."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from hqlt import compare
from hqlt.agents import metrics
from hqlt.configs import ConfigError, check_overrides, compose, group_options

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "env.kwargs.corridor_length=2",
    "memory.hidden_dim=16",
    "agent.encoder_dim=16",
    "agent.head_dim=16",
    "agent.num_envs=2",
    "agent.rollout_length=8",
    "agent.num_minibatches=1",
    "agent.update_epochs=1",
    "total_steps=32",
    "eval.interval=16",
    "eval.episodes=2",
    "eval.num_envs=2",
    "checkpoint_interval=1",
    "progress=false",
]
LISTED_TAGS = [
    metrics.EPISODE_RETURN,
    metrics.EPISODE_SUCCESS,
    metrics.EPISODE_LENGTH,
    metrics.EVAL_RETURN,
    metrics.EVAL_SUCCESS,
    metrics.FINAL_RETURN,
    metrics.FINAL_SUCCESS,
    metrics.SPS,
    metrics.LEARNING_RATE,
    *metrics.UPDATE_TAGS.values(),
]
ATTENTION_CORES = ("transformer", "linear_attention", "deltanet", "hqlt", "hqlt_delayed_stream", "hqlt_delayed_chunk")


def train_rl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "train_rl.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_multirun_over_every_core_writes_the_listed_tags(tmp_path, capsys):
    cores = group_options("memory")
    assert len(cores) == 9
    result = train_rl("-m", f"memory={','.join(cores)}", *TINY, "log_dir=runs", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for core in cores:
        (run_dir,) = (tmp_path / "runs" / "tmaze_passive_2" / core).iterdir()
        assert run_dir.name.startswith("seed0-")
        events = EventAccumulator(str(run_dir))
        events.Reload()
        tags = set(events.Tags()["scalars"])
        missing = [tag for tag in LISTED_TAGS if tag not in tags]
        assert not missing, f"{core}: missing {missing}"
        if core in ATTENTION_CORES:
            assert any(tag.startswith(metrics.MEMORY_PREFIX) for tag in tags), f"{core}: no memory diagnostics"
        assert events.PluginTagToContent("hparams"), f"{core}: no hparams"
        assert events.Scalars(metrics.SPS)[-1].step == 32
        assert (run_dir / "config.yaml").is_file()
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir())[-1] == "step0000000032.pt"
    # Hydra writes no output directories of its own next to the user's files.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]

    # python -m hqlt.compare runs/<env>: PNG curves and a final-score table with a row per core.
    assert compare.main([str(tmp_path / "runs" / "tmaze_passive_2"), "--out", str(tmp_path / "plots")]) == 0
    table = capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "tmaze_passive_2_episode_return.png",
        "tmaze_passive_2_episode_success.png",
    ]
    assert "| core | seeds | final return | final success |" in table
    assert all(f"| {core} | 1 |" in table for core in cores)


def test_bad_command_lines_fail_at_start_with_the_valid_choices(tmp_path):
    result = train_rl("memory=foo", cwd=tmp_path)
    assert result.returncode == 1
    assert "unknown memory 'foo'; valid choices: deltanet, gru, hqlt" in result.stderr
    result = train_rl("-m", "memory=lstm,nope", "agent.lerning_rate=1", cwd=tmp_path)
    assert result.returncode == 1
    assert "unknown memory 'nope'" in result.stderr
    assert not (tmp_path / "runs").exists()  # not even the first job of the sweep ran


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["memory=foo"], "unknown memory 'foo'; valid choices: deltanet, gru, hqlt, hqlt_delayed_chunk"),
        (["env=nowhere"], "unknown env 'nowhere'; valid choices: cartpole_position_only"),
        (["agent=sac"], "unknown agent 'sac'; valid choices: ppo"),
        (["agent.lerning_rate=1e-3"], "unknown config key 'agent.lerning_rate'; valid keys at agent: name, num_envs"),
        (["totl_steps=5"], "unknown config key 'totl_steps'; valid keys at the top level: env, memory, agent, eval"),
        (["memory.options.windw=8"], "valid keys at memory.options: num_layers, num_heads, window, blend"),
        (["seed.x=1"], "unknown config key 'seed.x': seed is a value, not a section"),
    ],
)
def test_unknown_options_and_keys_list_the_valid_ones(overrides, message):
    with pytest.raises(ConfigError) as error:
        check_overrides(overrides)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["memory.core=foo"], "unknown memory core 'foo' (memory.core); valid cores: lstm, gru, mlp, transformer"),
        (["env.id=CartPol-v1"], "unknown env id 'CartPol-v1' (env.id); did you mean CartPole-v1"),
        (["+memory.options.bogus=1"], "unknown memory.options ['bogus'] for core 'hqlt'; its options: num_layers"),
        (["device=tpu"], "unknown device 'tpu'; valid choices: auto, cpu, cuda"),
        (["agent.sequence_length=100"], "agent.sequence_length=100 must divide agent.rollout_length=128"),
        (["agent.num_minibatches=3"], "agent.num_minibatches=3 must divide the number of training sequences"),
        (["total_steps=0"], "total_steps must be >= 1"),
    ],
)
def test_invalid_values_fail_validation_with_the_valid_choices(overrides, message):
    with pytest.raises(ConfigError) as error:
        compose(overrides)
    assert message in str(error.value)


def test_default_config_and_presets_compose():
    cfg = compose()
    assert (cfg.env.name, cfg.memory.name, cfg.memory.core, cfg.device) == ("tmaze_passive_20", "hqlt", "hqlt", "auto")
    for experiment in group_options("experiment"):
        compose([f"experiment={experiment}"])
    for env in group_options("env"):
        compose([f"env={env}"])


@pytest.mark.parametrize("tf32", [True, False])
def test_tf32_key_sets_the_matmul_precision(tf32):
    from hqlt.agents.trainer import resolve_device

    cfg = compose([f"tf32={str(tf32).lower()}"])
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        resolve_device(cfg.device, 0, cfg.tf32)
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (tf32, tf32)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
