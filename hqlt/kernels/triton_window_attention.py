"""Sliding-window softmax attention in Triton with the same-episode mask, the previous segment's
cached keys/values and RoPE by relative distance (same contract as `reference.window_attention`).

Keys live in one concatenated position space of P = S + T rows: cache entries at 0..S-1, the
segment's tokens at S..S+T-1; the kernels read each row from the cache or the segment tensor (no
concatenated copy). Queries and keys are rotated by RoPE at their positions as the kernels load
them, in fp32 (relative distances are what matters), and multiplied with fp32 accumulation. Query t
(position S+t) sees key p when 0 <= S+t-p < window and both have the same key episode: -1 (never
matched) for invalid cache entries, 0 for valid ones, and the cumulative count of resets for
segment rows. The forward pass is flash-attention style (online softmax over key blocks) and keeps
the log-sum-exp per query; the backward pass has one kernel for dq (per query block) and one for
dk, dv (per key block), both recomputing the probabilities from the log-sum-exp and rotating their
gradients back before storing them. Forward and backward are three launches in all.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from hqlt.kernels import reference
from hqlt.kernels.triton_delta_rule import block_size, check_inputs, dot_precision

# Most query/key rows x padded head dim per tile (at head dim 128, [64, 128] tiles with their
# pipelined copies do not fit an H100's 227 KB of shared memory).
MAX_WINDOW_TILE = 64 * 64


@dataclass(frozen=True)
class WindowConfig:
    """How the window-attention kernels launch: rows per query block and per key block, pipelining."""

    block: int
    num_stages: int = 1
    num_warps: int = 4


def window_config(head_dim: int) -> WindowConfig:
    """Launch of the window-attention kernels for `head_dim`: [64, d] blocks, unpipelined (a query
    block walks two or three key blocks; on an H200 this was the fastest fused HQLT op of 8 launch
    configurations at 256 x 128 with d=64 and d=32). `tests/test_triton_resources.py` compiles every
    resulting launch for sm_90 and checks its shared memory."""
    return WindowConfig(block=min(64, MAX_WINDOW_TILE // block_size(head_dim)))


@functools.lru_cache(maxsize=None)
def inverse_frequencies(head_dim: int, device: torch.device) -> Tensor:
    """RoPE frequencies `[d/2]`, computed exactly as the reference does (cached: no launches per call)."""
    half = head_dim // 2
    return reference.ROPE_BASE ** (-torch.arange(half, device=device, dtype=torch.float32) / half)


# ----------------------------------------------------------------------------- Triton helpers


@triton.jit
def concat_rows(cache_ptr, segment_ptr, b, p, h, S, T, H, D: tl.constexpr, cols):
    """Rows p of cat([cache `[B, S, H, D]`, segment `[B, T, H, D]`], dim=1) at columns `cols`, fp32
    `[R, BLOCK_D]` (0 outside)."""
    in_cache = (p < S)[:, None]
    cache_offsets = ((b * S + p[:, None]) * H + h) * D + cols[None, :]
    segment_offsets = ((b * T + (p - S)[:, None]) * H + h) * D + cols[None, :]
    mask = ((p >= 0) & (p < S + T))[:, None] & (cols < D)[None, :]
    ptrs = tl.where(in_cache, cache_ptr + cache_offsets, segment_ptr + segment_offsets)
    return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def rope_columns(inv_freq_ptr, D: tl.constexpr, BLOCK_D: tl.constexpr):
    """The rotate-half frame: columns, each column's partner (the other half), the sign the partner
    takes in RoPE and the column's frequency."""
    cols = tl.arange(0, BLOCK_D)
    half = D // 2
    partner = tl.where(cols < half, cols + half, cols - half)
    sign = tl.where(cols < half, -1.0, 1.0)
    inv_freq = tl.load(inv_freq_ptr + cols % half, mask=cols < D, other=0.0)
    return cols, partner, sign, inv_freq


