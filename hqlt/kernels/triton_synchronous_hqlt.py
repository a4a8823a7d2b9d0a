"""Fused Synchronous HQLT core op in Triton (same contract as `reference.synchronous_hqlt`).

One autograd op over both memories. Forward: the delta-rule kernels produce the fast-weight output
(fp32) and final state; the window-attention forward kernel computes the KV-memory output of each
query block and writes the mix o = gate * o_FW + (1 - gate) * o_KV directly. Backward: the
delta-rule kernels, fed gate * dO, also write dgate = dO * (o_FW - o_KV); the window-attention
kernels, fed (1 - gate) * dO, add their dq, dk, dv to the fast-weight ones, so each gradient is
written once in the input dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hqlt.kernels import triton_delta_rule, triton_window_attention
from hqlt.kernels.triton_delta_rule import Saved
from hqlt.kernels.triton_window_attention import Inputs


class SynchronousHQLTFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, beta, gate, resets, fw_state, cache_k, cache_v, cache_valid, window, scale, config):
        o_fw, final, saved = triton_delta_rule.forward(q, k, v, beta, resets, fw_state, scale, config,
                                                       save_for_backward=any(ctx.needs_input_grad),
                                                       out_dtype=torch.float32)
        inputs = Inputs(q, k, v, cache_k, cache_v, cache_valid, triton_window_attention.episodes(resets))
        o, o_kv, lse = triton_window_attention.forward(inputs, window, scale, gate=gate, o_fw=o_fw)
        if saved is not None:
            ctx.save_for_backward(beta, gate, resets, o_kv, lse, *inputs, *saved)
        ctx.window, ctx.scale, ctx.config = window, scale, config
        return o, final

    @staticmethod
    def backward(ctx, do, dfinal):
        beta, gate, resets, o_kv, lse, *rest = ctx.saved_tensors
        split = len(Inputs._fields)
        inputs, saved = Inputs(*rest[:split]), Saved(*rest[split:])
        q, k, v = inputs.q, inputs.k, inputs.v
        do = do.contiguous()
        dq_fw, dk_fw, dv_fw, dbeta, dstate, dgate = triton_delta_rule.backward(
            q, k, v, beta, resets, saved, do, dfinal.contiguous(), ctx.scale, ctx.config, gate=gate, o_kv=o_kv,
            grad_dtype=torch.float32,
        )
        dq, dk, dv, dcache_k, dcache_v = triton_window_attention.backward(
            inputs, o_kv, lse, do, ctx.window, ctx.scale, gate=gate, partial=(dq_fw, dk_fw, dv_fw),
        )
        return dq, dk, dv, dbeta, dgate, None, dstate, dcache_k, dcache_v, None, None, None, None


def synchronous_hqlt(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    gate: Tensor,
    resets: Tensor,
    fw_state: Tensor,
    cache_k: Tensor,
    cache_v: Tensor,
    cache_valid: Tensor,
    window: int,
    scale: float | None = None,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """Fused Triton Synchronous HQLT, same contract as `reference.synchronous_hqlt`.

    q, k, v, gate: `[B, T, H, d]`; beta: `[B, T, H]`; resets: bool `[B, T]`; fw_state: `[B, H, d, d]`;
    cache_k, cache_v: `[B, S, H, d]` oldest first; cache_valid: bool `[B, S]`.
    Returns o = gate * o_FW + (1 - gate) * o_KV `[B, T, H, d]` and the final FW state (fp32).
    """
    triton_delta_rule.check_inputs("synchronous_hqlt", q.dtype, (q.shape[-1],), chunk_size)
    triton_window_attention.check_window_inputs("synchronous_hqlt", q, v, cache_k, window)
    if gate.shape != v.shape:
        raise ValueError(f"synchronous_hqlt: gate shape {tuple(gate.shape)} must equal v's {tuple(v.shape)}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return SynchronousHQLTFunction.apply(
        q.contiguous(), k.contiguous(), v.contiguous(), beta.contiguous(), gate.contiguous(), resets.contiguous(),
        fw_state.float().contiguous(), cache_k.contiguous(), cache_v.contiguous(), cache_valid.contiguous(),
        window, scale, triton_delta_rule.chunk_config(chunk_size, (q.shape[-1],), q.dtype),
    )
