"""benchmarks/acting_step.py times the policy's acting step per core (a smoke test of its setup)."""

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from acting_step import step_time  # noqa: E402


def test_every_kind_of_core_takes_a_timed_step():
    env = ["env=tmaze_passive", "env.kwargs.corridor_length=5"]
    for core in ("lstm", "hqlt", "transformer"):
        seconds = step_time(core, env, num_envs=2, steps=2, repeats=1)
        assert math.isfinite(seconds) and seconds > 0