@triton.jit
def rope(x, x_partner, p, sign, inv_freq, INVERSE: tl.constexpr):
    """RoPE (or with INVERSE its inverse) of rows x `[R, BLOCK_D]` at positions p `[R]`, given the rows
    at their partner columns."""
    angles = p.to(tl.float32)[:, None] * inv_freq[None, :]
    if INVERSE:
        sign = -sign
    return x * tl.cos(angles) + sign[None, :] * x_partner * tl.sin(angles)


@triton.jit
def rotated_rows(cache_ptr, segment_ptr, b, p, h, S, T, H, inv_freq_ptr, D: tl.constexpr, BLOCK_D: tl.constexpr):
    """Rows p of cat([cache, segment]) (as `concat_rows`) rotated by RoPE at positions p, fp32."""
    cols, partner, sign, inv_freq = rope_columns(inv_freq_ptr, D, BLOCK_D)
    x = concat_rows(cache_ptr, segment_ptr, b, p, h, S, T, H, D, cols)
    x_partner = concat_rows(cache_ptr, segment_ptr, b, p, h, S, T, H, D, partner)
    return rope(x, x_partner, p, sign, inv_freq, False)


@triton.jit
def rotated_back(x, p, inv_freq_ptr, D: tl.constexpr, BLOCK_D: tl.constexpr):
    """The inverse RoPE of fp32 rows x `[R, BLOCK_D]` held in registers, at positions p: their partner
    columns come from a product with the swap permutation, exact in IEEE fp32 (one nonzero term)."""
    cols, partner, sign, inv_freq = rope_columns(inv_freq_ptr, D, BLOCK_D)
    swap = tl.where(cols[:, None] == partner[None, :], 1.0, 0.0)
    return rope(x, tl.dot(x, swap, input_precision="ieee"), p, sign, inv_freq, True)


@triton.jit
def key_episodes(cache_valid_ptr, episode_ptr, b, p, S, T):
    """Episode of key positions p `[R]`: -1 for invalid cache entries, 0 for valid ones, the segment's
    cumulative resets for segment rows and -3 beyond the last row (never matched)."""
    cached = tl.load(cache_valid_ptr + b * S + p, mask=(p >= 0) & (p < S), other=0) != 0
    segment = tl.load(episode_ptr + b * T + (p - S), mask=(p >= S) & (p < S + T), other=-3)
    return tl.where(p < S, tl.where(cached, 0, -1), segment)


