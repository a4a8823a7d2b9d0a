"""examples/drop_in.py (hqlt.memory inside a plain gymnasium loop) runs end to end."""

import importlib.util
import math
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "drop_in.py"


@pytest.mark.parametrize("core", ["lstm", "hqlt"])
def test_drop_in_example_trains_briefly(core, capsys):
    spec = importlib.util.spec_from_file_location("drop_in", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    final = module.main(["--core", core, "--steps", "1024", "--num-envs", "4", "--rollout", "32"])
    assert math.isfinite(final) and final > 0
    assert "done: mean return" in capsys.readouterr().out
