"""Fused Synchronous HQLT core op in Triton (same contract as `reference.synchronous_hqlt`).

Forward: one program per (batch row, head) walks the chunks; per chunk it loads q, k, v, beta, gate
and resets once, advances the delta-rule state (fast-weight memory), computes the sliding-window
attention of the chunk's queries (KV memory; keys of earlier chunks come back from cache/L2) and
writes o = gate * o_FW + (1 - gate) * o_KV. Backward: the delta-rule backward kernel, fed
gate * dO, also writes dgate = dO * (o_FW - o_KV); the window-attention kernels, fed (1 - gate) * dO,
add their dq, dk, dv to the fast-weight ones, so each gradient is written once in the input dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from hqlt.kernels import triton_delta_rule, triton_window_attention
from hqlt.kernels.triton_delta_rule import block_size, delta_chunk_forward, dot_precision, token_offsets
from hqlt.kernels.triton_window_attention import episode_ids, inverse_frequencies, window_rows


@triton.jit
def _forward_kernel(
    q_ptr, k_ptr, v_ptr, beta_ptr, gate_ptr, resets_ptr, state_ptr, cache_k_ptr, cache_v_ptr, cache_valid_ptr,
    episode_ptr, inv_freq_ptr, o_ptr, o_kv_ptr, lse_ptr, final_ptr, chunk_states_ptr,
    T, S, H, window, scale,
    D: tl.constexpr, CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, SAVE_FOR_BACKWARD: tl.constexpr,
    PREC: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    b, h = pid // H, pid % H
    rows = tl.arange(0, CHUNK)
    cols = tl.arange(0, BLOCK_D)
    state_offsets = cols[:, None] * D + cols[None, :]
    state_mask = (cols[:, None] < D) & (cols[None, :] < D)
    state = tl.load(state_ptr + pid * D * D + state_offsets, mask=state_mask, other=0.0)
    num_chunks = tl.cdiv(T, CHUNK)
    for n in range(num_chunks):
        t = n * CHUNK + rows
        valid = t < T
        mask = valid[:, None] & (cols[None, :] < D)
        offsets = token_offsets(b, t, h, T, H, D, cols)
        q = tl.load(q_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        k = tl.load(k_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        gate = tl.load(gate_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        beta = tl.load(beta_ptr + (b * T + t) * H + h, mask=valid, other=0.0).to(tl.float32)
        resets = tl.load(resets_ptr + b * T + t, mask=valid, other=0).to(tl.int32)
        if SAVE_FOR_BACKWARD:
            tl.store(chunk_states_ptr + (pid * num_chunks + n) * D * D + state_offsets, state, mask=state_mask)
        o_fw, state = delta_chunk_forward(q, k, v, beta, resets, state, scale, CHUNK, PREC)
        o_kv, lse = window_rows(q, t, n * CHUNK, b, h, k_ptr, v_ptr, cache_k_ptr, cache_v_ptr, cache_valid_ptr,
                                episode_ptr, inv_freq_ptr, T, S, H, window, scale, D, CHUNK, CHUNK, BLOCK_D, PREC)
        tl.store(o_ptr + offsets, gate * o_fw + (1.0 - gate) * o_kv, mask=mask)
        if SAVE_FOR_BACKWARD:
            tl.store(o_kv_ptr + offsets, o_kv, mask=mask)
            tl.store(lse_ptr + pid * T + t, lse, mask=valid)
    tl.store(final_ptr + pid * D * D + state_offsets, state, mask=state_mask)


class SynchronousHQLTFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, beta, gate, resets, fw_state, cache_k, cache_v, cache_valid, window, scale, config):
        batch, steps, heads, dim = q.shape
        save = any(ctx.needs_input_grad)
        episode = episode_ids(resets)
        o = torch.empty_like(v)
        final = torch.empty_like(fw_state)
        num_chunks = triton.cdiv(steps, config.chunk)
        o_kv = torch.empty(q.shape, device=q.device, dtype=torch.float32) if save else o
        lse = torch.empty(batch, heads, steps, device=q.device, dtype=torch.float32) if save else final
        chunk_states = fw_state.new_empty(batch, heads, num_chunks, dim, dim) if save else final
        _forward_kernel[(batch * heads,)](
            q, k, v, beta, gate, resets, fw_state, cache_k, cache_v, cache_valid, episode,
            inverse_frequencies(dim, q.device), o, o_kv, lse, final, chunk_states,
            steps, cache_k.shape[1], heads, window, scale,
            D=dim, CHUNK=config.chunk, BLOCK_D=block_size(dim), SAVE_FOR_BACKWARD=save, PREC=dot_precision(q.dtype),
            num_warps=config.num_warps, num_stages=config.num_stages,
        )
        ctx.save_for_backward(q, k, v, beta, gate, resets, cache_k, cache_v, cache_valid, episode, o_kv, lse,
                              chunk_states)
        ctx.window, ctx.scale, ctx.config = window, scale, config
        return o, final

    @staticmethod
    def backward(ctx, do, dfinal):
        q, k, v, beta, gate, resets, cache_k, cache_v, cache_valid, episode, o_kv, lse, chunk_states = ctx.saved_tensors
        do = do.contiguous()
        dq_fw, dk_fw, dv_fw, dbeta, dstate, dgate = triton_delta_rule.backward(
            q, k, v, beta, resets, chunk_states, do, dfinal.contiguous(), ctx.scale, ctx.config,
            gate=gate, o_kv=o_kv, grad_dtype=torch.float32,
        )
        dq, dk, dv, dcache_k, dcache_v = triton_window_attention.backward(
            q, k, v, cache_k, cache_v, cache_valid, episode, o_kv, lse, do, ctx.window, ctx.scale,
            gate=gate, partial=(dq_fw, dk_fw, dv_fw),
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