@triton.jit
def rows_at(ptr, b, rows, h, N, H, D: tl.constexpr, BLOCK_D: tl.constexpr):
    """Rows `rows` of a `[B, N, H, D]` tensor as fp32 `[R, BLOCK_D]` (0 outside)."""
    cols = tl.arange(0, BLOCK_D)
    mask = ((rows >= 0) & (rows < N))[:, None] & (cols[None, :] < D)
    return tl.load(ptr + ((b * N + rows[:, None]) * H + h) * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def attend_mask(q_pos, q_episode, k_pos, k_episode, window):
    """Which (query, key) pairs attend; arguments already broadcast against each other."""
    distance = q_pos - k_pos
    return (distance >= 0) & (distance < window) & (q_episode == k_episode)


@triton.jit
def _forward_kernel(
    q_ptr, k_ptr, v_ptr, cache_k_ptr, cache_v_ptr, cache_valid_ptr, episode_ptr, inv_freq_ptr,
    gate_ptr, o_fw_ptr, o_ptr, o_kv_ptr, lse_ptr,
    T, S, H, window, scale,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_GATE: tl.constexpr, PREC: tl.constexpr,
):
    """Output and log-sum-exp of one query block. With HAS_GATE (Synchronous HQLT) the output is
    gate * o_FW + (1 - gate) * o_KV and o_KV is kept (fp32) for the backward pass."""
    pid = tl.program_id(1).to(tl.int64)
    b, h = pid // H, pid % H
    P = S + T
    first = tl.program_id(0) * BLOCK_M
    t = first + tl.arange(0, BLOCK_M)
    q_pos = S + t
    q_episode = tl.load(episode_ptr + b * T + t, mask=t < T, other=-2)
    qr = rotated_rows(q_ptr, q_ptr, b, q_pos, h, S, T, H, inv_freq_ptr, D, BLOCK_D)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    lo = tl.maximum(S + first - window + 1, 0)
    hi = tl.minimum(S + first + BLOCK_M, P)
    for start in range(lo, hi, BLOCK_N):
        p = start + tl.arange(0, BLOCK_N)
        kr = rotated_rows(cache_k_ptr, k_ptr, b, p, h, S, T, H, inv_freq_ptr, D, BLOCK_D)
        scores = tl.dot(qr, tl.trans(kr), input_precision=PREC) * scale
        allowed = attend_mask(q_pos[:, None], q_episode[:, None], p[None, :],
                              key_episodes(cache_valid_ptr, episode_ptr, b, p, S, T)[None, :], window)
        scores = tl.where(allowed, scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing allowed yet
        probs = tl.exp(scores - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(probs, axis=1)
        value = concat_rows(cache_v_ptr, v_ptr, b, p, h, S, T, H, D, tl.arange(0, BLOCK_D))
        acc = acc * alpha[:, None] + tl.dot(probs, value, input_precision=PREC)
        m_i = m_new
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    o = acc / l_safe[:, None]
    cols = tl.arange(0, BLOCK_D)
    offsets = ((b * T + t[:, None]) * H + h) * D + cols[None, :]
    mask = (t[:, None] < T) & (cols[None, :] < D)
    if HAS_GATE:
        tl.store(o_kv_ptr + offsets, o, mask=mask)
        gate = tl.load(gate_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        o = gate * tl.load(o_fw_ptr + offsets, mask=mask, other=0.0) + (1.0 - gate) * o
    tl.store(o_ptr + offsets, o, mask=mask)
    tl.store(lse_ptr + pid * T + t, tl.where(m_i == float("-inf"), 0.0, m_i) + tl.log(l_safe), mask=t < T)


@triton.jit
def attention_gradient(do_ptr, gate_ptr, b, t, h, T, H, D: tl.constexpr, BLOCK_D: tl.constexpr,
                       HAS_GATE: tl.constexpr):
    """dO of the attention output at rows t (fp32): with HAS_GATE the output was mixed as (1 - gate) * o."""
    do = rows_at(do_ptr, b, t, h, T, H, D, BLOCK_D)
    if HAS_GATE:
        do = do * (1.0 - rows_at(gate_ptr, b, t, h, T, H, D, BLOCK_D))
    return do


@triton.jit
def dq_kernel(
    q_ptr, k_ptr, v_ptr, cache_k_ptr, cache_v_ptr, cache_valid_ptr, episode_ptr, inv_freq_ptr,
    o_ptr, lse_ptr, do_ptr, gate_ptr, dq_partial_ptr, dq_ptr, delta_ptr,
    T, S, H, window, scale,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_GATE: tl.constexpr, PREC: tl.constexpr,
):
    """dq of one query block (plus the fast-weight part `dq_partial` with HAS_GATE); also writes
    delta = rowsum(dO * O) for `dkdv_kernel`."""
    pid = tl.program_id(1).to(tl.int64)
    b, h = pid // H, pid % H
    P = S + T
    first = tl.program_id(0) * BLOCK_M
    t = first + tl.arange(0, BLOCK_M)
    q_pos = S + t
    qr = rotated_rows(q_ptr, q_ptr, b, q_pos, h, S, T, H, inv_freq_ptr, D, BLOCK_D)
    do = attention_gradient(do_ptr, gate_ptr, b, t, h, T, H, D, BLOCK_D, HAS_GATE)
    delta = tl.sum(do * rows_at(o_ptr, b, t, h, T, H, D, BLOCK_D), axis=1)
    tl.store(delta_ptr + pid * T + t, delta, mask=t < T)
    lse = tl.load(lse_ptr + pid * T + t, mask=t < T, other=0.0)
    q_episode = tl.load(episode_ptr + b * T + t, mask=t < T, other=-2)
    dqr = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    lo = tl.maximum(S + first - window + 1, 0)
    hi = tl.minimum(S + first + BLOCK_M, P)
    for start in range(lo, hi, BLOCK_N):
        p = start + tl.arange(0, BLOCK_N)
        kr = rotated_rows(cache_k_ptr, k_ptr, b, p, h, S, T, H, inv_freq_ptr, D, BLOCK_D)
        value = concat_rows(cache_v_ptr, v_ptr, b, p, h, S, T, H, D, tl.arange(0, BLOCK_D))
        scores = tl.dot(qr, tl.trans(kr), input_precision=PREC) * scale
        allowed = attend_mask(q_pos[:, None], q_episode[:, None], p[None, :],
                              key_episodes(cache_valid_ptr, episode_ptr, b, p, S, T)[None, :], window)
        probs = tl.where(allowed, tl.exp(scores - lse[:, None]), 0.0)
        dprobs = tl.dot(do, tl.trans(value), input_precision=PREC)
        dqr += tl.dot(probs * (dprobs - delta[:, None]), kr, input_precision=PREC)
    dq = rotated_back(dqr * scale, q_pos, inv_freq_ptr, D, BLOCK_D)
    cols = tl.arange(0, BLOCK_D)
    offsets = ((b * T + t[:, None]) * H + h) * D + cols[None, :]
    mask = (t[:, None] < T) & (cols[None, :] < D)
    if HAS_GATE:
        dq += tl.load(dq_partial_ptr + offsets, mask=mask, other=0.0)
    tl.store(dq_ptr + offsets, dq, mask=mask)


@triton.jit
def dkdv_kernel(
    q_ptr, k_ptr, v_ptr, cache_k_ptr, cache_v_ptr, cache_valid_ptr, episode_ptr, inv_freq_ptr,
    lse_ptr, delta_ptr, do_ptr, gate_ptr, dk_partial_ptr, dv_partial_ptr,
    dk_ptr, dv_ptr, dcache_k_ptr, dcache_v_ptr,
    T, S, H, window, scale,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_GATE: tl.constexpr, PREC: tl.constexpr,
):
    """dk and dv of one block of concatenated key positions: cache rows to dcache_k, dcache_v, segment
    rows to dk, dv (plus the fast-weight parts `dk_partial`, `dv_partial` with HAS_GATE)."""
    pid = tl.program_id(1).to(tl.int64)
    b, h = pid // H, pid % H
    P = S + T
    first = tl.program_id(0) * BLOCK_N
    p = first + tl.arange(0, BLOCK_N)
    kr = rotated_rows(cache_k_ptr, k_ptr, b, p, h, S, T, H, inv_freq_ptr, D, BLOCK_D)
    value = concat_rows(cache_v_ptr, v_ptr, b, p, h, S, T, H, D, tl.arange(0, BLOCK_D))
    k_episode = key_episodes(cache_valid_ptr, episode_ptr, b, p, S, T)
    dkr = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    lo = tl.maximum(first - S, 0)
    hi = tl.minimum(first + BLOCK_N - 1 + window - S, T)
    for start in range(lo, hi, BLOCK_M):
        t = start + tl.arange(0, BLOCK_M)
        q_pos = S + t
        qr = rotated_rows(q_ptr, q_ptr, b, q_pos, h, S, T, H, inv_freq_ptr, D, BLOCK_D)
        do = attention_gradient(do_ptr, gate_ptr, b, t, h, T, H, D, BLOCK_D, HAS_GATE)
        lse = tl.load(lse_ptr + pid * T + t, mask=t < T, other=0.0)
        delta = tl.load(delta_ptr + pid * T + t, mask=t < T, other=0.0)
        q_episode = tl.load(episode_ptr + b * T + t, mask=t < T, other=-2)
        scores_t = tl.dot(kr, tl.trans(qr), input_precision=PREC) * scale  # [keys, queries]
        allowed = attend_mask(q_pos[None, :], q_episode[None, :], p[:, None], k_episode[:, None], window)
        probs_t = tl.where(allowed, tl.exp(scores_t - lse[None, :]), 0.0)
        dv += tl.dot(probs_t, do, input_precision=PREC)
        dprobs_t = tl.dot(value, tl.trans(do), input_precision=PREC)
        dkr += tl.dot(probs_t * (dprobs_t - delta[None, :]), qr, input_precision=PREC)
    dk = rotated_back(dkr * scale, p, inv_freq_ptr, D, BLOCK_D)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols[None, :] < D
    in_cache = (p < S)[:, None] & col_ok
    in_segment = ((p >= S) & (p < P))[:, None] & col_ok
    cache_offsets = ((b * S + p[:, None]) * H + h) * D + cols[None, :]
    segment_offsets = ((b * T + (p - S)[:, None]) * H + h) * D + cols[None, :]
    if HAS_GATE:
        dk += tl.load(dk_partial_ptr + segment_offsets, mask=in_segment, other=0.0)
        dv += tl.load(dv_partial_ptr + segment_offsets, mask=in_segment, other=0.0)
    tl.store(dk_ptr + segment_offsets, dk, mask=in_segment)
    tl.store(dv_ptr + segment_offsets, dv, mask=in_segment)
    tl.store(dcache_k_ptr + cache_offsets, dk, mask=in_cache)
    tl.store(dcache_v_ptr + cache_offsets, dv, mask=in_cache)


# ----------------------------------------------------------------------------- launchers


class Inputs(NamedTuple):
    """What the attention kernels read (contiguous): q, k, v `[B, T, H, d]`, cache_k, cache_v
    `[B, S, H, d]` (oldest first), cache_valid bool `[B, S]` and the segment's episodes, the
    cumulative count of resets `[B, T]` int32."""

    q: Tensor
    k: Tensor
    v: Tensor
    cache_k: Tensor
    cache_v: Tensor
    cache_valid: Tensor
    episode: Tensor


def launch_arguments(inputs: Inputs) -> tuple:
    """The leading kernel arguments every attention kernel takes (the inputs and RoPE frequencies)."""
    return (*inputs, inverse_frequencies(inputs.q.shape[-1], inputs.q.device))


def forward(inputs: Inputs, window: int, scale: float, gate: Tensor | None = None,
            o_fw: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Launch the forward kernel. Returns o `[B, T, H, d]` (dtype of v), the attention output kept for
    the backward (o itself, or fp32 o_KV when `gate` and `o_fw` mix in the fast-weight output) and
    the log-sum-exp `[B, H, T]`."""
    q, v = inputs.q, inputs.v
    batch, steps, heads, dim = q.shape
    config = window_config(dim)
    o = torch.empty_like(v)
    o_kv = torch.empty(q.shape, device=q.device, dtype=torch.float32) if gate is not None else o
    lse = torch.empty(batch, heads, steps, device=q.device, dtype=torch.float32)
    _forward_kernel[(triton.cdiv(steps, config.block), batch * heads)](
        *launch_arguments(inputs), o if gate is None else gate, o if o_fw is None else o_fw, o, o_kv, lse,
        steps, inputs.cache_k.shape[1], heads, window, scale,
        D=dim, BLOCK_M=config.block, BLOCK_N=config.block, BLOCK_D=block_size(dim), HAS_GATE=gate is not None,
        PREC=dot_precision(v.dtype), num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return o, o_kv, lse


def backward(inputs: Inputs, o: Tensor, lse: Tensor, do: Tensor, window: int, scale: float,
             gate: Tensor | None = None, partial: tuple[Tensor, Tensor, Tensor] | None = None) -> tuple[Tensor, ...]:
    """dq, dk, dv `[B, T, H, d]` and dcache_k, dcache_v `[B, S, H, d]` (input dtype) of the window
    attention whose output o and log-sum-exp `[B, H, T]` the forward pass kept. For Synchronous HQLT,
    `gate` scales dO by (1 - gate) and `partial` = (dq, dk, dv) fp32 of the fast-weight memory are added in."""
    q, cache_k = inputs.q, inputs.cache_k
    batch, steps, heads, dim = q.shape
    cached = cache_k.shape[1]
    config = window_config(dim)
    has_gate = gate is not None
    dq_partial, dk_partial, dv_partial = partial if has_gate else (do, do, do)
    common = dict(D=dim, BLOCK_M=config.block, BLOCK_N=config.block, BLOCK_D=block_size(dim), HAS_GATE=has_gate,
                  PREC=dot_precision(q.dtype), num_warps=config.num_warps, num_stages=config.num_stages)
    gate_arg = gate if has_gate else do
    dq, dk, dv = torch.empty_like(q), torch.empty_like(inputs.k), torch.empty_like(inputs.v)
    dcache_k, dcache_v = torch.empty_like(cache_k), torch.empty_like(inputs.cache_v)
    delta = torch.empty_like(lse)
    dq_kernel[(triton.cdiv(steps, config.block), batch * heads)](
        *launch_arguments(inputs), o, lse, do, gate_arg, dq_partial, dq, delta,
        steps, cached, heads, window, scale, **common,
    )
    dkdv_kernel[(triton.cdiv(cached + steps, config.block), batch * heads)](
        *launch_arguments(inputs), lse, delta, do, gate_arg, dk_partial, dv_partial, dk, dv, dcache_k, dcache_v,
        steps, cached, heads, window, scale, **common,
    )
    return dq, dk, dv, dcache_k, dcache_v


def episodes(resets: Tensor) -> Tensor:
    """The segment's key episodes: the cumulative count of resets `[B, T]` int32 of bool resets `[B, T]`."""
    return torch.cumsum(resets, dim=1, dtype=torch.int32)


class WindowAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, resets, cache_k, cache_v, cache_valid, window, scale):
        inputs = Inputs(q, k, v, cache_k, cache_v, cache_valid, episodes(resets))
        o, _, lse = forward(inputs, window, scale)
        ctx.save_for_backward(o, lse, *inputs)
        ctx.window, ctx.scale = window, scale
        return o

    @staticmethod
    def backward(ctx, do):
        o, lse, *inputs = ctx.saved_tensors
        dq, dk, dv, dcache_k, dcache_v = backward(Inputs(*inputs), o, lse, do.contiguous(), ctx.window, ctx.scale)
        return dq, dk, dv, None, dcache_k, dcache_v, None, None, None


def check_window_inputs(op: str, q: Tensor, v: Tensor, cache_k: Tensor, window: int) -> None:
    check_inputs(op, q.dtype, (q.shape[-1],))
    if q.shape[-1] % 2 or v.shape[-1] != q.shape[-1]:
        raise ValueError(f"{op}: RoPE needs an even head dim shared by q, k and v; got q {q.shape[-1]}, v {v.shape[-1]}")
    if window < 1:
        raise ValueError(f"{op}: window must be >= 1, got {window}")
    if cache_k.dtype != q.dtype:
        raise ValueError(f"{op}: cache_k/cache_v dtype {cache_k.dtype} must match q's {q.dtype}")


def window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    resets: Tensor,
    cache_k: Tensor,
    cache_v: Tensor,
    cache_valid: Tensor,
    window: int,
    scale: float | None = None,
) -> Tensor:
    """Triton sliding-window attention, same contract as `reference.window_attention`.

    q, k, v: `[B, T, H, d]` (k before RoPE); resets: bool `[B, T]`; cache_k, cache_v: `[B, S, H, d]`
    oldest first; cache_valid: bool `[B, S]`. Returns o `[B, T, H, d]` (dtype of v).
    """
    check_window_inputs("window_attention", q, v, cache_k, window)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return WindowAttentionFunction.apply(
        q.contiguous(), k.contiguous(), v.contiguous(), resets.contiguous(), cache_k.contiguous(),
        cache_v.contiguous(), cache_valid.contiguous(), window, scale,
    )
