"""bfloat16 in Triton kernels behaves as on a GPU: a `tl.dot` of 16-bit operands is the fp32 product
of their values and fp32 -> bfloat16 casts round to nearest even. Under the Triton interpreter (no
GPU) both need `hqlt.kernels.triton_interpreter`, which importing `hqlt.kernels.triton_ops` applies;
without it the bfloat16 product is around 1e10 and casts round toward zero. With a GPU the same tests
check the compiled kernels.
"""

import os
import subprocess
import sys

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    # Must be set before the kernels below are defined: `triton.jit` reads it at decoration time.
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from hqlt.kernels import triton_ops  # noqa: E402, F401  (applies the interpreter's corrections)

DEVICE = torch.device("cuda" if CUDA else "cpu")


@triton.jit
def _dot_kernel(a_ptr, b_ptr, out_ptr, N: tl.constexpr):
    rows = tl.arange(0, N)
    offsets = rows[:, None] * N + rows[None, :]
    tl.store(out_ptr + offsets, tl.dot(tl.load(a_ptr + offsets), tl.load(b_ptr + offsets)))


@triton.jit
def _to_bf16_kernel(x_ptr, out_ptr, N: tl.constexpr):
    offsets = tl.arange(0, N)
    tl.store(out_ptr + offsets, tl.load(x_ptr + offsets).to(tl.bfloat16))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_dot_is_the_fp32_product_of_the_16_bit_values(dtype):
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(32, 32, generator=g).to(dtype).to(DEVICE) for _ in range(2))
    out = torch.empty(32, 32, device=DEVICE)
    _dot_kernel[(1,)](a, b, out, N=32)
    torch.testing.assert_close(out, a.double() @ b.double(), rtol=1e-5, atol=1e-5, check_dtype=False)


def test_fp32_to_bf16_rounds_to_nearest_even():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, generator=g) * torch.logspace(-30, 30, 1024)  # every scale fp32 and bfloat16 share
    x[:2] = torch.tensor([float("inf"), -float("inf")])
    x = x.to(DEVICE)
    out = torch.empty(1024, dtype=torch.bfloat16, device=DEVICE)
    _to_bf16_kernel[(1,)](x, out, N=1024)
    assert torch.equal(out.view(torch.int16), x.bfloat16().view(torch.int16))


def test_compiled_kernels_leave_the_interpreter_as_it_is():
    """Without TRITON_INTERPRET, importing the Triton ops changes nothing of the interpreter."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    code = ("import hqlt.kernels.triton_ops, triton.runtime.interpreter as interpreter; "
            "print(getattr(interpreter.InterpreterBuilder, 'fixed_bf16', False))")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.stdout.split() == ["False"], result.stderr[-3000:]
