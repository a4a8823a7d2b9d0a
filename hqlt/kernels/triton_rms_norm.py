"""RMSNorm with a learned scale in Triton (same contract as `reference.rms_norm`).

The transformer-style cores normalise every layer's input, each head's memory output and the final
output: seven norms per forward of the 2-layer hqlt preset, over rows of 128 (or a head's 32). On rows
that short torch's fused kernel took about 190 us for 131k rows of 128 fp32 on an H100 (RESULTS,
"one-pass TF32"), about a fifth of the card's bandwidth; here each program normalises a tile of rows
(`ROWS x BLOCK_D`, about 4k elements) and keeps 1 / rms per row for the backward.
The scale's gradient is summed per tile and the tiles' partial sums are added in fp32 afterwards.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from hqlt.kernels import reference
from hqlt.kernels.triton_delta_rule import SUPPORTED_DTYPES

TILE_ELEMENTS = 4096
MIN_BLOCK, MAX_DIM = 16, 1024  # the cores' rows: hidden sizes and head dims (wider rows take the reference)


def _tile(dim: int) -> tuple[int, int]:
    """(ROWS, BLOCK_D) of one program for rows of `dim` elements."""
    block_d = max(MIN_BLOCK, triton.next_power_of_2(dim))
    return max(1, TILE_ELEMENTS // block_d), block_d


@triton.jit
def _tile_offsets(pid, n_rows, dim, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = pid.to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < dim)
    return rows, cols, rows[:, None] * dim + cols[None, :], mask


@triton.jit
def _forward_kernel(x_ptr, weight_ptr, y_ptr, rstd_ptr, n_rows, dim, eps,
                    ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    rows, cols, offsets, mask = _tile_offsets(tl.program_id(0), n_rows, dim, ROWS, BLOCK_D)
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    weight = tl.load(weight_ptr + cols, mask=cols < dim, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / dim + eps)
    y = x * rstd[:, None] * weight[None, :]
    tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(rstd_ptr + rows, rstd, mask=rows < n_rows)


@triton.jit
def _backward_kernel(x_ptr, weight_ptr, rstd_ptr, dy_ptr, dx_ptr, dweight_partial_ptr, n_rows, dim,
                     ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    rows, cols, offsets, mask = _tile_offsets(pid, n_rows, dim, ROWS, BLOCK_D)
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    weight = tl.load(weight_ptr + cols, mask=cols < dim, other=0.0).to(tl.float32)
    rstd = tl.load(rstd_ptr + rows, mask=rows < n_rows, other=0.0)
    x_hat = x * rstd[:, None]
    weighted = dy * weight[None, :]
    # y = x_hat * w with x_hat = x / rms(x): dx = (w dy - x_hat * mean(x_hat * w dy)) / rms(x)
    projection = tl.sum(x_hat * weighted, axis=1) / dim
    dx = (weighted - x_hat * projection[:, None]) * rstd[:, None]
    tl.store(dx_ptr + offsets, dx.to(dx_ptr.dtype.element_ty), mask=mask)
    tl.store(dweight_partial_ptr + pid * dim + cols, tl.sum(dy * x_hat, axis=0), mask=cols < dim)


class RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        dim = x.shape[-1]
        n_rows = x.numel() // dim
        rows, block_d = _tile(dim)
        y = torch.empty_like(x)
        rstd = torch.empty(n_rows, device=x.device, dtype=torch.float32)
        _forward_kernel[(triton.cdiv(n_rows, rows),)](x, weight, y, rstd, n_rows, dim, eps, ROWS=rows, BLOCK_D=block_d)
        ctx.save_for_backward(x, weight, rstd)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, rstd = ctx.saved_tensors
        dim = x.shape[-1]
        n_rows = x.numel() // dim
        rows, block_d = _tile(dim)
        tiles = triton.cdiv(n_rows, rows)
        dx = torch.empty_like(x)
        dweight_partial = torch.empty(tiles, dim, device=x.device, dtype=torch.float32)
        _backward_kernel[(tiles,)](x, weight, rstd, dy.contiguous(), dx, dweight_partial, n_rows, dim,
                                   ROWS=rows, BLOCK_D=block_d)
        return dx, dweight_partial.sum(0).to(weight.dtype), None


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """Triton RMSNorm, same contract as `reference.rms_norm`: x `[..., D]`, weight `[D]` -> `[..., D]` in x's dtype."""
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"rms_norm: Triton kernels take float32, bfloat16 or float16 inputs, got {x.dtype}; "
                         "use backend='reference' for other dtypes")
    if weight.shape != x.shape[-1:]:
        raise ValueError(f"rms_norm: weight shape {tuple(weight.shape)} must be x's last dim ({x.shape[-1]},)")
    if x.shape[-1] > MAX_DIM:  # one row per program: torch's own fused kernel does as well, in fp32 as the kernel
        return reference.rms_norm(x.float(), weight.float(), eps).to(x.dtype)
    return RMSNormFunction.apply(x.contiguous(), weight.contiguous(), eps)
