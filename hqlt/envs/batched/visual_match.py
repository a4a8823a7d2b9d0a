"""Batched Passive Visual Match: the rules of hqlt.envs.visual_match.PassiveVisualMatch over N rows of tensors.

Each row holds the room it is in as an int8 grid (the three rooms padded with wall to the largest,
coordinates unchanged) and the agent's cell as a flat index row * W + col into it, so a move is an
add, reading the cell ahead a gather and the 5x5 view a gather of 25 offsets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from hqlt.envs.batched.base import BatchedEnv
from hqlt.envs.visual_match import (
    _APPLE_CELLS,
    _CUE_CELLS,
    _DISTRACTOR_GRID,
    _DISTRACTOR_START,
    _DOOR_CELLS,
    _EXPLORE_GRID,
    _EXPLORE_START,
    _MOVES,
    _PAD,
    _REWARD_GRID,
    _REWARD_START,
    APPLE,
    COLOUR,
    FLOOR,
    NUM_COLOURS,
    PALETTE,
    PLAYER,
    VIEW,
    WALL,
)

# The phases, which are also the indices of their rooms.
EXPLORE, DISTRACTOR, REWARD = 0, 1, 2


@dataclass(frozen=True)
class _Tables:
    """The reference's constants as tensors on the env's device; cells are flat indices row * W + col.

    Held apart from the env's attributes so that `state_tensors` (snapshot/restore) sees only state.
    """

    rooms: Tensor  # int8 [3, H, W]: explore, distractor, reward, padded with wall at the bottom and right
    starts: Tensor  # int64 [3]: the agent's first cell in each room
    phase_steps: Tensor  # int64 [3]: how many steps each phase lasts
    next_phase: Tensor  # int64 [3]: the phase after each (the reward room's entry is unused: it ends the episode)
    cue_cells: Tensor  # int64 [8]: the explore room's walls around the agent, one of which shows the cue
    door_cells: Tensor  # int64 [3]: the reward room's coloured cells, left to right
    apple_cells: Tensor  # int64 [A]
    moves: Tensor  # int64 [4]: the flat step of each action
    view: Tensor  # int64 [VIEW * VIEW]: the flat offsets of the view around the agent, row-major
    palette: Tensor  # uint8 [7, 3]

    @classmethod
    def build(cls, phase_steps: tuple[int, int, int], skip_distractor: bool, device: torch.device) -> _Tables:
        grids = (_EXPLORE_GRID, _DISTRACTOR_GRID, _REWARD_GRID)
        height, width = (max(grid.shape[axis] for grid in grids) for axis in (0, 1))
        rooms = np.stack([
            np.pad(grid, ((0, height - grid.shape[0]), (0, width - grid.shape[1])), constant_values=WALL)
            for grid in grids
        ])

        def flat(cells) -> Tensor:
            cells = np.asarray(cells).reshape(-1, 2)
            return torch.as_tensor(cells[:, 0] * width + cells[:, 1], dtype=torch.int64, device=device)

        offsets = np.arange(-_PAD, _PAD + 1)
        after_explore = REWARD if skip_distractor else DISTRACTOR
        return cls(
            rooms=torch.as_tensor(rooms, device=device),
            starts=flat([_EXPLORE_START, _DISTRACTOR_START, _REWARD_START]),
            phase_steps=torch.tensor(phase_steps, device=device),
            next_phase=torch.tensor([after_explore, REWARD, REWARD], device=device),
            cue_cells=flat(_CUE_CELLS),
            door_cells=flat(_DOOR_CELLS),
            apple_cells=flat(_APPLE_CELLS),
            moves=flat(_MOVES),
            view=flat(np.stack(np.meshgrid(offsets, offsets, indexing="ij"), axis=-1)),
            palette=torch.as_tensor(PALETTE, device=device),
        )


class BatchedPassiveVisualMatch(BatchedEnv):
    """State per row: the episode (target colour, cue cell, door colours), the phase and its step count,
    the grid of the room the row is in (int8 [N, H, W]), the agent's cell in it and the apple timers.
    """

    defines_success = True

    def setup(self) -> None:
        task = self.task
        self.final_reward, self.apple_reward = task.final_reward, task.apple_reward
        self.apple_respawn_steps = task.apple_respawn_steps
        self.tables = _Tables.build(task.phase_steps, task.distractor_steps == 0, self.device)
        index = dict(dtype=torch.int64, device=self.device)
        self.target = torch.zeros(self.num_envs, **index)  # the cue's colour
        self.cue = torch.zeros(self.num_envs, **index)  # which of the cue cells shows it
        self.doors = torch.zeros(self.num_envs, NUM_COLOURS, **index)  # the colour of each door, left to right
        self.phase, self.phase_step, self.pos = (torch.zeros(self.num_envs, **index) for _ in range(3))
        self.grid = torch.zeros(self.num_envs, *self.tables.rooms.shape[1:], dtype=torch.int8, device=self.device)
        self.apple_timer = torch.zeros(self.num_envs, len(_APPLE_CELLS), **index)  # steps until respawn, 0 = present

    def draw_episodes(self) -> dict[str, Tensor]:
        """PassiveVisualMatch.reset's draws: target int64 [N] (a colour), cue int64 [N] (an index into
        the cue cells), doors int64 [N, 3] (a permutation of the colours)."""
        return {
            "target": self.random_bits(0) % NUM_COLOURS,  # modulo bias 2^-32: negligible
            "cue": self.random_bits(1) % len(_CUE_CELLS),
            "doors": self.random_permutations(2, NUM_COLOURS),
        }

    def _start(self, rows: Tensor, params: dict[str, Tensor]) -> None:
        self.target.copy_(torch.where(rows, params["target"], self.target))
        self.cue.copy_(torch.where(rows, params["cue"], self.cue))
        self.doors.copy_(torch.where(rows[:, None], params["doors"], self.doors))
        self._enter(rows, torch.full_like(self.phase, EXPLORE))

    def _advance(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        tables = self.tables
        ahead = self.pos + tables.moves[actions]
        cell = self.grid.view(self.num_envs, -1).gather(1, ahead[:, None]).squeeze(1)
        # Walking into a colour of the reward room picks it and ends the episode; the rest of this
        # step's update of such a row is undone by its restart.
        picked = (self.phase == REWARD) & (cell >= COLOUR)
        success = picked & (cell - COLOUR == self.target)
        walks = (cell == FLOOR) | (cell == APPLE)
        self.pos.copy_(torch.where(walks, ahead, self.pos))
        reward = torch.where(success, self.final_reward, self._distractor_update(cell))
        self.phase_step += 1
        ended = self.phase_step >= tables.phase_steps[self.phase]
        timed_out = ended & (self.phase == REWARD)
        self._enter(ended & ~timed_out, tables.next_phase[self.phase])
        return reward, picked | timed_out, success.float()

    def _distractor_update(self, cell: Tensor) -> Tensor:
        """PassiveVisualMatch._distractor_update, after the move: advances the apple timers, respawns
        apples, eats the apple walked into (`cell` int8 [N], the code of the cell walked into, read
        before the respawns as the reference reads it). Returns the apple reward float32 [N].

        Every row runs it: outside the distractor room there are no apples and every timer is 0
        (`_enter` zeroes them), so it changes nothing there."""
        tables = self.tables
        counting = self.apple_timer > 0
        self.apple_timer -= counting.long()
        respawned = counting & (self.apple_timer == 0)
        eats = cell == APPLE
        eaten = eats[:, None] & (tables.apple_cells == self.pos[:, None])
        self.apple_timer.masked_fill_(eaten, self.apple_respawn_steps)
        cells = self.grid.view(self.num_envs, -1)
        apple_cells = tables.apple_cells.expand(self.num_envs, -1)
        apples = torch.where(eaten, FLOOR, torch.where(respawned, APPLE, cells.gather(1, apple_cells)))
        cells.scatter_(1, apple_cells, apples)
        return torch.where(eats, self.apple_reward, 0.0)

    def _enter(self, rows: Tensor, phase: Tensor) -> None:
        """PassiveVisualMatch._enter_phase for the rows where `rows` (bool [N]): into room `phase` (int64 [N])."""
        self.phase.copy_(torch.where(rows, phase, self.phase))
        self.phase_step.masked_fill_(rows, 0)
        self.pos.copy_(torch.where(rows, self.tables.starts[phase], self.pos))
        self.apple_timer.masked_fill_(rows[:, None], 0)
        self.grid.copy_(torch.where(rows[:, None, None], self._fresh_room(phase), self.grid))

    def _fresh_room(self, phase: Tensor) -> Tensor:
        """Room `phase` (int64 [N]) of each row as the row's episode enters it, the cue or the doors
        drawn in: int8 [N, H, W]."""
        tables = self.tables
        rooms = tables.rooms.flatten(1).repeat(self.num_envs, 1, 1)  # [N, 3, H * W]
        cue_cells = tables.cue_cells[self.cue][:, None]
        rooms[:, EXPLORE].scatter_(1, cue_cells, (COLOUR + self.target[:, None]).to(torch.int8))
        door_cells = tables.door_cells.expand(self.num_envs, -1)
        rooms[:, REWARD].scatter_(1, door_cells, (COLOUR + self.doors).to(torch.int8))
        return rooms[self.rows, phase].view_as(self.grid)

    def _observe(self) -> Tensor:
        """uint8 [N, 5, 5, 3]: the view centred on the agent (drawn as PLAYER) in PALETTE colours."""
        codes = self.grid.view(self.num_envs, -1).gather(1, self.pos[:, None] + self.tables.view)
        codes[:, (VIEW * VIEW) // 2] = PLAYER
        return self.tables.palette[codes.long()].view(self.num_envs, VIEW, VIEW, 3)
