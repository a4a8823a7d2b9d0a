"""Sliding-window softmax attention in Triton with the same-episode mask, the previous segment's
cached keys/values and RoPE by relative distance (same contract as `reference.window_attention`).

Keys live in one concatenated position space of P = S + T rows: cache entries at 0..S-1, the
segment's tokens at S..S+T-1; the kernels read each row from the cache or the segment tensor (no
concatenated copy). Queries and keys are rotated by RoPE at their positions as the kernels load
them, in fp32 (relative distances are what matters). RoPE works on the two halves of the head dim
as separate tiles x1, x2 `[R, d/2]` (each padded to a power of two, at least 16): rotated, they are
r1 = x1 cos - x2 sin, r2 = x2 cos + x1 sin, the scores are r1_q r1_k^T + r2_q r2_k^T and the
gradients of r1, r2 rotate back elementwise. Values, outputs and dO stay whole-row tiles `[R, d]`.
Products accumulate in fp32 (16-bit operands for 16-bit inputs, see `triton_delta_rule.dot_dtype`).
Query t (position S+t) sees key p when 0 <= S+t-p < window and both have the same key episode: -1
(never matched) for invalid cache entries, 0 for valid ones, and the cumulative count of resets for
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
from hqlt.kernels.triton_delta_rule import block_size, ceil_div, check_inputs, dot, dot_dtype, operand

# Most query/key rows x padded head dim per tile (at head dim 128, [64, 128] tiles with their
# pipelined copies do not fit an H100's 227 KB of shared memory).
MAX_WINDOW_TILE = 64 * 64


@dataclass(frozen=True)
class WindowConfig:
    """How the window-attention kernels launch: the rows each program owns (queries in the forward
    and dq kernels, keys in the dk/dv kernel), the rows each step of its loop walks (the other
    side), pipelining and warps."""

    block: int
    step: int
    num_stages: int = 1
    num_warps: int = 4


@functools.lru_cache(maxsize=None)
def window_config(head_dim: int) -> WindowConfig:
    """Launch of the window-attention kernels for `head_dim`: programs own 64 rows (fewer at d=128),
    their loops walk 32 rows a step, unpipelined, 4 warps. On an H200 (fused HQLT op, bf16,
    256 x 128 and 32 x 1024) this was the best of 5 launches: 32-row steps saved 3% of the GPU time
    at d=32 and were even at d=64; 32-row programs or 8 warps were 15-60% slower.
    `tests/test_triton_resources.py` compiles every resulting launch for sm_90 and checks its shared
    memory."""
    block = min(64, MAX_WINDOW_TILE // block_size(head_dim))
    return WindowConfig(block=block, step=min(block, 32))


@functools.lru_cache(maxsize=None)
def inverse_frequencies(head_dim: int, device: torch.device) -> Tensor:
    """RoPE frequencies `[d/2]`, computed exactly as the reference does (cached: no launches per call)."""
    half = head_dim // 2
    return reference.ROPE_BASE ** (-torch.arange(half, device=device, dtype=torch.float32) / half)


@functools.lru_cache(maxsize=64)
def rope_tables(positions: int, head_dim: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """cos and sin `[positions, d/2]` fp32 of RoPE's angles at positions 0, 1, ... (cached per shape: the
    kernels read them instead of evaluating cos and sin per element)."""
    angles = torch.arange(positions, device=device, dtype=torch.float32)[:, None] * inverse_frequencies(head_dim, device)
    return angles.cos(), angles.sin()


# ----------------------------------------------------------------------------- Triton helpers


@triton.jit
def rows_at(ptr, b, rows, h, N, H, D: tl.constexpr, WIDTH: tl.constexpr, BLOCK: tl.constexpr):
    """The first WIDTH columns of rows `rows` of a `[B, N, H, D]` tensor at ptr as fp32 `[R, BLOCK]` (0
    outside): WIDTH = D for whole rows, D / 2 for a RoPE half (the second one at ptr + D / 2)."""
    c = tl.arange(0, BLOCK)
    mask = ((rows >= 0) & (rows < N))[:, None] & (c < WIDTH)[None, :]
    return tl.load(ptr + ((b * N + rows[:, None]) * H + h) * D + c[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def concat_rows(cache_ptr, segment_ptr, b, p, h, S, T, H, D: tl.constexpr, WIDTH: tl.constexpr,
                BLOCK: tl.constexpr):
    """Rows p of cat([cache `[B, S, H, D]`, segment `[B, T, H, D]`], dim=1) as fp32 `[R, BLOCK]` (columns
    as `rows_at`): two masked loads (each keeps its rows' contiguity)."""
    return (rows_at(cache_ptr, b, p, h, S, H, D, WIDTH, BLOCK)
            + rows_at(segment_ptr, b, p - S, h, T, H, D, WIDTH, BLOCK))


@triton.jit
def rope(x1, x2, p, row_ok, cos_ptr, sin_ptr, D: tl.constexpr, INVERSE: tl.constexpr):
    """RoPE (INVERSE: its inverse, the rotation by minus the angles) of fp32 rows given as their halves
    x1, x2 `[R, BLOCK_H]` (head columns 0..D/2-1 and D/2..D-1) at positions p `[R]`; cos and sin of
    each (position, frequency) come from the tables `[positions, D / 2]` of `rope_tables`. Returns the
    rotated halves; rows outside row_ok and padding columns become 0."""
    j = tl.arange(0, x1.shape[1])
    table = p[:, None] * (D // 2) + j[None, :]
    mask = row_ok[:, None] & (j < D // 2)[None, :]
    cos = tl.load(cos_ptr + table, mask=mask, other=0.0)
    sin = tl.load(sin_ptr + table, mask=mask, other=0.0)
    if INVERSE:
        sin = -sin
    return x1 * cos - x2 * sin, x2 * cos + x1 * sin


@triton.jit
def rotated_queries(q_ptr, b, t, h, S, T, H, cos_ptr, sin_ptr, D: tl.constexpr, BLOCK_H: tl.constexpr):
    """Rows t of q `[B, T, H, D]` rotated by RoPE at their positions S + t, as their two halves fp32
    `[R, BLOCK_H]`."""
    q1 = rows_at(q_ptr, b, t, h, T, H, D, D // 2, BLOCK_H)
    q2 = rows_at(q_ptr + D // 2, b, t, h, T, H, D, D // 2, BLOCK_H)
    return rope(q1, q2, S + t, t < T, cos_ptr, sin_ptr, D, False)


@triton.jit
def rotated_keys(cache_k_ptr, k_ptr, b, p, h, S, T, H, cos_ptr, sin_ptr, D: tl.constexpr, BLOCK_H: tl.constexpr):
    """Rows p of cat([cache_k, k]) (as `concat_rows`) rotated by RoPE at positions p, as their two
    halves fp32 `[R, BLOCK_H]`."""
    k1 = concat_rows(cache_k_ptr, k_ptr, b, p, h, S, T, H, D, D // 2, BLOCK_H)
    k2 = concat_rows(cache_k_ptr + D // 2, k_ptr + D // 2, b, p, h, S, T, H, D, D // 2, BLOCK_H)
    return rope(k1, k2, p, (p >= 0) & (p < S + T), cos_ptr, sin_ptr, D, False)


@triton.jit
def halves_dot(a1, a2, b1, b2, DOT_DTYPE: tl.constexpr):
    """a @ b^T `[M, N]` of rows a `[M, D]`, b `[N, D]` given as their halves `[M, BLOCK_H]`, `[N, BLOCK_H]`."""
    return dot(a1, tl.trans(b1), DOT_DTYPE) + dot(a2, tl.trans(b2), DOT_DTYPE)


@triton.jit
def store_rows(ptr, x, b, rows, h, N, H, D: tl.constexpr, WIDTH: tl.constexpr, add_ptr=None):
    """Store fp32 rows x `[R, BLOCK]` as the first WIDTH columns (as `rows_at`) of rows `rows` of a
    `[B, N, H, D]` tensor (rows outside 0..N-1 skipped), plus the same entries of the fp32 tensor at
    `add_ptr` when given."""
    c = tl.arange(0, x.shape[1])
    offsets = ((b * N + rows[:, None]) * H + h) * D + c[None, :]
    mask = ((rows >= 0) & (rows < N))[:, None] & (c < WIDTH)[None, :]
    if add_ptr is not None:
        x += tl.load(add_ptr + offsets, mask=mask, other=0.0)
    tl.store(ptr + offsets, x, mask=mask)


@triton.jit
def store_halves(ptr, x1, x2, b, rows, h, N, H, D: tl.constexpr, add_ptr=None):
    """Store rows given as their fp32 halves x1, x2 `[R, BLOCK_H]` (as `store_rows`)."""
    store_rows(ptr, x1, b, rows, h, N, H, D, D // 2, add_ptr)
    store_rows(ptr + D // 2, x2, b, rows, h, N, H, D, D // 2, None if add_ptr is None else add_ptr + D // 2)


@triton.jit
def key_episodes(cache_valid_ptr, episode_ptr, b, p, S, T):
    """Episode of key positions p `[R]`: -1 for invalid cache entries, 0 for valid ones, the segment's
    cumulative resets for segment rows and -3 beyond the last row (never matched)."""
    cached = tl.load(cache_valid_ptr + b * S + p, mask=(p >= 0) & (p < S), other=0) != 0
    segment = tl.load(episode_ptr + b * T + (p - S), mask=(p >= S) & (p < S + T), other=-3)
    return tl.where(p < S, tl.where(cached, 0, -1), segment)


@triton.jit
def attend_mask(q_pos, q_episode, k_pos, k_episode, window):
    """Which (query, key) pairs attend; arguments already broadcast against each other."""
    distance = q_pos - k_pos
    return (distance >= 0) & (distance < window) & (q_episode == k_episode)


@triton.jit
def _forward_kernel(
    q_ptr, k_ptr, v_ptr, cache_k_ptr, cache_v_ptr, cache_valid_ptr, episode_ptr, cos_ptr, sin_ptr,
    gate_ptr, o_fw_ptr, o_ptr, o_kv_ptr, lse_ptr,
    T, S, H, window, scale,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr,
    HAS_GATE: tl.constexpr, DOT_DTYPE: tl.constexpr,
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
    q1, q2 = rotated_queries(q_ptr, b, t, h, S, T, H, cos_ptr, sin_ptr, D, BLOCK_H)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    lo = tl.maximum(S + first - window + 1, 0)
    hi = tl.minimum(S + first + BLOCK_M, P)
    for start in range(lo, hi, BLOCK_N):
        p = start + tl.arange(0, BLOCK_N)
        k1, k2 = rotated_keys(cache_k_ptr, k_ptr, b, p, h, S, T, H, cos_ptr, sin_ptr, D, BLOCK_H)
        scores = halves_dot(q1, q2, k1, k2, DOT_DTYPE) * scale
        allowed = attend_mask(q_pos[:, None], q_episode[:, None], p[None, :],
                              key_episodes(cache_valid_ptr, episode_ptr, b, p, S, T)[None, :], window)
        scores = tl.where(allowed, scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing allowed yet
        probs = tl.exp(scores - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(probs, axis=1)
        value = concat_rows(cache_v_ptr, v_ptr, b, p, h, S, T, H, D, D, BLOCK_D)
        acc = acc * alpha[:, None] + dot(probs, value, DOT_DTYPE)
        m_i = m_new
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    o = acc / l_safe[:, None]
    if HAS_GATE:
        store_rows(o_kv_ptr, o, b, t, h, T, H, D, D)
        gate = rows_at(gate_ptr, b, t, h, T, H, D, D, BLOCK_D)
        o = gate * rows_at(o_fw_ptr, b, t, h, T, H, D, D, BLOCK_D) + (1.0 - gate) * o
    store_rows(o_ptr, o, b, t, h, T, H, D, D)
    tl.store(lse_ptr + pid * T + t, tl.where(m_i == float("-inf"), 0.0, m_i) + tl.log(l_safe), mask=t < T)


@triton.jit
def attention_gradient(do_ptr, gate_ptr, b, t, h, T, H, D: tl.constexpr, BLOCK_D: tl.constexpr,
                       HAS_GATE: tl.constexpr):
    """dO of the attention output at rows t (fp32 `[R, BLOCK_D]`): with HAS_GATE the output was mixed
    as (1 - gate) * o."""
    do = rows_at(do_ptr, b, t, h, T, H, D, D, BLOCK_D)
    if HAS_GATE:
        do = do * (1.0 - rows_at(gate_ptr, b, t, h, T, H, D, D, BLOCK_D))
    return do


@triton.jit
def dq_kernel(
    q_ptr, k_ptr, v_ptr, cache_k_ptr, cache_v_ptr, cache_valid_ptr, episode_ptr, cos_ptr, sin_ptr,
    o_ptr, lse_ptr, do_ptr, gate_ptr, dq_partial_ptr, dq_ptr, delta_ptr,
    T, S, H, window, scale,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr,
    HAS_GATE: tl.constexpr, DOT_DTYPE: tl.constexpr,
):
    """dq of one query block (plus the fast-weight part `dq_partial` with HAS_GATE); also writes
    delta = rowsum(dO * O) for `dkdv_kernel`."""
    pid = tl.program_id(1).to(tl.int64)
    b, h = pid // H, pid % H
    P = S + T
    first = tl.program_id(0) * BLOCK_M
    t = first + tl.arange(0, BLOCK_M)
    q_pos = S + t
    q1, q2 = rotated_queries(q_ptr, b, t, h, S, T, H, cos_ptr, sin_ptr, D, BLOCK_H)
    do = attention_gradient(do_ptr, gate_ptr, b, t, h, T, H, D, BLOCK_D, HAS_GATE)
    delta = tl.sum(do * rows_at(o_ptr, b, t, h, T, H, D, D, BLOCK_D), axis=1)
    tl.store(delta_ptr + pid * T + t, delta, mask=t < T)
    lse = tl.load(lse_ptr + pid * T + t, mask=t < T, other=0.0)
    q_episode = tl.load(episode_ptr + b * T + t, mask=t < T, other=-2)
    dq1 = tl.zeros([BLOCK_M, BLOCK_H], tl.float32)
    dq2 = tl.zeros([BLOCK_M, BLOCK_H], tl.float32)
    lo = tl.maximum(S + first - window + 1, 0)
    hi = tl.minimum(S + first + BLOCK_M, P)
    for start in range(lo, hi, BLOCK_N):
        p = start + tl.arange(0, BLOCK_N)
        k1, k2 = rotated_keys(cache_k_ptr, k_ptr, b, p, h, S, T, H, cos_ptr, sin_ptr, D, BLOCK_H)
        k1, k2 = operand(k1, DOT_DTYPE), operand(k2, DOT_DTYPE)  # in scores and dq
        value = concat_rows(cache_v_ptr, v_ptr, b, p, h, S, T, H, D, D, BLOCK_D)
        scores = halves_dot(q1, q2, k1, k2, DOT_DTYPE) * scale
        allowed = attend_mask(q_pos[:, None], q_episode[:, None], p[None, :],
                              key_episodes(cache_valid_ptr, episode_ptr, b, p, S, T)[None, :], window)
        probs = tl.where(allowed, tl.exp(scores - lse[:, None]), 0.0)
        dscores = probs * (dot(do, tl.trans(value), DOT_DTYPE) - delta[:, None])
        dq1 += dot(dscores, k1, DOT_DTYPE)
        dq2 += dot(dscores, k2, DOT_DTYPE)
    dq1, dq2 = rope(dq1 * scale, dq2 * scale, q_pos, t < T, cos_ptr, sin_ptr, D, True)
    store_halves(dq_ptr, dq1, dq2, b, t, h, T, H, D, dq_partial_ptr if HAS_GATE else None)


@triton.jit
def dkdv_kernel(
    q_ptr, k_ptr, v_ptr, cache_k_ptr, cache_v_ptr, cache_valid_ptr, episode_ptr, cos_ptr, sin_ptr,
    lse_ptr, delta_ptr, do_ptr, gate_ptr, dk_partial_ptr, dv_partial_ptr,
    dk_ptr, dv_ptr, dcache_k_ptr, dcache_v_ptr,
    T, S, H, window, scale,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr,
    HAS_GATE: tl.constexpr, DOT_DTYPE: tl.constexpr,
):
    """dk and dv of one block of concatenated key positions: cache rows to dcache_k, dcache_v, segment
    rows to dk, dv (plus the fast-weight parts `dk_partial`, `dv_partial` with HAS_GATE)."""
    pid = tl.program_id(1).to(tl.int64)
    b, h = pid // H, pid % H
    P = S + T
    first = tl.program_id(0) * BLOCK_N
    p = first + tl.arange(0, BLOCK_N)
    k1, k2 = rotated_keys(cache_k_ptr, k_ptr, b, p, h, S, T, H, cos_ptr, sin_ptr, D, BLOCK_H)
    value = concat_rows(cache_v_ptr, v_ptr, b, p, h, S, T, H, D, D, BLOCK_D)
    k_episode = key_episodes(cache_valid_ptr, episode_ptr, b, p, S, T)
    dk1 = tl.zeros([BLOCK_N, BLOCK_H], tl.float32)
    dk2 = tl.zeros([BLOCK_N, BLOCK_H], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    lo = tl.maximum(first - S, 0)
    hi = tl.minimum(first + BLOCK_N - 1 + window - S, T)
    for start in range(lo, hi, BLOCK_M):
        t = start + tl.arange(0, BLOCK_M)
        q_pos = S + t
        q1, q2 = rotated_queries(q_ptr, b, t, h, S, T, H, cos_ptr, sin_ptr, D, BLOCK_H)
        q1, q2 = operand(q1, DOT_DTYPE), operand(q2, DOT_DTYPE)  # q and dO: in two products each
        do = operand(attention_gradient(do_ptr, gate_ptr, b, t, h, T, H, D, BLOCK_D, HAS_GATE), DOT_DTYPE)
        lse = tl.load(lse_ptr + pid * T + t, mask=t < T, other=0.0)
        delta = tl.load(delta_ptr + pid * T + t, mask=t < T, other=0.0)
        q_episode = tl.load(episode_ptr + b * T + t, mask=t < T, other=-2)
        scores_t = halves_dot(k1, k2, q1, q2, DOT_DTYPE) * scale  # [keys, queries]
        allowed = attend_mask(q_pos[None, :], q_episode[None, :], p[:, None], k_episode[:, None], window)
        probs_t = tl.where(allowed, tl.exp(scores_t - lse[None, :]), 0.0)
        dv += dot(probs_t, do, DOT_DTYPE)
        dscores_t = probs_t * (dot(value, tl.trans(do), DOT_DTYPE) - delta[None, :])
        dk1 += dot(dscores_t, q1, DOT_DTYPE)
        dk2 += dot(dscores_t, q2, DOT_DTYPE)
    dk1, dk2 = rope(dk1 * scale, dk2 * scale, p, p < P, cos_ptr, sin_ptr, D, True)
    store_halves(dcache_k_ptr, dk1, dk2, b, p, h, S, H, D)
    store_rows(dcache_v_ptr, dv, b, p, h, S, H, D, D)
    store_halves(dk_ptr, dk1, dk2, b, p - S, h, T, H, D, dk_partial_ptr if HAS_GATE else None)
    store_rows(dv_ptr, dv, b, p - S, h, T, H, D, D, dv_partial_ptr if HAS_GATE else None)


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
    """The leading kernel arguments every attention kernel takes (the inputs and the RoPE tables)."""
    q, cache_k = inputs.q, inputs.cache_k
    return (*inputs, *rope_tables(cache_k.shape[1] + q.shape[1], q.shape[-1], q.device))


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
    _forward_kernel[(ceil_div(steps, config.block), batch * heads)](
        *launch_arguments(inputs), o if gate is None else gate, o if o_fw is None else o_fw, o, o_kv, lse,
        steps, inputs.cache_k.shape[1], heads, window, scale,
        D=dim, BLOCK_M=config.block, BLOCK_N=config.step, BLOCK_D=block_size(dim),
        BLOCK_H=block_size(dim // 2), HAS_GATE=gate is not None,
        DOT_DTYPE=dot_dtype(q.dtype, True), num_warps=config.num_warps, num_stages=config.num_stages,
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
    common = dict(D=dim, BLOCK_D=block_size(dim), BLOCK_H=block_size(dim // 2), HAS_GATE=has_gate,
                  DOT_DTYPE=dot_dtype(q.dtype, True), num_warps=config.num_warps, num_stages=config.num_stages)
    gate_arg = gate if has_gate else do
    dq, dk, dv = torch.empty_like(q), torch.empty_like(inputs.k), torch.empty_like(inputs.v)
    dcache_k, dcache_v = torch.empty_like(cache_k), torch.empty_like(inputs.cache_v)
    delta = torch.empty_like(lse)
    leading = launch_arguments(inputs)
    dq_kernel[(ceil_div(steps, config.block), batch * heads)](
        *leading, o, lse, do, gate_arg, dq_partial, dq, delta,
        steps, cached, heads, window, scale, BLOCK_M=config.block, BLOCK_N=config.step, **common,
    )
    dkdv_kernel[(ceil_div(cached + steps, config.block), batch * heads)](
        *leading, lse, delta, do, gate_arg, dk_partial, dv_partial, dk, dv, dcache_k, dcache_v,
        steps, cached, heads, window, scale, BLOCK_M=config.step, BLOCK_N=config.block, **common,
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
