"""Passive Visual Match (Hung et al. 2019; the long-memory RL task of Ni et al. 2023 and of HQLT).

Three rooms in sequence, each shown through an egocentric 5x5 RGB crop centred on the agent:
  1. explore (15 steps): the agent stands walled in a 3x3 room; one wall cell has a colour (the cue),
     one of 3 colours, always in view;
  2. distractor (`distractor_steps` steps): a room with 10 apples worth `apple_reward` each, an eaten
     apple respawns `apple_respawn_steps` steps later;
  3. reward (15 steps): a room with three coloured cells (the 3 colours in a random order, independent
     of the cue); walking into the cue's colour gives `final_reward` and success, another colour gives 0.
The episode ends (terminated) when a colour is picked or the reward room's time is up.

     explore        distractor        reward
                   ###########     ###########
      ###          #a a a a a#     # R  G  B #
      #@C          # a a a a #     #         #
      ###          #a a a a a#     #         #
                   # a a a a #     ####   ####
                   #a a @ a a#        # @ #
                   ###########        #####

Actions (Discrete 4): 0 up, 1 down, 2 left, 3 right. Walls (and everything outside the map, drawn as
wall) block moves. Observation: uint8 [5, 5, 3].

render_mode="rgb_array": `render()` draws the whole current room in the PALETTE's colours, the agent
black, centred on a wall background of the largest room's size (so that every frame of an episode has
one size), RENDER_CELL_PIXELS per cell: uint8 [7 * 16, 11 * 16, 3].
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from hqlt.envs.checks import require_int

UP, DOWN, LEFT, RIGHT = 0, 1, 2, 3
_MOVES = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]])

# Cell codes; the three colours are COLOUR + k.
FLOOR, WALL, APPLE, PLAYER, COLOUR = 0, 1, 2, 3, 4
NUM_COLOURS = 3
PALETTE = np.array(
    [
        [205, 205, 205],  # floor
        [70, 70, 70],  # wall
        [120, 180, 0],  # apple
        [0, 0, 0],  # player
        [220, 40, 40],  # colour 0: red
        [40, 90, 230],  # colour 1: blue
        [240, 200, 30],  # colour 2: yellow
    ],
    dtype=np.uint8,
)
EXPLORE_STEPS = 15
REWARD_STEPS = 15
VIEW = 5
_PAD = VIEW // 2


def _parse(rows: list[str]) -> np.ndarray:
    """ASCII map -> cell codes, padded with walls so any 5x5 crop around a floor cell is inside."""
    codes = {" ": FLOOR, "#": WALL, "a": APPLE, "@": FLOOR, "c": FLOOR}
    grid = np.array([[codes[ch] for ch in row] for row in rows], dtype=np.int8)
    return np.pad(grid, _PAD, constant_values=WALL)


def _find(rows: list[str], char: str) -> list[tuple[int, int]]:
    return [(r + _PAD, c + _PAD) for r, row in enumerate(rows) for c, ch in enumerate(row) if ch == char]


_EXPLORE = ["###", "#@#", "###"]
_DISTRACTOR = [
    "###########",
    "#a a a a a#",
    "# a a a a #",
    "#a a a a a#",
    "# a a a a #",
    "#a a @ a a#",
    "###########",
]
_REWARD = [
    "###########",
    "# c  c  c #",
    "#         #",
    "#         #",
    "####   ####",
    "   # @ #   ",
    "   #####   ",
]
_EXPLORE_GRID, _DISTRACTOR_GRID, _REWARD_GRID = _parse(_EXPLORE), _parse(_DISTRACTOR), _parse(_REWARD)
_EXPLORE_START, _DISTRACTOR_START, _REWARD_START = (_find(m, "@")[0] for m in (_EXPLORE, _DISTRACTOR, _REWARD))
_CUE_CELLS = [(_EXPLORE_START[0] + dr, _EXPLORE_START[1] + dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if dr or dc]
_APPLE_CELLS = np.array(_find(_DISTRACTOR, "a"))
_DOOR_CELLS = _find(_REWARD, "c")
# render(): a room's cells (without the padding) centred on a canvas of the largest room's size.
RENDER_CELL_PIXELS = 16
_RENDER_ROWS = max(len(room) for room in (_EXPLORE, _DISTRACTOR, _REWARD))
_RENDER_COLS = max(len(room[0]) for room in (_EXPLORE, _DISTRACTOR, _REWARD))


class PassiveVisualMatch(gym.Env):
    """Remember a colour across a long apple-collecting distractor, then pick it (module docstring)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 8}

    def __init__(
        self,
        distractor_steps: int = 750,
        final_reward: float = 100.0,
        apple_reward: float = 1.0,
        apple_respawn_steps: int = 20,
        render_mode: str | None = None,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"PassiveVisualMatch render_mode {render_mode!r} is not supported; valid choices: None, 'rgb_array'"
            )
        self.render_mode = render_mode
        self.distractor_steps = require_int("PassiveVisualMatch distractor_steps", distractor_steps, 0)
        self.final_reward = float(final_reward)
        self.apple_reward = float(apple_reward)
        self.apple_respawn_steps = require_int("PassiveVisualMatch apple_respawn_steps", apple_respawn_steps, 1)
        self.phase_steps = (EXPLORE_STEPS, self.distractor_steps, REWARD_STEPS)
        self.observation_space = spaces.Box(0, 255, shape=(VIEW, VIEW, 3), dtype=np.uint8)
        self.action_space = spaces.Discrete(4)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._target = int(self.np_random.integers(NUM_COLOURS))
        self._cue_cell = _CUE_CELLS[int(self.np_random.integers(len(_CUE_CELLS)))]
        self._door_colours = self.np_random.permutation(NUM_COLOURS)
        self._enter_phase(0)
        return self._observe(), {}

    def _enter_phase(self, phase: int) -> None:
        self._phase = phase
        self._phase_step = 0
        if phase == 0:
            self._grid = _EXPLORE_GRID.copy()
            self._grid[self._cue_cell] = COLOUR + self._target
            self._pos = _EXPLORE_START
        elif phase == 1:
            self._grid = _DISTRACTOR_GRID.copy()
            self._apple_timer = np.zeros(len(_APPLE_CELLS), dtype=np.int64)  # steps until respawn, 0 = present
            self._pos = _DISTRACTOR_START
        else:
            self._grid = _REWARD_GRID.copy()
            for cell, colour in zip(_DOOR_CELLS, self._door_colours):
                self._grid[cell] = COLOUR + colour
            self._pos = _REWARD_START

    def step(self, action: int):
        action = int(action)
        if not 0 <= action < 4:
            raise ValueError(f"PassiveVisualMatch action must be in range(4) (up, down, left, right), got {action}")
        target = (self._pos[0] + _MOVES[action, 0], self._pos[1] + _MOVES[action, 1])
        cell = self._grid[target]
        if cell >= COLOUR and self._phase == 2:  # walking into a colour of the reward room picks it
            success = cell - COLOUR == self._target
            return self._observe(), self.final_reward * success, True, False, {"success": float(success)}
        if cell in (FLOOR, APPLE):
            self._pos = target
        reward = self._distractor_update(cell) if self._phase == 1 else 0.0
        self._phase_step += 1
        if self._phase_step >= self.phase_steps[self._phase]:
            if self._phase == 2:
                return self._observe(), reward, True, False, {"success": 0.0}
            next_phase = self._phase + 1
            if next_phase == 1 and self.distractor_steps == 0:
                next_phase = 2
            self._enter_phase(next_phase)
        return self._observe(), reward, False, False, {}

    def _distractor_update(self, cell: int) -> float:
        """Eats an apple under the agent, advances respawn timers; returns the apple reward."""
        counting = self._apple_timer > 0
        self._apple_timer[counting] -= 1
        respawned = counting & (self._apple_timer == 0)
        if respawned.any():
            cells = _APPLE_CELLS[respawned]
            self._grid[cells[:, 0], cells[:, 1]] = APPLE
        if cell != APPLE:
            return 0.0
        self._grid[self._pos] = FLOOR
        eaten = (_APPLE_CELLS[:, 0] == self._pos[0]) & (_APPLE_CELLS[:, 1] == self._pos[1])
        self._apple_timer[eaten] = self.apple_respawn_steps
        return self.apple_reward

    def _observe(self) -> np.ndarray:
        row, col = self._pos
        view = self._grid[row - _PAD : row + _PAD + 1, col - _PAD : col + _PAD + 1].copy()
        view[_PAD, _PAD] = PLAYER
        return PALETTE[view]

    def render(self) -> np.ndarray | None:
        """The current room as uint8 `[H, W, 3]` (module docstring); None without a render mode."""
        if self.render_mode is None:
            gym.logger.warn(
                "PassiveVisualMatch.render() called without a render_mode; make the env with render_mode='rgb_array'"
            )
            return None
        grid = self._grid.copy()
        grid[self._pos] = PLAYER
        room = grid[_PAD:-_PAD, _PAD:-_PAD]
        canvas = np.full((_RENDER_ROWS, _RENDER_COLS), WALL, dtype=grid.dtype)
        top, left = (_RENDER_ROWS - room.shape[0]) // 2, (_RENDER_COLS - room.shape[1]) // 2
        canvas[top : top + room.shape[0], left : left + room.shape[1]] = room
        return PALETTE[canvas].repeat(RENDER_CELL_PIXELS, axis=0).repeat(RENDER_CELL_PIXELS, axis=1)
