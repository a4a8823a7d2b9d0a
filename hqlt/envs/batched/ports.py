"""Which env ids have a batched port: id -> port class (each takes the reference env it reads its
constants from, then num_envs, device, seed, max_episode_steps)."""

from __future__ import annotations

from hqlt.envs.batched.base import BatchedEnv
from hqlt.envs.batched.tmaze import BatchedTMaze

PORTS: dict[str, type[BatchedEnv]] = {
    "hqlt/TMazePassive-v0": BatchedTMaze,
    "hqlt/TMazeActive-v0": BatchedTMaze,
}
