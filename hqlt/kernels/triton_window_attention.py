"""Sliding-window softmax attention in Triton with the same-episode mask, the previous segment's
cached keys/values and RoPE by relative distance (same contract as `reference.window_attention`).

Keys live in one concatenated position space: cache entries at 0..S-1, the segment's tokens at
S..S+T-1. Query t (position S+t) sees key p when 0 <= S+t-p < window, both are in the same episode
(episode ids are the cumulative count of resets; cache entries are episode 0) and, for cache
entries, `cache_valid`. The forward pass is flash-attention style (online softmax over key blocks)
and keeps the log-sum-exp per query; the backward pass has one kernel for dq (per query block) and
one for dk, dv (per key block), both recomputing the probabilities from the log-sum-exp.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from hqlt.kernels import reference
from hqlt.kernels.triton_delta_rule import block_size, check_inputs, dot_precision

# Most query/key rows x padded head dim per tile: at head dim 128, [64, 128] fp32 tiles with their
# pipelined copies need up to 448 KB of the H100's 227 KB of shared memory.
MAX_WINDOW_TILE = 64 * 64


@dataclass(frozen=True)
class WindowConfig:
    """How the window-attention kernels launch: rows per query block and per key block, pipelining."""

    block: int
    num_stages: int = 3
    num_warps: int = 4


def window_config(head_dim: int) -> WindowConfig:
    """Launch of the window-attention kernels for `head_dim` (the same for every input dtype: bf16
    tiles are widened to fp32 before their products). `tests/test_triton_resources.py` compiles every
    resulting launch for sm_90 and checks its shared memory."""
    return WindowConfig(block=min(64, MAX_WINDOW_TILE // block_size(head_dim)))


@functools.lru_cache(maxsize=None)
def inverse_frequencies(head_dim: int, device: torch.device) -> Tensor:
    """RoPE frequencies `[d/2]`, computed exactly as the reference does (cached: no launches per call)."""
    half = head_dim // 2
    return reference.ROPE_BASE ** (-torch.arange(half, device=device, dtype=torch.float32) / half)


def episode_ids(resets: Tensor) -> Tensor:
    """int32 `[B, T]`: number of episode starts up to and including each step (0 = the cache's episode)."""
    return torch.cumsum(resets, dim=1, dtype=torch.int32)


# ----------------------------------------------------------------------------- shared Triton helpers


@triton.jit
def rope(x, positions, inv_freq_ptr, D: tl.constexpr, BLOCK_D: tl.constexpr, INVERSE: tl.constexpr,
         PREC: tl.constexpr):
    """Rotate-half RoPE of rows x `[N, BLOCK_D]` fp32 at fp32 `positions [N]`; INVERSE applies the
    transposed rotation (for gradients). The half swap is a signed permutation matrix product."""
    cols = tl.arange(0, BLOCK_D)
    half = D // 2
    in_first_half = cols < half
    partner = tl.where(in_first_half, cols + half, cols - half)
    swap = tl.where((cols[:, None] == partner[None, :]) & (cols[None, :] < D),
                    tl.where(in_first_half, -1.0, 1.0)[None, :], 0.0)
    inv_freq = tl.load(inv_freq_ptr + cols % half, mask=cols < D, other=0.0)
    angles = positions[:, None] * inv_freq[None, :]
    cos, sin = tl.cos(angles), tl.sin(angles)
    if INVERSE:
        return x * cos - tl.dot(x * sin, swap, input_precision=PREC)
    return x * cos + tl.dot(x, swap, input_precision=PREC) * sin


@triton.jit
def load_keys(p, b, h, k_ptr, v_ptr, cache_k_ptr, cache_v_ptr, cache_valid_ptr, episode_ptr, T, S, H,
              D: tl.constexpr, BLOCK_D: tl.constexpr):
    """Keys and values `[N, BLOCK_D]` fp32 at concatenated positions p `[N]`, their episode ids and
    whether each may be attended at all (inside the sequence; for cache entries, valid)."""
    cols = tl.arange(0, BLOCK_D)
    in_cache = (p >= 0) & (p < S)
    in_segment = (p >= S) & (p < S + T)
    col_ok = cols[None, :] < D
    cache_offsets = ((b * S + p[:, None]) * H + h) * D + cols[None, :]
    segment_offsets = ((b * T + (p - S)[:, None]) * H + h) * D + cols[None, :]
    cache_mask = in_cache[:, None] & col_ok
    segment_mask = in_segment[:, None] & col_ok
    key = (tl.load(cache_k_ptr + cache_offsets, mask=cache_mask, other=0.0).to(tl.float32)
           + tl.load(k_ptr + segment_offsets, mask=segment_mask, other=0.0).to(tl.float32))
    value = (tl.load(cache_v_ptr + cache_offsets, mask=cache_mask, other=0.0).to(tl.float32)
             + tl.load(v_ptr + segment_offsets, mask=segment_mask, other=0.0).to(tl.float32))
    episode = tl.load(episode_ptr + b * T + (p - S), mask=in_segment, other=0)
    cache_valid = tl.load(cache_valid_ptr + b * S + p, mask=in_cache, other=0) != 0
    return key, value, episode, in_segment | cache_valid


@triton.jit
def attend_mask(q_pos, q_episode, k_pos, k_episode, k_ok, window):
    """Which (query, key) pairs attend; arguments already broadcast against each other."""
    distance = q_pos - k_pos
    return (distance >= 0) & (distance < window) & (q_episode == k_episode) & k_ok


@triton.jit
def window_rows(q, t, first, b, h, k_ptr, v_ptr, cache_k_ptr, cache_v_ptr, cache_valid_ptr, episode_ptr,
                inv_freq_ptr, T, S, H, window, scale,
                D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                PREC: tl.constexpr):
    """Attention output `[BLOCK_M, BLOCK_D]` fp32 and log-sum-exp `[BLOCK_M]` of raw query rows q at
    segment steps t `[BLOCK_M]` (t = first + arange; rows with t >= T are padding)."""
    q_pos = S + t
    q_episode = tl.load(episode_ptr + b * T + t, mask=t < T, other=0)
    qr = rope(q, q_pos.to(tl.float32), inv_freq_ptr, D, BLOCK_D, False, PREC)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    lo = tl.maximum(S + first - window + 1, 0)
    hi = tl.minimum(S + first + BLOCK_M, S + T)
    for start in range(lo, hi, BLOCK_N):
        p = start + tl.arange(0, BLOCK_N)
        key, value, k_episode, k_ok = load_keys(p, b, h, k_ptr, v_ptr, cache_k_ptr, cache_v_ptr, cache_valid_ptr,
                                                episode_ptr, T, S, H, D, BLOCK_D)
        kr = rope(key, p.to(tl.float32), inv_freq_ptr, D, BLOCK_D, False, PREC)
        scores = tl.dot(qr, tl.trans(kr), input_precision=PREC) * scale
        allowed = attend_mask(q_pos[:, None], q_episode[:, None], p[None, :], k_episode[None, :], k_ok[None, :],
                              window)
        scores = tl.where(allowed, scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing allowed yet
        probs = tl.exp(scores - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(probs, axis=1)
        acc = acc * alpha[:, None] + tl.dot(probs, value, input_precision=PREC)
        m_i = m_new
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    return acc / l_safe[:, None], tl.where(m_i == float("-inf"), 0.0, m_i) + tl.log(l_safe)


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _forward_kernel(
    q_ptr, k_ptr, v_ptr, cache_k_ptr, cache_v_ptr, cache_valid_ptr, episode_ptr, inv_freq_ptr, o_ptr, lse_ptr,
    T, S, H, window, scale,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PREC: tl.constexpr,
):
    pid = tl.program_id(1).to(tl.int64)
    b, h = pid // H, pid % H
    first = tl.program_id(0) * BLOCK_M
    t = first + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    offsets = ((b * T + t[:, None]) * H + h) * D + cols[None, :]
    mask = (t[:, None] < T) & (cols[None, :] < D)
    q = tl.load(q_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    o, lse = window_rows(q, t, first, b, h, k_ptr, v_ptr, cache_k_ptr, cache_v_ptr, cache_valid_ptr, episode_ptr,
                         inv_freq_ptr, T, S, H, window, scale, D, BLOCK_M, BLOCK_N, BLOCK_D, PREC)
    tl.store(o_ptr + offsets, o, mask=mask)
    tl.store(lse_ptr + pid * T + t, lse, mask=t < T)


@triton.jit
def dq_kernel(
    q_ptr, k_ptr, v_ptr, cache_k_ptr, cache_v_ptr, cache_valid_ptr, episode_ptr, inv_freq_ptr,
    o_ptr, lse_ptr, do_ptr, gate_ptr, dq_partial_ptr, dq_ptr, delta_ptr,
    T, S, H, window, scale,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_GATE: tl.constexpr, PREC: tl.constexpr,
):
    """dq for one query block; also writes delta = rowsum(dO * O) for `dkdv_kernel`. With HAS_GATE the
    attention output was mixed as (1 - gate) * o, and dq adds the fast-weight part `dq_partial`."""
    pid = tl.program_id(1).to(tl.int64)
    b, h = pid // H, pid % H
    first = tl.program_id(0) * BLOCK_M
    t = first + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    offsets = ((b * T + t[:, None]) * H + h) * D + cols[None, :]
    mask = (t[:, None] < T) & (cols[None, :] < D)
    q = tl.load(q_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    o = tl.load(o_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    do = tl.load(do_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if HAS_GATE:
        do = do * (1.0 - tl.load(gate_ptr + offsets, mask=mask, other=0.0).to(tl.float32))
    delta = tl.sum(do * o, axis=1)
    tl.store(delta_ptr + pid * T + t, delta, mask=t < T)
    lse = tl.load(lse_ptr + pid * T + t, mask=t < T, other=0.0)
    q_pos = S + t
    q_episode = tl.load(episode_ptr + b * T + t, mask=t < T, other=0)
    qr = rope(q, q_pos.to(tl.float32), inv_freq_ptr, D, BLOCK_D, False, PREC)
    dqr = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    lo = tl.maximum(S + first - window + 1, 0)
    hi = tl.minimum(S + first + BLOCK_M, S + T)
    for start in range(lo, hi, BLOCK_N):
        p = start + tl.arange(0, BLOCK_N)
        key, value, k_episode, k_ok = load_keys(p, b, h, k_ptr, v_ptr, cache_k_ptr, cache_v_ptr, cache_valid_ptr,
                                                episode_ptr, T, S, H, D, BLOCK_D)
        kr = rope(key, p.to(tl.float32), inv_freq_ptr, D, BLOCK_D, False, PREC)
        scores = tl.dot(qr, tl.trans(kr), input_precision=PREC) * scale
        allowed = attend_mask(q_pos[:, None], q_episode[:, None], p[None, :], k_episode[None, :], k_ok[None, :],
                              window)
        probs = tl.where(allowed, tl.exp(scores - lse[:, None]), 0.0)
        dprobs = tl.dot(do, tl.trans(value), input_precision=PREC)
        dqr += tl.dot(probs * (dprobs - delta[:, None]), kr, input_precision=PREC)
    dq = rope(dqr * scale, q_pos.to(tl.float32), inv_freq_ptr, D, BLOCK_D, True, PREC)
    if HAS_GATE:
        dq += tl.load(dq_partial_ptr + offsets, mask=mask, other=0.0)
    tl.store(dq_ptr + offsets, dq, mask=mask)


@triton.jit
def dkdv_kernel(
    q_ptr, k_ptr, v_ptr, cache_k_ptr, cache_v_ptr, cache_valid_ptr, episode_ptr, inv_freq_ptr,
    lse_ptr, delta_ptr, do_ptr, gate_ptr, dk_partial_ptr, dv_partial_ptr, dk_ptr, dv_ptr, dcache_k_ptr, dcache_v_ptr,
    T, S, H, window, scale,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_GATE: tl.constexpr, PREC: tl.constexpr,
):
    """dk, dv for one block of concatenated key positions (cache entries go to dcache_k/dcache_v).
    With HAS_GATE the fast-weight parts `dk_partial`, `dv_partial` are added for segment keys."""
    pid = tl.program_id(1).to(tl.int64)
    b, h = pid // H, pid % H
    first = tl.program_id(0) * BLOCK_N
    p = first + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_D)
    key, value, k_episode, k_ok = load_keys(p, b, h, k_ptr, v_ptr, cache_k_ptr, cache_v_ptr, cache_valid_ptr,
                                            episode_ptr, T, S, H, D, BLOCK_D)
    kr = rope(key, p.to(tl.float32), inv_freq_ptr, D, BLOCK_D, False, PREC)
    dkr = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    lo = tl.maximum(first - S, 0)
    hi = tl.minimum(first + BLOCK_N - 1 + window - S, T)
    for start in range(lo, hi, BLOCK_M):
        t = start + tl.arange(0, BLOCK_M)
        offsets = ((b * T + t[:, None]) * H + h) * D + cols[None, :]
        mask = (t[:, None] < T) & (cols[None, :] < D)
        q = tl.load(q_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        do = tl.load(do_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        if HAS_GATE:
            do = do * (1.0 - tl.load(gate_ptr + offsets, mask=mask, other=0.0).to(tl.float32))
        lse = tl.load(lse_ptr + pid * T + t, mask=t < T, other=0.0)
        delta = tl.load(delta_ptr + pid * T + t, mask=t < T, other=0.0)
        q_pos = S + t
        q_episode = tl.load(episode_ptr + b * T + t, mask=t < T, other=0)
        qr = rope(q, q_pos.to(tl.float32), inv_freq_ptr, D, BLOCK_D, False, PREC)
        scores_t = tl.dot(kr, tl.trans(qr), input_precision=PREC) * scale  # [keys, queries]
        allowed = attend_mask(q_pos[None, :], q_episode[None, :], p[:, None], k_episode[:, None], k_ok[:, None],
                              window) & (t < T)[None, :]
        probs_t = tl.where(allowed, tl.exp(scores_t - lse[None, :]), 0.0)
        dv += tl.dot(probs_t, do, input_precision=PREC)
        dprobs_t = tl.dot(value, tl.trans(do), input_precision=PREC)
        dkr += tl.dot(probs_t * (dprobs_t - delta[None, :]), qr, input_precision=PREC)
    dk = rope(dkr * scale, p.to(tl.float32), inv_freq_ptr, D, BLOCK_D, True, PREC)
    col_ok = cols[None, :] < D
    in_cache = (p < S)[:, None] & col_ok
    in_segment = ((p >= S) & (p < S + T))[:, None] & col_ok
    segment_offsets = ((b * T + (p - S)[:, None]) * H + h) * D + cols[None, :]
    cache_offsets = ((b * S + p[:, None]) * H + h) * D + cols[None, :]
    if HAS_GATE:
        dk += tl.load(dk_partial_ptr + segment_offsets, mask=in_segment, other=0.0)
        dv += tl.load(dv_partial_ptr + segment_offsets, mask=in_segment, other=0.0)
    tl.store(dk_ptr + segment_offsets, dk, mask=in_segment)
    tl.store(dv_ptr + segment_offsets, dv, mask=in_segment)
    tl.store(dcache_k_ptr + cache_offsets, dk, mask=in_cache)
    tl.store(dcache_v_ptr + cache_offsets, dv, mask=in_cache)


# ----------------------------------------------------------------------------- launchers


def backward(q: Tensor, k: Tensor, v: Tensor, cache_k: Tensor, cache_v: Tensor, cache_valid: Tensor,
             episode: Tensor, o: Tensor, lse: Tensor, do: Tensor, window: int, scale: float,
             gate: Tensor | None = None, partial: tuple[Tensor, Tensor, Tensor] | None = None) -> tuple[Tensor, ...]:
    """dq, dk, dv `[B, T, H, d]` and dcache_k, dcache_v `[B, S, H, d]` of the window attention whose
    output o (fp32 or input dtype) and log-sum-exp `[B, H, T]` the forward pass kept. For Synchronous
    HQLT, `gate` scales dO by (1 - gate) and `partial` = (dq, dk, dv) fp32 of the fast-weight memory
    are added in."""
    batch, steps, heads, dim = q.shape
    cached = cache_k.shape[1]
    inv_freq = inverse_frequencies(dim, q.device)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dcache_k, dcache_v = torch.empty_like(cache_k), torch.empty_like(cache_v)
    delta = torch.empty_like(lse)
    has_gate = gate is not None
    dq_partial, dk_partial, dv_partial = partial if partial is not None else (dq, dk, dv)
    config = window_config(dim)
    common = dict(D=dim, BLOCK_M=config.block, BLOCK_N=config.block, BLOCK_D=block_size(dim), HAS_GATE=has_gate,
                  PREC=dot_precision(q.dtype), num_warps=config.num_warps, num_stages=config.num_stages)
    gate_arg = gate if has_gate else do
    dq_kernel[(triton.cdiv(steps, config.block), batch * heads)](
        q, k, v, cache_k, cache_v, cache_valid, episode, inv_freq, o, lse, do, gate_arg, dq_partial, dq, delta,
        steps, cached, heads, window, scale, **common,
    )
    dkdv_kernel[(triton.cdiv(cached + steps, config.block), batch * heads)](
        q, k, v, cache_k, cache_v, cache_valid, episode, inv_freq, lse, delta, do, gate_arg, dk_partial, dv_partial,
        dk, dv, dcache_k, dcache_v, steps, cached, heads, window, scale, **common,
    )
    return dq, dk, dv, dcache_k, dcache_v


class WindowAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, resets, cache_k, cache_v, cache_valid, window, scale):
        batch, steps, heads, dim = q.shape
        episode = episode_ids(resets)
        o = torch.empty_like(v)
        lse = torch.empty(batch, heads, steps, device=q.device, dtype=torch.float32)
        config = window_config(dim)
        _forward_kernel[(triton.cdiv(steps, config.block), batch * heads)](
            q, k, v, cache_k, cache_v, cache_valid, episode, inverse_frequencies(dim, q.device), o, lse,
            steps, cache_k.shape[1], heads, window, scale,
            D=dim, BLOCK_M=config.block, BLOCK_N=config.block, BLOCK_D=block_size(dim), PREC=dot_precision(q.dtype),
            num_warps=config.num_warps, num_stages=config.num_stages,
        )
        ctx.save_for_backward(q, k, v, cache_k, cache_v, cache_valid, episode, o, lse)
        ctx.window, ctx.scale = window, scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, cache_k, cache_v, cache_valid, episode, o, lse = ctx.saved_tensors
        dq, dk, dv, dcache_k, dcache_v = backward(
            q, k, v, cache_k, cache_v, cache_valid, episode, o, lse, do.contiguous(), ctx.window, ctx.scale
        )
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
