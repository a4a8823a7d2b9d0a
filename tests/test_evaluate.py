"""Reusing a trained agent: Policy.from_checkpoint, `python -m hqlt.evaluate`, clear checkpoint errors,
rgb_array rendering of our tasks, the `hqlt-train` console script and installs without triton."""

import dataclasses
import importlib.metadata
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from hqlt import evaluate
from hqlt.agents import Collector, Policy, Trainer
from hqlt.agents.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from hqlt.configs import ConfigError, compose
from hqlt.envs import make, make_vector
from hqlt.envs.tmaze import TMaze
from hqlt.envs.visual_match import PALETTE, PLAYER, RENDER_CELL_PIXELS, PassiveVisualMatch

TINY = [
    "memory=hqlt",
    "memory.hidden_dim=16",
    "memory.options.num_layers=1",
    "memory.options.num_heads=2",
    "memory.options.window=4",
    "env.kwargs.corridor_length=2",
    "agent.encoder_dim=16",
    "agent.head_dim=16",
    "agent.num_envs=2",
    "agent.rollout_length=8",
    "agent.num_minibatches=1",
    "agent.update_epochs=1",
    "total_steps=32",
    "eval.interval=0",
    "eval.episodes=2",
    "eval.num_envs=2",
    "checkpoint_interval=0",
    "device=cpu",
    "progress=false",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny trained run: (the trainer, its run directory, its final checkpoint)."""
    log_dir = tmp_path_factory.mktemp("runs")
    trainer = Trainer(compose([*TINY, f"log_dir={log_dir}"]))
    trainer.run()
    (checkpoint,) = (trainer.run_dir / "checkpoints").glob("step*.pt")
    return trainer, trainer.run_dir, checkpoint


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `directory`: relative path -> (size, mtime in ns)."""
    entries = {}
    for root, folders, files in os.walk(directory):
        for name in folders + files:
            path = Path(root) / name
            stat = path.stat()
            entries[str(path.relative_to(directory))] = (stat.st_size, stat.st_mtime_ns)
    return entries


# ---------------------------------------------------------------------- Policy.from_checkpoint


def test_from_checkpoint_reproduces_the_trained_policy(trained):
    trainer, _, checkpoint = trained
    policy, config = Policy.from_checkpoint(checkpoint)
    assert dataclasses.asdict(config) == dataclasses.asdict(trainer.cfg)

    batch, steps = 3, 5
    generator = torch.Generator().manual_seed(0)
    obs = torch.rand(batch, steps, 3, generator=generator)
    prev_actions = torch.randint(0, 4, (batch, steps, 1), generator=generator)
    prev_rewards = torch.randn(batch, steps, generator=generator)
    resets = torch.zeros(batch, steps, dtype=torch.bool)
    resets[:, 0] = resets[1, 3] = True
    outputs = []
    for model in (trainer.policy, policy):
        with torch.no_grad():
            dist, values, state = model(obs, prev_actions, prev_rewards, model.initial_state(batch), resets)
        outputs.append((dist.log_probs, values, state))
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=0)


# ---------------------------------------------------------------------- python -m hqlt.evaluate


