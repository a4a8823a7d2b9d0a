"""Sliding-window softmax attention in Triton with the same-episode mask, the previous segment's
cached keys/values and RoPE by relative distance (same contract as `reference.window_attention`).

Keys live in one concatenated position space of P = S + T rows: cache entries at 0..S-1, the
segment's tokens at S..S+T-1. A first kernel rotates the queries and the concatenated keys once
(RoPE at their positions; relative distances are what matters); the attention kernels then read
plain rows and multiply in the input dtype with fp32 accumulation. Query t (position S+t) sees key p
when 0 <= S+t-p < window and both have the same key episode: the cumulative count of resets for
segment rows, 0 for valid cache entries and -1 (never matched) for invalid ones. The forward pass
is flash-attention style (online softmax over key blocks) and keeps the log-sum-exp per query; the
backward pass has one kernel for dq (per query block) and one for dk, dv (per key block), both
recomputing the probabilities from the log-sum-exp, and rotates dq, dk back.
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
# Rows per program of the rotation kernel (on an H200, the keys of 256 x 192 steps at d=64: 45 us, 61 us with 32).
ROPE_ROWS = 16


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


def key_episodes(resets: Tensor, cache_valid: Tensor) -> Tensor:
    """int32 `[B, S + T]`: -1 for invalid cache entries, 0 for valid ones, then for each segment step
    the number of episode starts up to and including it (a query's episode is its own row's)."""
    cache = torch.where(cache_valid, 0, -1).to(torch.int32)
    return torch.cat([cache, torch.cumsum(resets, dim=1, dtype=torch.int32)], dim=1)


# ----------------------------------------------------------------------------- Triton helpers


@triton.jit
def _rope_kernel(
    cache_in_ptr, segment_in_ptr, cache_out_ptr, segment_out_ptr, add_ptr, inv_freq_ptr,
    P, H, CACHED_IN, CACHED_OUT, offset,
    D: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr, INVERSE: tl.constexpr, HAS_ADD: tl.constexpr,
):
    """RoPE of rows p of a concatenated `[B, P, H, D]` space at positions p + offset: rows p < CACHED_IN
    are read from the cache input `[B, CACHED_IN, H, D]`, the others from the segment input; rows
    p < CACHED_OUT are written to the cache output, the others to the segment output (plus `add` at
    the same place when HAS_ADD). INVERSE rotates back (for gradients)."""
    p = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    pid = tl.program_id(1).to(tl.int64)
    b, h = pid // H, pid % H
    cols = tl.arange(0, BLOCK_D)
    half = D // 2
    partner = tl.where(cols < half, cols + half, cols - half)
    sign = tl.where(cols < half, -1.0, 1.0)
    if INVERSE:
        sign = -sign
    row_ok = p < P
    col_ok = cols < D
    in_cache = (row_ok & (p < CACHED_IN))[:, None] & col_ok[None, :]
    in_segment = (row_ok & (p >= CACHED_IN))[:, None] & col_ok[None, :]
    cache_rows = ((b * CACHED_IN + p[:, None]) * H + h) * D
    segment_rows = ((b * (P - CACHED_IN) + (p - CACHED_IN)[:, None]) * H + h) * D
    x = (tl.load(cache_in_ptr + cache_rows + cols[None, :], mask=in_cache, other=0.0).to(tl.float32)
         + tl.load(segment_in_ptr + segment_rows + cols[None, :], mask=in_segment, other=0.0).to(tl.float32))
    x_partner = (tl.load(cache_in_ptr + cache_rows + partner[None, :], mask=in_cache, other=0.0).to(tl.float32)
                 + tl.load(segment_in_ptr + segment_rows + partner[None, :], mask=in_segment, other=0.0).to(tl.float32))
    inv_freq = tl.load(inv_freq_ptr + cols % half, mask=col_ok, other=0.0)
    angles = (p + offset).to(tl.float32)[:, None] * inv_freq[None, :]
    y = x * tl.cos(angles) + sign[None, :] * x_partner * tl.sin(angles)
    out_cache = (row_ok & (p < CACHED_OUT))[:, None] & col_ok[None, :]
    out_segment = (row_ok & (p >= CACHED_OUT))[:, None] & col_ok[None, :]
    out_segment_offsets = ((b * (P - CACHED_OUT) + (p - CACHED_OUT)[:, None]) * H + h) * D + cols[None, :]
    if HAS_ADD:
        y += tl.load(add_ptr + out_segment_offsets, mask=out_segment, other=0.0).to(tl.float32)
    tl.store(cache_out_ptr + ((b * CACHED_OUT + p[:, None]) * H + h) * D + cols[None, :], y, mask=out_cache)
    tl.store(segment_out_ptr + out_segment_offsets, y, mask=out_segment)


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
    qr_ptr, kr_ptr, vc_ptr, episode_ptr, gate_ptr, o_fw_ptr, o_ptr, o_kv_ptr, lse_ptr,
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
    q_episode = tl.load(episode_ptr + b * P + q_pos, mask=t < T, other=-2)
    qr = rows_at(qr_ptr, b, t, h, T, H, D, BLOCK_D)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    lo = tl.maximum(S + first - window + 1, 0)
    hi = tl.minimum(S + first + BLOCK_M, P)
    for start in range(lo, hi, BLOCK_N):
        p = start + tl.arange(0, BLOCK_N)
        kr = rows_at(kr_ptr, b, p, h, P, H, D, BLOCK_D)
        k_episode = tl.load(episode_ptr + b * P + p, mask=p < P, other=-3)
        scores = tl.dot(qr, tl.trans(kr), input_precision=PREC) * scale
        allowed = attend_mask(q_pos[:, None], q_episode[:, None], p[None, :], k_episode[None, :], window)
        scores = tl.where(allowed, scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing allowed yet
        probs = tl.exp(scores - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(probs, axis=1)
        value = rows_at(vc_ptr, b, p, h, P, H, D, BLOCK_D)
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
    qr_ptr, kr_ptr, vc_ptr, episode_ptr, o_ptr, lse_ptr, do_ptr, gate_ptr, dqr_ptr, delta_ptr,
    T, S, H, window, scale,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_GATE: tl.constexpr, PREC: tl.constexpr,
):
    """Gradient of the rotated queries (fp32, scaled) for one query block; also writes
    delta = rowsum(dO * O) for `dkdv_kernel`."""
    pid = tl.program_id(1).to(tl.int64)
    b, h = pid // H, pid % H
    P = S + T
    first = tl.program_id(0) * BLOCK_M
    t = first + tl.arange(0, BLOCK_M)
    qr = rows_at(qr_ptr, b, t, h, T, H, D, BLOCK_D)
    do = attention_gradient(do_ptr, gate_ptr, b, t, h, T, H, D, BLOCK_D, HAS_GATE)
    delta = tl.sum(do * rows_at(o_ptr, b, t, h, T, H, D, BLOCK_D), axis=1)
    tl.store(delta_ptr + pid * T + t, delta, mask=t < T)
    do = do
    lse = tl.load(lse_ptr + pid * T + t, mask=t < T, other=0.0)
    q_pos = S + t
    q_episode = tl.load(episode_ptr + b * P + q_pos, mask=t < T, other=-2)
    dqr = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    lo = tl.maximum(S + first - window + 1, 0)
    hi = tl.minimum(S + first + BLOCK_M, P)
    for start in range(lo, hi, BLOCK_N):
        p = start + tl.arange(0, BLOCK_N)
        kr = rows_at(kr_ptr, b, p, h, P, H, D, BLOCK_D)
        value = rows_at(vc_ptr, b, p, h, P, H, D, BLOCK_D)
        k_episode = tl.load(episode_ptr + b * P + p, mask=p < P, other=-3)
        scores = tl.dot(qr, tl.trans(kr), input_precision=PREC) * scale
        allowed = attend_mask(q_pos[:, None], q_episode[:, None], p[None, :], k_episode[None, :], window)
        probs = tl.where(allowed, tl.exp(scores - lse[:, None]), 0.0)
        dprobs = tl.dot(do, tl.trans(value), input_precision=PREC)
        dscores = (probs * (dprobs - delta[:, None]))
        dqr += tl.dot(dscores, kr, input_precision=PREC)
    cols = tl.arange(0, BLOCK_D)
    tl.store(dqr_ptr + ((b * T + t[:, None]) * H + h) * D + cols[None, :], dqr * scale,
             mask=(t[:, None] < T) & (cols[None, :] < D))


@triton.jit
def dkdv_kernel(
    qr_ptr, kr_ptr, vc_ptr, episode_ptr, lse_ptr, delta_ptr, do_ptr, gate_ptr, dv_partial_ptr,
    dkr_ptr, dv_ptr, dcache_v_ptr,
    T, S, H, window, scale,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_GATE: tl.constexpr, PREC: tl.constexpr,
):
    """For one block of concatenated key positions: the rotated keys' gradient (fp32, scaled,
    `[B, P, H, D]`) and dv (cache rows to dcache_v; with HAS_GATE the fast-weight part `dv_partial`
    is added for segment rows)."""
    pid = tl.program_id(1).to(tl.int64)
    b, h = pid // H, pid % H
    P = S + T
    first = tl.program_id(0) * BLOCK_N
    p = first + tl.arange(0, BLOCK_N)
    kr = rows_at(kr_ptr, b, p, h, P, H, D, BLOCK_D)
    value = rows_at(vc_ptr, b, p, h, P, H, D, BLOCK_D)
    k_episode = tl.load(episode_ptr + b * P + p, mask=p < P, other=-3)
    dkr = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    lo = tl.maximum(first - S, 0)
    hi = tl.minimum(first + BLOCK_N - 1 + window - S, T)
    for start in range(lo, hi, BLOCK_M):
        t = start + tl.arange(0, BLOCK_M)
        qr = rows_at(qr_ptr, b, t, h, T, H, D, BLOCK_D)
        do = attention_gradient(do_ptr, gate_ptr, b, t, h, T, H, D, BLOCK_D, HAS_GATE)
        lse = tl.load(lse_ptr + pid * T + t, mask=t < T, other=0.0)
        delta = tl.load(delta_ptr + pid * T + t, mask=t < T, other=0.0)
        q_pos = S + t
        q_episode = tl.load(episode_ptr + b * P + q_pos, mask=t < T, other=-2)
        scores_t = tl.dot(kr, tl.trans(qr), input_precision=PREC) * scale  # [keys, queries]
        allowed = attend_mask(q_pos[None, :], q_episode[None, :], p[:, None], k_episode[:, None], window)
        probs_t = tl.where(allowed, tl.exp(scores_t - lse[None, :]), 0.0)
        dv += tl.dot(probs_t, do, input_precision=PREC)
        dprobs_t = tl.dot(value, tl.trans(do), input_precision=PREC)
        dkr += tl.dot((probs_t * (dprobs_t - delta[None, :])), qr, input_precision=PREC)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols[None, :] < D
    tl.store(dkr_ptr + ((b * P + p[:, None]) * H + h) * D + cols[None, :], dkr * scale,
             mask=(p < P)[:, None] & col_ok)
    in_cache = (p < S)[:, None] & col_ok
    in_segment = ((p >= S) & (p < P))[:, None] & col_ok
    segment_offsets = ((b * T + (p - S)[:, None]) * H + h) * D + cols[None, :]
    if HAS_GATE:
        dv += tl.load(dv_partial_ptr + segment_offsets, mask=in_segment, other=0.0)
    tl.store(dv_ptr + segment_offsets, dv, mask=in_segment)
    tl.store(dcache_v_ptr + ((b * S + p[:, None]) * H + h) * D + cols[None, :], dv, mask=in_cache)


# ----------------------------------------------------------------------------- launchers


def rotate(cache: Tensor | None, segment: Tensor, offset: int, out: Tensor,
           cache_out: Tensor | None = None, add: Tensor | None = None, inverse: bool = False) -> Tensor:
    """RoPE (or its inverse) of the rows of cat([cache, segment], dim=1) (`[B, S, H, d]`, `[B, T, H, d]`;
    no cache: S = 0) at positions offset, offset + 1, ... Written to `out` `[B, S' + T', H, d]` less
    its first S' rows, which go to `cache_out` `[B, S', H, d]` when given; `add` (shaped like `out`)
    is added in. Returns `out`."""
    batch, steps, heads, dim = segment.shape
    cached = 0 if cache is None else cache.shape[1]
    rows = cached + steps
    cached_out = 0 if cache_out is None else cache_out.shape[1]
    _rope_kernel[(triton.cdiv(rows, ROPE_ROWS), batch * heads)](
        segment if cache is None else cache, segment, out if cache_out is None else cache_out, out,
        out if add is None else add, inverse_frequencies(dim, segment.device),
        rows, heads, cached, cached_out, offset,
        D=dim, ROWS=ROPE_ROWS, BLOCK_D=block_size(dim), INVERSE=inverse, HAS_ADD=add is not None,
    )
    return out


class Prepared(NamedTuple):
    """The rotated queries `[B, T, H, d]` and keys `[B, S + T, H, d]` (fp32), the values of the
    concatenated positions `[B, S + T, H, d]` (input dtype) and the key episodes `[B, S + T]` the attention kernels read."""

    qr: Tensor
    kr: Tensor
    vc: Tensor
    episode: Tensor

    @property
    def cached(self) -> int:
        return self.kr.shape[1] - self.qr.shape[1]


def prepare(q: Tensor, k: Tensor, v: Tensor, resets: Tensor, cache_k: Tensor, cache_v: Tensor,
            cache_valid: Tensor) -> Prepared:
    """Rotate once (into fp32: rounding the rotated rows to 16 bits costs more accuracy than the
    products' tf32) and concatenate the cache (shapes as in `window_attention`)."""
    batch, steps, heads, dim = q.shape
    cached = cache_k.shape[1]
    rotated = functools.partial(torch.empty, device=q.device, dtype=torch.float32)
    return Prepared(qr=rotate(None, q, offset=cached, out=rotated(batch, steps, heads, dim)),
                    kr=rotate(cache_k, k, offset=0, out=rotated(batch, cached + steps, heads, dim)),
                    vc=torch.cat([cache_v, v], dim=1), episode=key_episodes(resets, cache_valid))


def forward(prepared: Prepared, window: int, scale: float, out_dtype: torch.dtype,
            gate: Tensor | None = None, o_fw: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Launch the forward kernel. Returns o `[B, T, H, d]` (`out_dtype`), the attention output kept for
    the backward (o itself, or fp32 o_KV when `gate` and `o_fw` mix in the fast-weight output) and
    the log-sum-exp `[B, H, T]`."""
    qr = prepared.qr
    batch, steps, heads, dim = qr.shape
    config = window_config(dim)
    o = torch.empty(qr.shape, device=qr.device, dtype=out_dtype)
    o_kv = torch.empty(qr.shape, device=qr.device, dtype=torch.float32) if gate is not None else o
    lse = torch.empty(batch, heads, steps, device=qr.device, dtype=torch.float32)
    _forward_kernel[(triton.cdiv(steps, config.block), batch * heads)](
        qr, prepared.kr, prepared.vc, prepared.episode, o if gate is None else gate, o if o_fw is None else o_fw,
        o, o_kv, lse, steps, prepared.cached, heads, window, scale,
        D=dim, BLOCK_M=config.block, BLOCK_N=config.block, BLOCK_D=block_size(dim), HAS_GATE=gate is not None,
        PREC=dot_precision(prepared.vc.dtype), num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return o, o_kv, lse


def backward(prepared: Prepared, o: Tensor, lse: Tensor, do: Tensor, window: int, scale: float,
             gate: Tensor | None = None, partial: tuple[Tensor, Tensor, Tensor] | None = None) -> tuple[Tensor, ...]:
    """dq, dk, dv `[B, T, H, d]` and dcache_k, dcache_v `[B, S, H, d]` (input dtype) of the window
    attention whose output o and log-sum-exp `[B, H, T]` the forward pass kept. For Synchronous HQLT,
    `gate` scales dO by (1 - gate) and `partial` = (dq, dk, dv) fp32 of the fast-weight memory are added in."""
    qr, kr, vc = prepared.qr, prepared.kr, prepared.vc
    batch, steps, heads, dim = qr.shape
    cached = prepared.cached
    config = window_config(dim)
    has_gate = gate is not None
    dq_partial, dk_partial, dv_partial = partial if partial is not None else (None, None, None)
    common = dict(D=dim, BLOCK_M=config.block, BLOCK_N=config.block, BLOCK_D=block_size(dim), HAS_GATE=has_gate,
                  PREC=dot_precision(vc.dtype), num_warps=config.num_warps, num_stages=config.num_stages)
    gate_arg = gate if has_gate else do
    dqr = torch.empty(qr.shape, device=qr.device, dtype=torch.float32)
    delta = torch.empty_like(lse)
    dq_kernel[(triton.cdiv(steps, config.block), batch * heads)](
        qr, kr, prepared.vc, prepared.episode, o, lse, do, gate_arg, dqr, delta,
        steps, cached, heads, window, scale, **common,
    )
    dkr = torch.empty(kr.shape, device=kr.device, dtype=torch.float32)
    dv, dcache_v = vc.new_empty(batch, steps, heads, dim), vc.new_empty(batch, cached, heads, dim)
    dkdv_kernel[(triton.cdiv(cached + steps, config.block), batch * heads)](
        qr, kr, prepared.vc, prepared.episode, lse, delta, do, gate_arg, dv if dv_partial is None else dv_partial,
        dkr, dv, dcache_v, steps, cached, heads, window, scale, **common,
    )
    dq = rotate(None, dqr, offset=cached, out=torch.empty_like(dv), add=dq_partial, inverse=True)
    dcache_k = vc.new_empty(batch, cached, heads, dim)
    dk = rotate(None, dkr, offset=0, out=torch.empty_like(dv), cache_out=dcache_k, add=dk_partial, inverse=True)
    return dq, dk, dv, dcache_k, dcache_v


class WindowAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, resets, cache_k, cache_v, cache_valid, window, scale):
        prepared = prepare(q, k, v, resets, cache_k, cache_v, cache_valid)
        o, _, lse = forward(prepared, window, scale, v.dtype)
        ctx.save_for_backward(o, lse, *prepared)
        ctx.window, ctx.scale = window, scale
        return o

    @staticmethod
    def backward(ctx, do):
        o, lse, *prepared = ctx.saved_tensors
        dq, dk, dv, dcache_k, dcache_v = backward(Prepared(*prepared), o, lse, do.contiguous(), ctx.window, ctx.scale)
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
