"""Batched Passive and Active T-Maze: the rules of hqlt.envs.tmaze.TMaze over N rows of tensors."""

from __future__ import annotations

import torch
from torch import Tensor

from hqlt.envs.batched.base import BatchedEnv
from hqlt.envs.tmaze import DOWN, LEFT, RIGHT, UP


class BatchedTMaze(BatchedEnv):
    """State per row: position x, steps taken, the goal side, and whether the cue is in view / was seen.

    The cue is visible in the observation right after the agent first stands on the oracle cell,
    exactly as TMaze._observe shows it (once per episode).
    """

    defines_success = True

    def setup(self) -> None:
        task = self.task
        self.corridor_length, self.oracle_distance, self.horizon = task.corridor_length, task.oracle_distance, task.horizon
        self.goal_reward, self.penalty = task.goal_reward, task.penalty
        zeros = torch.zeros(self.num_envs, dtype=torch.int64, device=self.device)
        self.x, self.steps = zeros.clone(), zeros.clone()
        self.goal_up = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        self.cue_visible, self.cue_seen = self.goal_up.clone(), self.goal_up.clone()

    def draw_episodes(self) -> dict[str, Tensor]:
        """goal_up bool [N]: the goal side (TMaze.reset's fair coin)."""
        return {"goal_up": (self.random_bits(0) & 1).bool()}

    def _start(self, rows: Tensor, params: dict[str, Tensor]) -> None:
        self.goal_up.copy_(torch.where(rows, params["goal_up"], self.goal_up))
        self.x.masked_fill_(rows, 0)
        self.steps.masked_fill_(rows, 0)
        at_oracle = self.oracle_distance == 0  # passive: the start is the oracle
        self.cue_visible.masked_fill_(rows, at_oracle)
        self.cue_seen.masked_fill_(rows, at_oracle)

    def _advance(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        self.steps += 1
        moved = torch.where(actions == RIGHT, self.x + 1, torch.where(actions == LEFT, self.x - 1, self.x))
        self.x.copy_(moved.clamp(-self.oracle_distance, self.corridor_length))
        turned = ((actions == UP) | (actions == DOWN)) & (self.x == self.corridor_length)
        success = turned & ((actions == UP) == self.goal_up)
        behind = self.x < self.steps - 2 * self.oracle_distance
        reward = torch.where(turned, self.goal_reward * success.float(), torch.where(behind, -self.penalty, 0.0))
        terminated = turned | (self.steps >= self.horizon)
        self.cue_visible.copy_((self.x == -self.oracle_distance) & ~self.cue_seen)
        self.cue_seen |= self.cue_visible
        return reward.float(), terminated, success.float()

    def _observe(self) -> Tensor:
        """float32 [N, 3]: cue up, cue down, at the junction."""
        cue = self.cue_visible
        junction = self.x == self.corridor_length
        return torch.stack([cue & self.goal_up, cue & ~self.goal_up, junction], dim=1).float()
