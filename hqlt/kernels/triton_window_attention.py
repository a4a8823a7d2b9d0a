"""Sliding-window softmax attention in Triton with the same-episode mask, the previous segment's
cached keys/values and RoPE by relative distance (same contract as `reference.window_attention`).

Keys live in one concatenated position space of P = S + T rows: cache entries at 0..S-1, the
segment's tokens at S..S+T-1; the kernels read each row from the cache or the segment tensor (no
concatenated copy). Queries and keys are rotated by RoPE at their positions as the kernels load
them, in fp32 (relative distances are what matters), and multiplied with fp32 accumulation
(16-bit operands for 16-bit inputs, see `triton_delta_rule.dot_dtype`). Query t (position S+t)
sees key p when 0 <= S+t-p < window and both have the same key episode: -1 (never matched) for
invalid cache entries, 0 for valid ones, and the cumulative count of resets for segment rows. The forward pass is flash-attention style (online softmax over key blocks) and keeps
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
from hqlt.kernels.triton_delta_rule import block_size, ceil_div, check_inputs, dot, dot_dtype

# Most query/key rows x padded head dim per tile (at head dim 128, [64, 128] tiles with their
# pipelined copies do not fit an H100's 227 KB of shared memory).
MAX_WINDOW_TILE = 64 * 64


@dataclass(frozen=True)
class WindowConfig:
    """How the window-attention kernels launch: rows per query block and per key block, pipelining."""

    block: int
    num_stages: int = 1
    num_warps: int = 4


@functools.lru_cache(maxsize=None)
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


@functools.lru_cache(maxsize=64)
def rope_tables(positions: int, head_dim: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """cos and sin `[positions, d/2]` fp32 of RoPE's angles at positions 0, 1, ... (cached per shape: the
    kernels read them instead of evaluating cos and sin per element)."""
    angles = torch.arange(positions, device=device, dtype=torch.float32)[:, None] * inverse_frequencies(head_dim, device)
    return angles.cos(), angles.sin()


# ----------------------------------------------------------------------------- Triton helpers


@triton.jit
def head_columns(D: tl.constexpr, BLOCK_D: tl.constexpr, SWAPPED: tl.constexpr = False):
    """The kernels' order of a head's D columns in a BLOCK_D-wide tile: each rotate-half half padded to
    BLOCK_D / 2, so that RoPE's partner of tile column c is always c +- BLOCK_D / 2 (the identity order
    when D is a power of two; products over the columns do not depend on their order). Returns each
    tile column's index in the head `[BLOCK_D]` (with SWAPPED, its partner's) and whether it is one."""
    c = tl.arange(0, BLOCK_D)
    if SWAPPED:
        c = tl.where(c < BLOCK_D // 2, c + BLOCK_D // 2, c - BLOCK_D // 2)
    valid = c < D
    if BLOCK_D != D:  # a power of two keeps the plain order, whose contiguity the compiler can prove
        valid = c % (BLOCK_D // 2) < D // 2
        c = (c // (BLOCK_D // 2)) * (D // 2) + c % (BLOCK_D // 2)
    return c, valid


@triton.jit
def swap_halves(x):
    """x `[R, BLOCK_D]` with its two column halves exchanged (register shuffles, exact)."""
    R: tl.constexpr = x.shape[0]
    BLOCK_D: tl.constexpr = x.shape[1]
    first, second = tl.split(tl.permute(tl.reshape(x, (R, 2, BLOCK_D // 2)), (0, 2, 1)))
    return tl.reshape(tl.permute(tl.join(second, first), (0, 2, 1)), (R, BLOCK_D))


@triton.jit
def rope(x, x_swapped, p, row_ok, cos_ptr, sin_ptr, D: tl.constexpr, INVERSE: tl.constexpr):
    """RoPE (INVERSE: its inverse) of fp32 rows x `[R, BLOCK_D]` (columns in `head_columns` order) at
    positions p `[R]`, given x with its column halves swapped (loaded so, or by `swap_halves`); cos
    and sin of each (position, frequency) come from the tables `[positions, D / 2]` of `rope_tables`.
    Rows outside row_ok and padding columns become 0."""
    BLOCK_D: tl.constexpr = x.shape[1]
    c = tl.arange(0, BLOCK_D)
    j = c % (BLOCK_D // 2)
    sign = tl.where(c < BLOCK_D // 2, -1.0, 1.0)
    if INVERSE:
        sign = -sign
    table = p[:, None] * (D // 2) + j[None, :]
    mask = row_ok[:, None] & (j < D // 2)[None, :]
    cos = tl.load(cos_ptr + table, mask=mask, other=0.0)
    sin = tl.load(sin_ptr + table, mask=mask, other=0.0)
    return x * cos + sign[None, :] * x_swapped * sin


@triton.jit
def rows_at(ptr, b, rows, h, N, H, D: tl.constexpr, BLOCK_D: tl.constexpr, SWAPPED: tl.constexpr = False):
    """Rows `rows` of a `[B, N, H, D]` tensor as fp32 `[R, BLOCK_D]` (`head_columns` order, with SWAPPED
    its column halves swapped; 0 outside)."""
    cols, col_ok = head_columns(D, BLOCK_D, SWAPPED)
    mask = ((rows >= 0) & (rows < N))[:, None] & col_ok[None, :]
    return tl.load(ptr + ((b * N + rows[:, None]) * H + h) * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def concat_rows(cache_ptr, segment_ptr, b, p, h, S, T, H, D: tl.constexpr, BLOCK_D: tl.constexpr,
                SWAPPED: tl.constexpr = False):
    """Rows p of cat([cache `[B, S, H, D]`, segment `[B, T, H, D]`], dim=1) as fp32 `[R, BLOCK_D]` (as
    `rows_at`): two masked loads (each keeps its rows' contiguity)."""
    return (rows_at(cache_ptr, b, p, h, S, H, D, BLOCK_D, SWAPPED)
            + rows_at(segment_ptr, b, p - S, h, T, H, D, BLOCK_D, SWAPPED))


@triton.jit
def rotated_rows(cache_ptr, segment_ptr, b, p, h, S, T, H, cos_ptr, sin_ptr, D: tl.constexpr, BLOCK_D: tl.constexpr):
    """Rows p of cat([cache, segment]) (as `concat_rows`) rotated by RoPE at positions p (the swapped
    halves are loaded again: cheaper than swapping registers inside the attention loops)."""
    x = concat_rows(cache_ptr, segment_ptr, b, p, h, S, T, H, D, BLOCK_D)
    x_swapped = concat_rows(cache_ptr, segment_ptr, b, p, h, S, T, H, D, BLOCK_D, True)
    return rope(x, x_swapped, p, (p >= 0) & (p < S + T), cos_ptr, sin_ptr, D, False)


@triton.jit
def store_rows(ptr, x, b, rows, h, N, H, D: tl.constexpr, BLOCK_D: tl.constexpr, add_ptr=None):
    """Store fp32 rows x `[R, BLOCK_D]` (`head_columns` order) at rows `rows` of a `[B, N, H, D]` tensor
    (rows outside 0..N-1 skipped), plus the same rows of the fp32 tensor at `add_ptr` when given."""
    cols, col_ok = head_columns(D, BLOCK_D)
    offsets = ((b * N + rows[:, None]) * H + h) * D + cols[None, :]
    mask = ((rows >= 0) & (rows < N))[:, None] & col_ok[None, :]
    if add_ptr is not None:
        x += tl.load(add_ptr + offsets, mask=mask, other=0.0)
    tl.store(ptr + offsets, x, mask=mask)


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
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
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
    qr = rotated_rows(q_ptr, q_ptr, b, q_pos, h, S, T, H, cos_ptr, sin_ptr, D, BLOCK_D)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    lo = tl.maximum(S + first - window + 1, 0)
    hi = tl.minimum(S + first + BLOCK_M, P)
    for start in range(lo, hi, BLOCK_N):
        p = start + tl.arange(0, BLOCK_N)
        kr = rotated_rows(cache_k_ptr, k_ptr, b, p, h, S, T, H, cos_ptr, sin_ptr, D, BLOCK_D)
        scores = dot(qr, tl.trans(kr), DOT_DTYPE) * scale
        allowed = attend_mask(q_pos[:, None], q_episode[:, None], p[None, :],
                              key_episodes(cache_valid_ptr, episode_ptr, b, p, S, T)[None, :], window)
        scores = tl.where(allowed, scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing allowed yet
        probs = tl.exp(scores - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(probs, axis=1)
        value = concat_rows(cache_v_ptr, v_ptr, b, p, h, S, T, H, D, BLOCK_D)
        acc = acc * alpha[:, None] + dot(probs, value, DOT_DTYPE)
        m_i = m_new
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    o = acc / l_safe[:, None]
    if HAS_GATE:
        store_rows(o_kv_ptr, o, b, t, h, T, H, D, BLOCK_D)
        gate = rows_at(gate_ptr, b, t, h, T, H, D, BLOCK_D)
        o = gate * rows_at(o_fw_ptr, b, t, h, T, H, D, BLOCK_D) + (1.0 - gate) * o
    store_rows(o_ptr, o, b, t, h, T, H, D, BLOCK_D)
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
    q_ptr, k_ptr, v_ptr, cache_k_ptr, cache_v_ptr, cache_valid_ptr, episode_ptr, cos_ptr, sin_ptr,
    o_ptr, lse_ptr, do_ptr, gate_ptr, dq_partial_ptr, dq_ptr, delta_ptr,
    T, S, H, window, scale,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
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
    qr = rotated_rows(q_ptr, q_ptr, b, q_pos, h, S, T, H, cos_ptr, sin_ptr, D, BLOCK_D)
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
        kr = rotated_rows(cache_k_ptr, k_ptr, b, p, h, S, T, H, cos_ptr, sin_ptr, D, BLOCK_D)
        value = concat_rows(cache_v_ptr, v_ptr, b, p, h, S, T, H, D, BLOCK_D)
        scores = dot(qr, tl.trans(kr), DOT_DTYPE) * scale
        allowed = attend_mask(q_pos[:, None], q_episode[:, None], p[None, :],
                              key_episodes(cache_valid_ptr, episode_ptr, b, p, S, T)[None, :], window)
        probs = tl.where(allowed, tl.exp(scores - lse[:, None]), 0.0)
        dprobs = dot(do, tl.trans(value), DOT_DTYPE)
        dqr += dot(probs * (dprobs - delta[:, None]), kr, DOT_DTYPE)
    dq = dqr * scale
    dq = rope(dq, swap_halves(dq), q_pos, t < T, cos_ptr, sin_ptr, D, True)
    store_rows(dq_ptr, dq, b, t, h, T, H, D, BLOCK_D, dq_partial_ptr if HAS_GATE else None)


@triton.jit
def dkdv_kernel(
    q_ptr, k_ptr, v_ptr, cache_k_ptr, cache_v_ptr, cache_valid_ptr, episode_ptr, cos_ptr, sin_ptr,
    lse_ptr, delta_ptr, do_ptr, gate_ptr, dk_partial_ptr, dv_partial_ptr,
    dk_ptr, dv_ptr, dcache_k_ptr, dcache_v_ptr,
    T, S, H, window, scale,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_GATE: tl.constexpr, DOT_DTYPE: tl.constexpr,
):
    """dk and dv of one block of concatenated key positions: cache rows to dcache_k, dcache_v, segment
    rows to dk, dv (plus the fast-weight parts `dk_partial`, `dv_partial` with HAS_GATE)."""
    pid = tl.program_id(1).to(tl.int64)
    b, h = pid // H, pid % H
    P = S + T
    first = tl.program_id(0) * BLOCK_N
    p = first + tl.arange(0, BLOCK_N)
    kr = rotated_rows(cache_k_ptr, k_ptr, b, p, h, S, T, H, cos_ptr, sin_ptr, D, BLOCK_D)
    value = concat_rows(cache_v_ptr, v_ptr, b, p, h, S, T, H, D, BLOCK_D)
    k_episode = key_episodes(cache_valid_ptr, episode_ptr, b, p, S, T)
    dkr = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    lo = tl.maximum(first - S, 0)
    hi = tl.minimum(first + BLOCK_N - 1 + window - S, T)
    for start in range(lo, hi, BLOCK_M):
        t = start + tl.arange(0, BLOCK_M)
        q_pos = S + t
        qr = rotated_rows(q_ptr, q_ptr, b, q_pos, h, S, T, H, cos_ptr, sin_ptr, D, BLOCK_D)
        do = attention_gradient(do_ptr, gate_ptr, b, t, h, T, H, D, BLOCK_D, HAS_GATE)
        lse = tl.load(lse_ptr + pid * T + t, mask=t < T, other=0.0)
        delta = tl.load(delta_ptr + pid * T + t, mask=t < T, other=0.0)
        q_episode = tl.load(episode_ptr + b * T + t, mask=t < T, other=-2)
        scores_t = dot(kr, tl.trans(qr), DOT_DTYPE) * scale  # [keys, queries]
        allowed = attend_mask(q_pos[None, :], q_episode[None, :], p[:, None], k_episode[:, None], window)
        probs_t = tl.where(allowed, tl.exp(scores_t - lse[None, :]), 0.0)
        dv += dot(probs_t, do, DOT_DTYPE)
        dprobs_t = dot(value, tl.trans(do), DOT_DTYPE)
        dkr += dot(probs_t * (dprobs_t - delta[None, :]), qr, DOT_DTYPE)
    dk = dkr * scale
    dk = rope(dk, swap_halves(dk), p, p < P, cos_ptr, sin_ptr, D, True)
    store_rows(dcache_k_ptr, dk, b, p, h, S, H, D, BLOCK_D)
    store_rows(dcache_v_ptr, dv, b, p, h, S, H, D, BLOCK_D)
    store_rows(dk_ptr, dk, b, p - S, h, T, H, D, BLOCK_D, dk_partial_ptr if HAS_GATE else None)
    store_rows(dv_ptr, dv, b, p - S, h, T, H, D, BLOCK_D, dv_partial_ptr if HAS_GATE else None)


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
        D=dim, BLOCK_M=config.block, BLOCK_N=config.block, BLOCK_D=block_size(dim), HAS_GATE=gate is not None,
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
    common = dict(D=dim, BLOCK_M=config.block, BLOCK_N=config.block, BLOCK_D=block_size(dim), HAS_GATE=has_gate,
                  DOT_DTYPE=dot_dtype(q.dtype, True), num_warps=config.num_warps, num_stages=config.num_stages)
    gate_arg = gate if has_gate else do
    dq, dk, dv = torch.empty_like(q), torch.empty_like(inputs.k), torch.empty_like(inputs.v)
    dcache_k, dcache_v = torch.empty_like(cache_k), torch.empty_like(inputs.cache_v)
    delta = torch.empty_like(lse)
    leading = launch_arguments(inputs)
    dq_kernel[(ceil_div(steps, config.block), batch * heads)](
        *leading, o, lse, do, gate_arg, dq_partial, dq, delta,
        steps, cached, heads, window, scale, **common,
    )
    dkdv_kernel[(ceil_div(cached + steps, config.block), batch * heads)](
        *leading, lse, delta, do, gate_arg, dk_partial, dv_partial, dk, dv, dcache_k, dcache_v,
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
