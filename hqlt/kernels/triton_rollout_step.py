"""Fused rollout step of Synchronous HQLT in Triton: one launch per layer for all envs (same contract
as `rollout_step.synchronous_hqlt_step`, state buffers updated in place).

One program per (env, head): clear the memories on a reset, write (k, v) to the ring slot, apply
the delta update to the fp32 fast weights and read them, attend over the ring block by block with
an online softmax (RoPE by ring distance: the keys are rotated by minus their distance, which equals
rotating the query too; the window attention's RoPE on the two halves of the head), and mix both
reads with the gate.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from hqlt.kernels.rollout_step import check_step_inputs
from hqlt.kernels.triton_delta_rule import block_size, check_inputs, feature_map
from hqlt.kernels.triton_window_attention import check_window_inputs, rope, rope_tables, rows_at

def step_launch(head_dim: int) -> tuple[int, int]:
    """(ring slots per block, warps) of the step kernel for `head_dim`. One program holds a head's
    [d, d] fp32 fast weights: at d <= 64 two warps and 8-slot ring blocks were fastest on an H200 (one
    layer, 1024 envs, 4 heads, d=64, 64-slot ring: 95 us, against 103 us with 4 warps and 16 slots,
    128 with 4 warps and 8 slots and 150-196 with 8 warps); larger heads keep 4 warps and 16 slots,
    so that the fast weights stay in registers."""
    return (8, 2) if block_size(head_dim) <= 64 else (16, 4)


@triton.jit
def _step_kernel(
    q_ptr, k_ptr, v_ptr, beta_ptr, gate_ptr, resets_ptr, fw_ptr, kv_keys_ptr, kv_values_ptr, kv_valid_ptr,
    kv_write_ptr, cos_ptr, sin_ptr, o_ptr,
    H, S, window, scale,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_S: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    b, h = pid // H, pid % H
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < D
    token = pid * D + cols
    q = tl.load(q_ptr + token, mask=col_ok, other=0.0).to(tl.float32)
    k = tl.load(k_ptr + token, mask=col_ok, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + token, mask=col_ok, other=0.0).to(tl.float32)
    gate = tl.load(gate_ptr + token, mask=col_ok, other=0.0).to(tl.float32)
    beta = tl.load(beta_ptr + pid).to(tl.float32)
    reset = tl.load(resets_ptr + b) != 0
    write = tl.load(kv_write_ptr + b)

    # Fast-weight memory: write (delta rule), then read.
    fw_offsets = pid * D * D + cols[:, None] * D + cols[None, :]
    fw_mask = col_ok[:, None] & col_ok[None, :]
    fw = tl.load(fw_ptr + fw_offsets, mask=fw_mask, other=0.0)
    fw = tl.where(reset, 0.0, fw)
    kn = tl.sum(feature_map(k[None, :]), axis=0)
    qn = tl.sum(feature_map(q[None, :]), axis=0)
    prediction = tl.sum(kn[:, None] * fw, axis=0)
    fw += kn[:, None] * (beta * (v - prediction))[None, :]
    tl.store(fw_ptr + fw_offsets, fw, mask=fw_mask)
    o_fw = tl.sum(qn[:, None] * fw, axis=0) * scale

    # KV memory: the ring with this step's pair in slot `write`, BLOCK_S slots at a time.
    tl.store(kv_keys_ptr + ((b * S + write) * H + h) * D + cols, k, mask=col_ok)
    tl.store(kv_values_ptr + ((b * S + write) * H + h) * D + cols, v, mask=col_ok)
    m_i = tl.full([], float("-inf"), tl.float32)
    l_i = tl.zeros([], tl.float32)
    acc = tl.zeros([BLOCK_D], tl.float32)
    # RoPE takes the query and this step's key as their two halves [BLOCK_H].
    half = tl.arange(0, BLOCK_H)
    half_ok = half < D // 2
    q1 = tl.load(q_ptr + pid * D + half, mask=half_ok, other=0.0).to(tl.float32)
    q2 = tl.load(q_ptr + pid * D + D // 2 + half, mask=half_ok, other=0.0).to(tl.float32)
    k1 = tl.load(k_ptr + pid * D + half, mask=half_ok, other=0.0).to(tl.float32)
    k2 = tl.load(k_ptr + pid * D + D // 2 + half, mask=half_ok, other=0.0).to(tl.float32)
    for start in range(0, S, BLOCK_S):
        slots = start + tl.arange(0, BLOCK_S)
        current = (slots == write)[:, None]
        keys1 = tl.where(current, k1[None, :], rows_at(kv_keys_ptr, b, slots, h, S, H, D, D // 2, BLOCK_H))
        keys2 = tl.where(current, k2[None, :], rows_at(kv_keys_ptr + D // 2, b, slots, h, S, H, D, D // 2, BLOCK_H))
        values = tl.where(current, v[None, :], rows_at(kv_values_ptr, b, slots, h, S, H, D, D, BLOCK_D))
        distance = (write - slots + S) % S
        valid = (tl.load(kv_valid_ptr + b * S + slots, mask=slots < S, other=0) != 0) & ~reset
        allowed = (valid | (slots == write)) & (distance < window) & (slots < S)
        # RoPE by relative position: each key rotated by minus its distance (the inverse rotation by it).
        keys1, keys2 = rope(keys1, keys2, distance, slots < S, cos_ptr, sin_ptr, D, True)
        scores = tl.sum(q1[None, :] * keys1 + q2[None, :] * keys2, axis=1)
        scores = tl.where(allowed, scores * scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no allowed slot yet
        probs = tl.exp(scores - m_safe)
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(probs, axis=0)
        acc = acc * alpha + tl.sum(probs[:, None] * values, axis=0)
        m_i = m_new
    o_kv = acc / l_i  # slot `write` is always allowed, so l_i > 0
    tl.store(o_ptr + token, gate * o_fw + (1.0 - gate) * o_kv, mask=col_ok)


def synchronous_hqlt_step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    gate: Tensor,
    resets: Tensor,
    fw_state: Tensor,
    kv_keys: Tensor,
    kv_values: Tensor,
    kv_valid: Tensor,
    kv_write: Tensor,
    window: int,
    scale: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Triton rollout step; shapes and in-place updates as in `rollout_step.synchronous_hqlt_step`.
    Needs contiguous fp32 `fw_state` and contiguous ring buffers (they are updated in place)."""
    check_step_inputs(q, kv_keys, kv_write, window)
    check_inputs("synchronous_hqlt_step", q.dtype, (q.shape[-1],))
    check_window_inputs("synchronous_hqlt_step", q, v, kv_keys, window)
    if fw_state.dtype != torch.float32 or not (fw_state.is_contiguous() and kv_keys.is_contiguous()
                                               and kv_values.is_contiguous()):
        raise ValueError("synchronous_hqlt_step updates its state in place: fw_state must be contiguous fp32 and "
                         "kv_keys/kv_values contiguous")
    batch, _, heads, dim = q.shape
    scale = dim**-0.5 if scale is None else scale
    o = torch.empty_like(v)
    ring_block, num_warps = step_launch(dim)
    _step_kernel[(batch * heads,)](
        q.contiguous(), k.contiguous(), v.contiguous(), beta.contiguous(), gate.contiguous(), resets.contiguous(),
        fw_state, kv_keys, kv_values, kv_valid.contiguous(), kv_write.contiguous(), *rope_tables(kv_keys.shape[1], dim, q.device),
        o, heads, kv_keys.shape[1], window, scale,
        D=dim, BLOCK_D=block_size(dim), BLOCK_H=block_size(dim // 2), BLOCK_S=ring_block,
        num_warps=num_warps, num_stages=1,  # a short walk gains nothing from prefetching
    )
    return o, fw_state
