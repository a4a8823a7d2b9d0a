"""train_rl.py end to end (a Hydra multirun over every memory preset, --help, an interrupted sweep),
any env from the command line, and config errors."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from hqlt import compare
from hqlt.agents import metrics, train
from hqlt.agents.trainer import resolve_device
from hqlt.configs import ConfigError, check_overrides, compose, group_options
from hqlt.envs import ENV_IDS

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


def session_hparams(run_dir: Path) -> dict[str, object]:
    """The hparams of a run's HParams tab: name -> value."""
    events = EventAccumulator(str(run_dir))
    events.Reload()
    for content in events.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        if data.HasField("session_start_info"):
            values = data.session_start_info.hparams
            return {name: getattr(value, value.WhichOneof("kind")) for name, value in values.items()}
    raise AssertionError(f"no hparams session in {run_dir}")


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
        hparams = session_hparams(run_dir)
        assert hparams["memory.num_layers"] >= 1, core  # the core's options, its defaults included
        if core in ATTENTION_CORES:
            assert {"memory.num_heads", "memory.window", "memory.backend"} <= set(hparams), core
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
    hparams = session_hparams(next((tmp_path / "runs" / "tmaze_passive_2" / "hqlt").iterdir()))
    assert (hparams["memory.window"], hparams["memory.blend"], hparams["memory.backend"]) == (32, "synchronous", "None")


def test_bad_command_lines_fail_at_start_with_the_valid_choices(tmp_path):
    result = train_rl("memory=foo", cwd=tmp_path)
    assert result.returncode == 1
    assert "unknown memory 'foo'; valid choices: deltanet, gru, hqlt" in result.stderr
    result = train_rl("-m", "memory=lstm,nope", "agent.lerning_rate=1", cwd=tmp_path)
    assert result.returncode == 1
    assert "unknown memory 'nope'" in result.stderr
    assert not (tmp_path / "runs").exists()  # not even the first job of the sweep ran
    result = train_rl("agent.learning_rate=-1", cwd=tmp_path)
    assert (result.returncode, result.stderr.strip()) == (1, "config error: agent.learning_rate must be > 0, got -1.0")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["memory=foo"], "unknown memory 'foo'; valid choices: deltanet, gru, hqlt, hqlt_delayed_chunk"),
        (["env=nowhere"], "unknown env 'nowhere'; valid choices: any, cartpole_position_only"),
        (["env=nowhere"], "; any registered env id runs with env=any env.id=<id> (--help lists the ids)"),
        (
            ["env=popgym-CountRecallEasy-v0"],
            "popgym, repeat_previous_easy, tmaze_active, tmaze_passive, visual_match; 'popgym-CountRecallEasy-v0' is an "
            "env id: run it with env=any env.id=popgym-CountRecallEasy-v0",
        ),
        (["agent=a2c"], "unknown agent 'a2c'; valid choices: dqn, impala, ppo, sac"),
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
        (["device=tpu"], "unknown device 'tpu'; valid choices: auto, cpu, cuda, cuda:<index>"),
        (["device=cuda:one"], "unknown device 'cuda:one'; valid choices: auto, cpu, cuda, cuda:<index>"),
        (["env.name=a/b"], "env.name='a/b' names a run directory (<log_dir>/<env.name>/<memory.name>/): no '/' in it"),
        (["agent.rollout_length=0"], "agent.rollout_length must be >= 1, got 0"),
        (["agent.sequence_length=-8"], "agent.sequence_length must be >= 0, got -8"),
        (["agent.learning_rate=-1"], "agent.learning_rate must be > 0, got -1.0"),
        (["agent.gamma=1.5"], "agent.gamma must be in [0, 1], got 1.5"),
        (["agent.gae_lambda=-0.1"], "agent.gae_lambda must be in [0, 1], got -0.1"),
        (["agent.clip_coef=0"], "agent.clip_coef must be > 0, got 0.0"),
        (["agent.final_steps=-1"], "agent.final_steps must be >= 0, got -1"),
        (["agent.epsilon=1.5"], "agent.epsilon must be in [0, 1], got 1.5"),
        (["agent.ent_coef=-0.01"], "agent.ent_coef must be >= 0, got -0.01"),
        (["agent.vf_coef=-1"], "agent.vf_coef must be >= 0, got -1.0"),
        (["agent.max_grad_norm=0"], "agent.max_grad_norm must be > 0, got 0.0"),
        (["agent.recall_pairs=0"], "agent.recall_pairs must be >= 1, got 0"),
        (["agent.target_kl=0"], "agent.target_kl must be > 0, got 0.0"),
        (["agent.lr_target_kl=-0.01"], "agent.lr_target_kl must be > 0, got -0.01"),
        (["agent.learning_rate=nan"], "agent.learning_rate must be > 0, got nan"),
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
        compose([f"env={env}", *(["env.id=CartPole-v1"] if env == "any" else [])])


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


