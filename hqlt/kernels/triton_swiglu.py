"""SwiGLU's gating in Triton (same contract as `reference.swiglu`).

Element-wise, but worth a kernel: in the feed-forward blocks it runs on the widest activations of the
update (`[B, T, 2 * 4 * dim]`). The reference's SiLU, product and their backwards each pass over them,
it saves SiLU(gate) for the backward, and the backward of its `chunk` concatenates the two gradients.
Here one pass each way: the forward saves only its input, and the backward writes d(gate) and d(up)
straight into one `[..., 2h]` gradient.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from hqlt.kernels.triton_delta_rule import SUPPORTED_DTYPES

BLOCK = 1024


@triton.jit
def _gate_up_offsets(pid, n, hidden, BLOCK: tl.constexpr):
    """Offsets of `BLOCK` output elements, of their gate and up entries in gate_up `[rows, 2 * hidden]`, and the mask."""
    index = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    row = index // hidden
    gate = index + row * hidden  # row * 2 * hidden + (index - row * hidden)
    return index, gate, gate + hidden, index < n


@triton.jit
def _forward_kernel(gate_up_ptr, out_ptr, n, hidden, BLOCK: tl.constexpr):
    index, gate_offset, up_offset, mask = _gate_up_offsets(tl.program_id(0), n, hidden, BLOCK)
    gate = tl.load(gate_up_ptr + gate_offset, mask=mask).to(tl.float32)
    up = tl.load(gate_up_ptr + up_offset, mask=mask).to(tl.float32)
    out = gate * tl.sigmoid(gate) * up
    tl.store(out_ptr + index, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_kernel(gate_up_ptr, dout_ptr, dgate_up_ptr, n, hidden, BLOCK: tl.constexpr):
    index, gate_offset, up_offset, mask = _gate_up_offsets(tl.program_id(0), n, hidden, BLOCK)
    gate = tl.load(gate_up_ptr + gate_offset, mask=mask).to(tl.float32)
    up = tl.load(gate_up_ptr + up_offset, mask=mask).to(tl.float32)
    dout = tl.load(dout_ptr + index, mask=mask).to(tl.float32)
    sigmoid = tl.sigmoid(gate)
    dgate = dout * up * sigmoid * (1.0 + gate * (1.0 - sigmoid))  # d SiLU(g) / dg = s (1 + g (1 - s))
    dup = dout * gate * sigmoid
    tl.store(dgate_up_ptr + gate_offset, dgate.to(dgate_up_ptr.dtype.element_ty), mask=mask)
    tl.store(dgate_up_ptr + up_offset, dup.to(dgate_up_ptr.dtype.element_ty), mask=mask)


class SwiGLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate_up):
        hidden = gate_up.shape[-1] // 2
        out = gate_up.new_empty(*gate_up.shape[:-1], hidden)
        n = out.numel()
        _forward_kernel[(triton.cdiv(n, BLOCK),)](gate_up, out, n, hidden, BLOCK=BLOCK)
        ctx.save_for_backward(gate_up)
        return out

    @staticmethod
    def backward(ctx, dout):
        (gate_up,) = ctx.saved_tensors
        dgate_up = torch.empty_like(gate_up)
        n = dout.numel()
        _backward_kernel[(triton.cdiv(n, BLOCK),)](
            gate_up, dout.contiguous(), dgate_up, n, gate_up.shape[-1] // 2, BLOCK=BLOCK
        )
        return dgate_up


def swiglu(gate_up: Tensor) -> Tensor:
    """Triton SwiGLU gating, same contract as `reference.swiglu`: gate_up `[..., 2h]` (gate, then up) -> `[..., h]`."""
    if gate_up.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"swiglu: Triton kernels take float32, bfloat16 or float16 inputs, got {gate_up.dtype}; "
                         "use backend='reference' for other dtypes")
    if gate_up.shape[-1] % 2:
        raise ValueError(f"swiglu: the last dim holds gate and up, so it must be even; got shape {tuple(gate_up.shape)}")
    return SwiGLUFunction.apply(gate_up.contiguous())
