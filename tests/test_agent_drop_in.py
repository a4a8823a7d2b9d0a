"""examples/drop_in.py (hqlt.memory inside a plain gymnasium loop) learns the T-Maze's memory.

A short corridor and budget keep it to ~20 s on a CPU, and the hqlt core learns it in about half of
that budget; its greedy evaluation on fresh envs must then be far above the memoryless chance level.
"""

import importlib.util
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "drop_in.py"


def test_drop_in_example_learns_the_memory_task(capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("drop_in", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "drop_in", module)  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    # Episodes of 5 steps: rollouts of 8 span them, and give twice the updates of the default 16.
    args = ["--core", "hqlt", "--corridor-length", "4", "--steps", "40000", "--rollout", "8", "--eval-episodes", "100"]
    result = module.main(args)
    assert result.episodes == 100
    assert result.success >= 0.9 > module.CHANCE_SUCCESS + 0.3, result
    assert result.return_mean >= 0.9, result
    out = capsys.readouterr().out
    assert "evaluation: 100 greedy episodes on fresh envs (seeds 10000-10099)" in out
    assert f"success {result.success:.2f} (a memoryless agent: 0.50)" in out