@pytest.mark.parametrize(
    "overrides, name, kwargs",
    [
        (
            ["env=any", "env.id=hqlt/TMazePassive-v0", "+env.kwargs.corridor_length=5"],
            "hqlt_TMazePassive-v0",
            {"corridor_length": 5},
        ),
        (["env=any", "env.id=MiniGrid-MemoryS9-v0"], "MiniGrid-MemoryS9-v0", {}),
        # A preset's name while its id is run; the id's name (the preset's kwargs kept) for another id.
        (["env=tmaze_passive"], "tmaze_passive_20", {"corridor_length": 20}),
        (["env=tmaze_passive", "env.id=hqlt/TMazePassive-v0"], "tmaze_passive_20", {"corridor_length": 20}),
        (["env=tmaze_passive", "env.id=hqlt/TMazeActive-v0"], "hqlt_TMazeActive-v0", {"corridor_length": 20}),
        (["env=tmaze_passive", "~env.kwargs.corridor_length"], "tmaze_passive", {}),
        (["env=visual_match", "env.kwargs.distractor_steps=30"], "visual_match_30", {"distractor_steps": 30}),
        (["env=repeat_previous_easy", "env.id=popgym-RepeatFirstEasy-v0"], "popgym-RepeatFirstEasy-v0", {}),
        (["env=popgym", "env.id=popgym-CountRecallMedium-v0"], "popgym-CountRecallMedium-v0", {}),
        (["experiment=popgym_suite", "env.id=popgym-AutoencodeEasy-v0"], "popgym-AutoencodeEasy-v0", {}),
        (["env=cartpole_position_only", "env.id=hqlt/PendulumPositionOnly-v0", "env.name=pendulum"], "pendulum", {}),
    ],
)
def test_runs_are_named_after_the_env_actually_run(overrides, name, kwargs):
    cfg = compose(overrides)
    assert (cfg.env.name, cfg.env.kwargs) == (name, kwargs)


def test_env_any_trains_any_id_in_a_run_directory_named_after_it(tmp_path):
    overrides = [arg for arg in TINY if not arg.startswith("env.kwargs.")]
    cfg = compose(["env=any", "env.id=hqlt/TMazePassive-v0", "+env.kwargs.corridor_length=2", "memory=lstm",
                   *overrides, f"log_dir={tmp_path}"])
    assert train(cfg)["global_step"] == 32
    (run_dir,) = (tmp_path / "hqlt_TMazePassive-v0" / "lstm").iterdir()
    assert (run_dir / "config.yaml").is_file()


@pytest.mark.parametrize("overrides", [["env=any"], ["env.id=popgym-CountRecal-v0"]])
def test_an_unset_or_unknown_env_id_lists_every_id(overrides):
    with pytest.raises(ConfigError) as error:
        compose(overrides)
    message = str(error.value)
    assert all(env_id in message for env_id in ENV_IDS)
    unset = "env.id is not set (env=any runs any registered id: env=any env.id=<id>)"
    assert (unset in message) == (overrides == ["env=any"])


def test_cuda_with_an_index_is_accepted_where_that_device_exists(monkeypatch):
    assert compose(["device=cuda:1"]).device == "cuda:1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    selected = []
    monkeypatch.setattr(torch.cuda, "set_device", selected.append)
    for flags in (torch.backends.cuda.matmul, torch.backends.cudnn):  # resolve_device sets them; put them back
        monkeypatch.setattr(flags, "allow_tf32", flags.allow_tf32)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert selected == [torch.device("cuda", 1)]  # CUDA graphs and streams go to that device
    valid = r"device=cuda:2 but torch sees 2 CUDA device\(s\); valid choices: cuda, cuda:0, cuda:1"
    with pytest.raises(ConfigError, match=valid):
        resolve_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="device=cuda:0 but torch sees no CUDA device"):
        resolve_device("cuda:0")


def test_help_describes_the_groups_keys_cores_and_env_ids(tmp_path):
    result = train_rl("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout
    assert "env: any, cartpole_position_only" in text  # the groups' options
    assert "env=any env.id=<id> +env.kwargs.<k>=<v>" in text
    assert "agent.learning_rate=0.0003" in text and "device=auto" in text  # the composed values
    assert "hqlt: num_layers, num_heads, window" in text  # the cores with their options
    normalised = " ".join(text.split())
    assert all(env_id in normalised for env_id in ENV_IDS)
    assert "Powered by Hydra" not in text


@pytest.mark.parametrize("signum, exit_code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_an_interrupted_run_stops_the_sweep_and_exits_with_the_signal_code(tmp_path, signum, exit_code):
    """The first job gets the signal in its first update: it saves, the sweep stops, the exit code says why."""
    patch = (
        "import runpy, signal; import hqlt.agents.trainer as trainer; real = trainer.ppo_update\n"
        "def update(*args, **kwargs):\n"
        f"    signal.raise_signal(signal.{signum}); return real(*args, **kwargs)\n"
        "trainer.ppo_update = update\n"
        f"runpy.run_path({str(REPO / 'train_rl.py')!r}, run_name='__main__')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", patch, "-m", "memory=lstm", "seed=0,1", *TINY, "log_dir=runs"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == exit_code, result.stderr[-3000:]
    assert f"interrupted by {signum} at step 16" in result.stdout + result.stderr
    (run_dir,) = (tmp_path / "runs" / "tmaze_passive_2" / "lstm").iterdir()  # seed 1 never started
    assert run_dir.name.startswith("seed0-")
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step0000000016.pt"]
