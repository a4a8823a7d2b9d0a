"""benchmarks/whole_episodes.py counts the episodes that lie whole in one rollout row."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from whole_episodes import whole_fraction  # noqa: E402


def test_fixed_length_episodes_are_whole_exactly_when_rows_hold_them():
    # passive T-Maze 5: every episode lasts 6 steps and all envs start together
    kwargs = {"corridor_length": 5}
    assert whole_fraction("hqlt/TMazePassive-v0", kwargs, 6, num_envs=4, rollouts=3, seed=0) == (1.0, 12)
    assert whole_fraction("hqlt/TMazePassive-v0", kwargs, 12, num_envs=4, rollouts=2, seed=0) == (1.0, 16)
    fraction, ended = whole_fraction("hqlt/TMazePassive-v0", kwargs, 4, num_envs=4, rollouts=6, seed=0)
    assert fraction == 0.0 and ended == 16
    fraction, _ = whole_fraction("hqlt/TMazePassive-v0", kwargs, 9, num_envs=4, rollouts=4, seed=0)
    assert 0.0 < fraction < 1.0
