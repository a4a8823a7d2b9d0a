"""Passive and Active T-Maze (Ni et al. 2023, "When do transformers shine in RL?").

    (oracle)  start ---- corridor ---- junction -> up   (goal if the cue said up)
                                                -> down (goal if the cue said down)

The agent walks right along a corridor of `corridor_length` cells to the junction and turns up or down.
The goal side is shown by a cue in the oracle cell, the first time the agent is there:
  - passive: the oracle is the start cell, so the cue is in the first observation;
  - active:  the oracle is one step behind (left of) the start; the agent must fetch the cue.
The memory length is `corridor_length`: the cue must be remembered across the corridor.

Observation (Box float32 of 3 binary features): [cue_up, cue_down, at_junction]. The corridor looks the
same everywhere, so only memory tells where the goal is.
Actions (Discrete 4): 0 right, 1 up, 2 left, 3 down. Up/down outside the junction do nothing.
Rewards: `goal_reward` for turning to the goal side at the junction (0 for the wrong side); every step
the agent is behind the fastest schedule (position < steps - 2 * oracle_distance) costs `penalty`
(default 1 / corridor_length, so idling a whole episode costs about 1).
Episodes end (terminated) at the turn, or after the task's horizon: the minimal number of steps,
corridor_length + 1 (passive) or corridor_length + 3 (active). info["success"] is reported at the end.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from hqlt.envs.checks import require_int

RIGHT, UP, LEFT, DOWN = 0, 1, 2, 3


class TMaze(gym.Env):
    """T-Maze memory task; `active` selects the Active variant (see module docstring)."""

    metadata = {"render_modes": []}

    def __init__(
        self,
        corridor_length: int = 10,
        active: bool = False,
        goal_reward: float = 1.0,
        penalty: float | None = None,
    ) -> None:
        self.corridor_length = require_int("T-Maze corridor_length", corridor_length, 1)
        penalty = 1.0 / self.corridor_length if penalty is None else float(penalty)
        if penalty < 0:
            raise ValueError(f"T-Maze penalty is a cost and must be >= 0, got {penalty}")
        self.active = bool(active)
        self.goal_reward = float(goal_reward)
        self.penalty = penalty
        self.oracle_distance = 1 if self.active else 0
        self.horizon = self.corridor_length + 1 + 2 * self.oracle_distance
        self.observation_space = spaces.Box(0.0, 1.0, shape=(3,), dtype=np.float32)
        self.action_space = spaces.Discrete(4)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._goal_up = bool(self.np_random.integers(2))
        self._x = 0
        self._steps = 0
        self._cue_seen = False
        return self._observe(), {}

    def step(self, action: int):
        action = int(action)
        if not 0 <= action < 4:
            raise ValueError(f"T-Maze action must be in range(4) (right, up, left, down), got {action}")
        self._steps += 1
        if action == RIGHT:
            self._x = min(self._x + 1, self.corridor_length)
        elif action == LEFT:
            self._x = max(self._x - 1, -self.oracle_distance)
        if action in (UP, DOWN) and self._x == self.corridor_length:
            success = (action == UP) == self._goal_up
            return self._observe(), self.goal_reward * success, True, False, {"success": float(success)}
        behind = self._x < self._steps - 2 * self.oracle_distance
        reward = -self.penalty if behind else 0.0
        if self._steps >= self.horizon:
            return self._observe(), reward, True, False, {"success": 0.0}
        return self._observe(), reward, False, False, {}

    def _observe(self) -> np.ndarray:
        obs = np.zeros(3, dtype=np.float32)
        if self._x == -self.oracle_distance and not self._cue_seen:
            self._cue_seen = True
            obs[0 if self._goal_up else 1] = 1.0
        obs[2] = float(self._x == self.corridor_length)
        return obs
