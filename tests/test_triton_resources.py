"""Every Triton launch the dispatch can make fits an H100's shared memory, checked without a GPU.

`hqlt.kernels.triton_resources` runs the Triton ops for every head dim, chunk size, dtype, pass and
rollout window the memory cores can use, records the distinct kernel launches and compiles each for
sm_90 up to Triton's shared-memory allocation (the number the driver checks when it loads a kernel).
It runs in a subprocess: this session may hold the kernels under the Triton interpreter
(tests/test_triton_kernels.py sets TRITON_INTERPRET=1 on CPU), and interpreted kernels cannot be compiled.
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

from hqlt.kernels.triton_resources import H100_SHARED_MEMORY, all_cases  # noqa: E402

KERNELS = {
    "triton_delta_rule._prepare_kernel", "triton_delta_rule._forward_walk_kernel",
    "triton_delta_rule._state_gradient_kernel", "triton_delta_rule.chunk_gradient_kernel",
    "triton_window_attention._forward_kernel",
    "triton_window_attention.dq_kernel", "triton_window_attention.dkdv_kernel", "triton_rollout_step._step_kernel",
    "triton_swiglu._forward_kernel", "triton_swiglu._backward_kernel",
    "triton_rms_norm._forward_kernel", "triton_rms_norm._backward_kernel",
}


def _python(*args: str) -> subprocess.CompletedProcess:
    """Run python with `args` without the Triton interpreter, on one torch thread per process."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env.update(OMP_NUM_THREADS="1", TRITON_DEFAULT_FP_FUSION="1")  # the launchers' default, stated
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=600)


def test_every_dispatch_launch_fits_h100_shared_memory():
    result = _python("-m", "hqlt.kernels.triton_resources", "--json", "--workers", "2")
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows, result.stderr[-3000:]
    print("\n".join(f"{row['shared']:7d} B  {row['kernel']} {row['constexprs']} num_stages={row['num_stages']}"
                    for row in sorted(rows, key=lambda row: -row["shared"])))
    assert {row["kernel"] for row in rows} == KERNELS
    assert {case for row in rows for case in row["cases"]} == {case.describe() for case in all_cases()}
    too_big = [row for row in rows if row["shared"] > H100_SHARED_MEMORY]
    assert not too_big, f"launches over the H100's {H100_SHARED_MEMORY} B of shared memory: {too_big}"
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_check_sees_a_launch_that_does_not_fit():
    """Window attention at head dim 128 with the [64, d] tiles that fit smaller head dims, pipelined
    three deep, needs more than the H100's shared memory; the measurement must say so (else the test
    above proves nothing)."""
    snippet = """
from unittest import mock
import torch
from hqlt.kernels import triton_resources, triton_window_attention as window
with mock.patch.object(window, "window_config", lambda head_dim: window.WindowConfig(block=64, step=64, num_stages=3)):
    case = triton_resources.Case("window_attention", 128, torch.float32, backward=False, window=32)
    [launch] = [launch for launch in triton_resources.dispatch_launches([case])
                if launch.name == "triton_window_attention._forward_kernel"]
print(triton_resources.shared_memory_bytes(launch))
"""
    result = _python("-c", snippet)
    assert result.returncode == 0, result.stderr[-3000:]
    shared = int(result.stdout.split()[-1])
    assert shared > H100_SHARED_MEMORY
