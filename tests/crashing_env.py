"""A test env of our own that fails on purpose, for IMPALA's actor-crash tests.

Importing this module registers `hqlt_test/FailingTMaze-v0` with gymnasium; hqlt reaches it as
`crashing_env:hqlt_test/FailingTMaze-v0` (an env id `module:EnvId`), so that every process that makes
it, actor processes included, imports this module itself.
"""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym

from hqlt.envs.tmaze import TMaze

ENV_ID = "crashing_env:hqlt_test/FailingTMaze-v0"


class FailingTMaze(TMaze):
    """A passive T-Maze that, when it was seeded with `fail_seed`, fails at its `fail_after`-th step: it
    raises RuntimeError (`failure="raise"`) or ends its process at once with exit code 3 (`"exit"`)."""

    def __init__(self, fail_seed: int = -1, fail_after: int = 1, failure: str = "raise", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fail_seed, self.fail_after, self.failure = fail_seed, fail_after, failure
        self.doomed, self.steps_taken = False, 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:
            self.doomed = seed == self.fail_seed
        return super().reset(seed=seed, options=options)

    def step(self, action: int):
        self.steps_taken += 1
        if self.doomed and self.steps_taken >= self.fail_after:
            if self.failure == "exit":
                os._exit(3)
            raise RuntimeError(f"FailingTMaze fails at step {self.steps_taken}, as asked")
        return super().step(action)


if "hqlt_test/FailingTMaze-v0" not in gym.registry:
    gym.register("hqlt_test/FailingTMaze-v0", entry_point=FailingTMaze)
