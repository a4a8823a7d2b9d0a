"""benchmarks/diagnose_learning.py end to end at a tiny size: it trains through the trainer's own learning
rate, so agent.lr_target_kl moves the rate it prints as it moves a training run's."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "diagnose_learning.py"
OVERRIDES = ["env.kwargs.corridor_length=4", "agent.num_envs=4", "agent.rollout_length=8", "memory=gru", "device=cpu",
             "total_steps=96", "agent.anneal_lr=false"]


def printed_learning_rates(extra: list[str], tmp_path: Path) -> list[float]:
    result = subprocess.run([sys.executable, str(SCRIPT), "--every", "1", *OVERRIDES, f"log_dir={tmp_path}", *extra],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    header = lines[0].split()
    assert header[:4] == ["update", "step", "success", "learning_rat"]
    return [float(line.split()[3]) for line in lines[1:]]


@pytest.mark.parametrize("target, factor", [(None, 1.0), (100.0, 1.5)])
def test_diagnose_learning_follows_the_trainers_learning_rate(target, factor, tmp_path):
    # A target far above any update's KL raises the rate by 1.5 after every update; none keeps it.
    rates = printed_learning_rates([f"agent.lr_target_kl={'null' if target is None else target}"], tmp_path)
    assert rates == pytest.approx([3e-4 * factor**update for update in range(3)])