def test_evaluate_prints_the_numbers_and_leaves_the_run_untouched(trained):
    _, run_dir, checkpoint = trained
    before = snapshot(run_dir)
    result = subprocess.run(
        [sys.executable, "-m", "hqlt.evaluate", str(checkpoint.relative_to(run_dir)), "--episodes", "5",
         "--num-envs", "2", "--device", "cpu"],
        cwd=run_dir, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "5 episodes, greedy actions, 2 envs, seed 1000000" in result.stdout
    numbers = {
        name: [float(x) for x in re.search(rf"{name}\s+(\S+) ± (\S+)  \[min (\S+), max (\S+)\]", result.stdout).groups()]
        for name in evaluate.QUANTITIES
    }
    mean, std, low, high = numbers["success"]
    assert 0 <= low <= mean <= high <= 1 and std >= 0
    assert 1 <= numbers["length"][2] <= numbers["length"][3] <= 3  # corridor 2: at most 3 steps
    assert snapshot(run_dir) == before


def test_each_env_contributes_its_first_episodes():
    assert evaluate.episode_quotas(7, 3).tolist() == [3, 2, 2]
    policy, _ = _random_policy()
    collector = Collector(policy, make_vector("hqlt/TMazePassive-v0", 2, 0, corridor_length=2), torch.device("cpu"), 1, 1)
    stats = evaluate.run_episodes(collector, np.array([3, 1]), greedy=False, seed=0)
    assert len(stats.returns) == len(stats.lengths) == len(stats.successes) == 4
    spread = evaluate.spread(stats)
    assert spread["length"]["min"] <= spread["length"]["mean"] <= spread["length"]["max"]


def _random_policy() -> tuple[Policy, None]:
    from hqlt.memory import build_core

    env = make("hqlt/TMazePassive-v0", corridor_length=2)
    return Policy(env.observation_space, env.action_space, build_core("gru", input_dim=8, hidden_dim=8), 8), None


def test_sampled_evaluation_repeats_with_its_seed(trained, capsys):
    _, _, checkpoint = trained
    outputs = []
    for _ in range(2):
        assert evaluate.main([str(checkpoint), "--episodes", "3", "--sample", "--seed", "5", "--device", "cpu"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
    assert "3 episodes, sampled actions, 2 envs, seed 5" in outputs[0]


class FakeClip:
    """moviepy's ImageSequenceClip as RecordVideo calls it; writes the frames as a .npy file instead."""

    def __init__(self, frames: list, fps: int) -> None:
        self.frames = np.stack(frames)

    def write_videofile(self, path: str, logger: object = None) -> None:
        with open(path, "wb") as file:
            np.save(file, self.frames)


def test_video_films_each_counted_episode(trained, tmp_path, monkeypatch):
    for name in ("moviepy", "moviepy.video", "moviepy.video.io"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    clip_module = types.ModuleType("moviepy.video.io.ImageSequenceClip")
    clip_module.ImageSequenceClip = FakeClip
    monkeypatch.setitem(sys.modules, clip_module.__name__, clip_module)
    _, run_dir, checkpoint = trained
    before = snapshot(run_dir)
    video_dir = tmp_path / "videos"
    assert evaluate.main([str(checkpoint), "--episodes", "3", "--num-envs", "2", "--video", str(video_dir)]) == 0
    names = sorted(p.name for p in video_dir.iterdir())
    assert names == ["env0-episode-0.mp4", "env0-episode-1.mp4", "env1-episode-0.mp4"]
    for name in names:
        frames = np.load(video_dir / name)
        assert frames.dtype == np.uint8 and frames.shape[1:] == (48, 48, 3)  # 3 x 3 cells of 16 px
        assert 2 <= len(frames) <= 4  # the first observation, then one frame per step (at most 3)
    assert snapshot(run_dir) == before


def test_video_without_moviepy_names_the_extra(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "moviepy", None)  # `import moviepy` raises ImportError
    _, _, checkpoint = trained
    assert evaluate.main([str(checkpoint), "--episodes", "1", "--video", str(tmp_path / "videos")]) == 2
    assert "--video writes mp4 files through moviepy, which is not installed: pip install 'hqlt[video]'" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "videos").exists()


# ---------------------------------------------------------------------- clear checkpoint errors


def _checkpoint_error(path: Path) -> str:
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    assert isinstance(error.value, ConfigError) and isinstance(error.value, ValueError)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_paths_that_hold_no_checkpoint_fail_in_one_line(trained, tmp_path):
    _, run_dir, checkpoint = trained
    assert _checkpoint_error(tmp_path / "nope.pt").startswith(f"no checkpoint at {tmp_path / 'nope.pt'}: no such file")
    message = _checkpoint_error(run_dir)
    assert f"{run_dir} is a directory, not a checkpoint file" in message
    assert f"{run_dir}/checkpoints/step*.pt" in message and message.endswith(f"the newest is {checkpoint}")
    assert "no checkpoints (step*.pt" in _checkpoint_error(tmp_path)

    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    assert "is not a checkpoint: torch.load cannot read it (UnpicklingError)" in _checkpoint_error(text)
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    assert "is a torch file but not an hqlt checkpoint" in _checkpoint_error(tensor)
    partial = tmp_path / "partial.pt"
    save_checkpoint(partial, {"model": {}})
    assert "it lacks optimizer, config, counters, rng" in _checkpoint_error(partial)

    with pytest.raises(CheckpointError, match="no checkpoint at"):
        Policy.from_checkpoint(tmp_path / "nope.pt")


def test_resume_from_a_run_directory_is_a_config_error(trained, tmp_path, monkeypatch):
    from hqlt import train

    _, run_dir, checkpoint = trained
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train_rl.py", f"resume={run_dir}"])
    with pytest.raises(SystemExit) as exit_:
        train.main()  # what train_rl.py and hqlt-train run
    assert exit_.value.code == (
        f"config error: resume: {run_dir} is a directory, not a checkpoint file; it holds 1 checkpoint(s) as "
        f"{run_dir}/checkpoints/step*.pt; the newest is {checkpoint}"
    )


def test_evaluate_reports_a_bad_checkpoint_path(tmp_path, capsys):
    assert evaluate.main([str(tmp_path / "nope.pt")]) == 2
    assert capsys.readouterr().err.startswith(f"error: no checkpoint at {tmp_path / 'nope.pt'}")


# ---------------------------------------------------------------------- rgb_array rendering

TASKS = [
    ("hqlt/TMazePassive-v0", {"corridor_length": 3}, (48, 64, 3)),
    ("hqlt/TMazeActive-v0", {"corridor_length": 3}, (48, 80, 3)),
    ("hqlt/PassiveVisualMatch-v0", {"distractor_steps": 4}, (112, 176, 3)),
]


@pytest.mark.parametrize("env_id, kwargs, shape", TASKS)
def test_tasks_render_frames_of_one_shape_and_keep_their_behaviour(env_id, kwargs, shape):
    rendering, plain = make(env_id, render_mode="rgb_array", **kwargs), make(env_id, **kwargs)
    observations = [env.reset(seed=3)[0] for env in (rendering, plain)]
    with pytest.warns(UserWarning, match="without a render_mode"):
        assert plain.render() is None
    frames = [rendering.render()]
    actions = np.random.default_rng(0).integers(4, size=40)
    for action in actions:
        steps = [env.step(action) for env in (rendering, plain)]
        frames.append(rendering.render())
        np.testing.assert_array_equal(steps[0][0], steps[1][0])
        assert steps[0][1:4] == steps[1][1:4]
        if steps[0][2]:
            break
    np.testing.assert_array_equal(observations[0], observations[1])
    assert all(frame.dtype == np.uint8 and frame.shape == shape for frame in frames)


def test_tmaze_frame_shows_the_agent_and_the_cue_while_visible():
    env = make("hqlt/TMazePassive-v0", render_mode="rgb_array", corridor_length=3)
    obs, _ = env.reset(seed=0)
    cells = env.render()[::16, ::16]  # one pixel per cell: rows up arm / corridor / down arm
    cue_row = 0 if obs[0] == 1 else 2
    assert (cells[cue_row, 0] == (220, 40, 40)).all() and (cells[2 - cue_row, 0] == (70, 70, 70)).all()
    assert (cells[1, 0] == 0).all()  # the agent on the start (oracle) cell
    env.step(0)  # right: the cue is no longer observed
    cells = env.render()[::16, ::16]
    assert (cells[cue_row, 0] == (70, 70, 70)).all()
    assert (cells[1, 1] == 0).all() and (cells[1, 0] == (205, 205, 205)).all()
    assert (cells[[0, 2], -1] == (205, 205, 205)).all()  # the junction's arms


def test_visual_match_frame_is_the_room_in_its_palette():
    env = make("hqlt/PassiveVisualMatch-v0", render_mode="rgb_array", distractor_steps=4)
    env.reset(seed=0)
    frame = env.render()
    colours = {tuple(colour) for colour in frame.reshape(-1, 3)}
    assert colours <= {tuple(colour) for colour in PALETTE}
    assert len(colours) == 3  # the explore room: wall, the agent, the cue's colour
    agent = (frame == PALETTE[PLAYER]).all(-1)
    assert agent.sum() == RENDER_CELL_PIXELS**2


@pytest.mark.parametrize("task", [TMaze, PassiveVisualMatch])
def test_unknown_render_mode_names_the_valid_ones(task):
    with pytest.raises(ValueError, match="render_mode 'ansi' is not supported; valid choices: None, 'rgb_array'"):
        task(render_mode="ansi")


# ---------------------------------------------------------------------- installation


def test_hqlt_train_is_an_installed_console_script():
    (entry_point,) = importlib.metadata.entry_points(group="console_scripts", name="hqlt-train")
    from hqlt import train

    assert entry_point.value == "hqlt.train:main" and entry_point.load() is train.main


def test_triton_is_an_extra():
    requirements = importlib.metadata.requires("hqlt")
    assert not [r for r in requirements if r.startswith("triton") and "extra ==" not in r]
    assert {r.split("extra == ")[-1].strip('"') for r in requirements if r.startswith("triton")} >= {"triton", "test"}


def test_hqlt_imports_and_runs_without_triton():
    script = """
import sys
sys.modules["triton"] = None  # `import triton` raises ImportError
import torch
import hqlt.agents, hqlt.envs, hqlt.evaluate, hqlt.train
from hqlt.kernels.backend import resolve_backend
from hqlt.memory import build_core

core = build_core("hqlt", input_dim=8, hidden_dim=16, num_layers=1, num_heads=2, window=4)
y, _ = core(torch.randn(2, 5, 8), core.initial_state(2, device="cpu"), torch.ones(2, 5, dtype=torch.bool))
assert y.shape == (2, 5, 16) and resolve_backend(None, torch.device("cpu")) == "reference"
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
