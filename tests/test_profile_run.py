"""benchmarks/profile_run.py end to end at a tiny size: it builds the run of any agent from overrides, times
its collections and updates and prints the profiler's tables of one of each."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "profile_run.py"


@pytest.mark.parametrize("agent", [["agent=ppo"], ["agent=dqn", "agent.learning_starts=0", "agent.batch_size=4"]])
def test_profile_run_times_and_profiles_a_collection_and_an_update(agent):
    overrides = [*agent, "env=tmaze_passive", "env.kwargs.corridor_length=4", "agent.num_envs=4", "agent.rollout_length=8",
                 "memory=gru", "device=cpu"]
    result = subprocess.run([sys.executable, str(SCRIPT), "--updates", "1", "--rows", "5", "--", *overrides],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "one collection:" in result.stdout and "one update:" in result.stdout
    timing = re.search(r"32 env steps per update; seconds per collection ([\d.]+), per update ([\d.]+)", result.stdout)
    assert timing is not None, result.stdout[-2000:]
    assert float(timing[1]) > 0 and float(timing[2]) > 0


def test_profile_run_names_a_bad_override():
    result = subprocess.run([sys.executable, str(SCRIPT), "--", "agent.no_such_key=1"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0
    assert "no_such_key" in result.stderr
