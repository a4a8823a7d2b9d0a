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

render_mode="rgb_array": `render()` draws the maze from above (oracle cell, corridor, junction and its
two arms; the agent black; while the observation shows the cue, a cell above or below the oracle on
the goal's side) with c pixels per cell (CELL_PIXELS, fewer where the frame would pass
MAX_RENDER_WIDTH): uint8 [3 c, (corridor_length + 1 + oracle_distance) c, 3].
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from hqlt.envs.checks import require_int

RIGHT, UP, LEFT, DOWN = 0, 1, 2, 3
# Colours of render(): wall, floor, agent, cue.
WALL_RGB, FLOOR_RGB, AGENT_RGB, CUE_RGB = (70, 70, 70), (205, 205, 205), (0, 0, 0), (220, 40, 40)
# Side of a rendered cell in pixels, shrunk for long corridors so that frames stay under
# MAX_RENDER_WIDTH; even, since video encoders want even frame sizes.
CELL_PIXELS, MAX_RENDER_WIDTH = 16, 2048


class TMaze(gym.Env):
    """T-Maze memory task; `active` selects the Active variant (see module docstring)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(
        self,
        corridor_length: int = 10,
        active: bool = False,
        goal_reward: float = 1.0,
        penalty: float | None = None,
        render_mode: str | None = None,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"T-Maze render_mode {render_mode!r} is not supported; valid choices: None, 'rgb_array'")
        self.render_mode = render_mode
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
        self._cue_visible = False
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
        self._cue_visible = self._x == -self.oracle_distance and not self._cue_seen
        if self._cue_visible:
            self._cue_seen = True
            obs[0 if self._goal_up else 1] = 1.0
        obs[2] = float(self._x == self.corridor_length)
        return obs

    def render(self) -> np.ndarray | None:
        """The current state from above as uint8 `[H, W, 3]` (module docstring); None without a render mode."""
        if self.render_mode is None:
            gym.logger.warn("T-Maze.render() called without a render_mode; make the env with render_mode='rgb_array'")
            return None
        columns = self.corridor_length + 1 + self.oracle_distance
        cells = np.full((3, columns, 3), WALL_RGB, dtype=np.uint8)
        cells[1] = FLOOR_RGB
        cells[[0, 2], -1] = FLOOR_RGB  # the junction's up and down arms
        if self._cue_visible:
            cells[0 if self._goal_up else 2, 0] = CUE_RGB
        cells[1, self._x + self.oracle_distance] = AGENT_RGB
        pixels = max(2, min(CELL_PIXELS, MAX_RENDER_WIDTH // columns) // 2 * 2)
        return cells.repeat(pixels, axis=0).repeat(pixels, axis=1)
