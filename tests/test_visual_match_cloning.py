"""benchmarks/visual_match_cloning.py end to end at a tiny size: the student clones, and the cue probe
reports its accuracy."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "visual_match_cloning.py"


@pytest.mark.parametrize(("variant", "compare"), [("plain", False), ("episodic", True)])
def test_cloning_runs_and_the_probe_reports_its_accuracy(variant, compare):
    command = [sys.executable, str(SCRIPT), "--variant", variant, "--probe", "--updates", "2", "--log-interval", "2",
               "--success-interval", "2", "--episodes", "4", "--distractor-steps", "2", *(["--compare"] if compare else [])]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"lstm  {variant} update 2: cloning loss" in result.stdout
    accuracy = float(result.stdout.split("cue probe accuracy ")[1].split()[0].rstrip(","))
    assert 0.0 <= accuracy <= 1.0
    assert ("recall loss" in result.stdout) == (variant == "episodic")
    success = float(result.stdout.split("greedy success ")[1].split()[0])
    assert 0.0 <= success <= 1.0
