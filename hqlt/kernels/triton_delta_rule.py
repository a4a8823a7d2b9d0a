"""Chunkwise delta rule in Triton, with episode resets applied inside the kernels (DESIGN §4).

Per chunk of C tokens (phi = SiLU then L2 norm, applied in-kernel; S the state entering the chunk):

    A = strictly_lower(diag(beta) K K^T * M),   T = (I + A)^-1
    W = T diag(beta c) K,   U0 = T diag(beta) V,   U = U0 - W S
    O = scale (diag(c) Q S + (Q K^T * M * lower_incl) U),   S_next = carry S + K^T diag(m) U

with M the same-episode mask, c the "still in the incoming state's episode" flags, m the last
token's row of M and carry "no reset in the chunk". Everything that needs the [C, C] inverse (W, U0)
is computed for all chunks in parallel; only the state recurrence walks the chunks, and it splits
the value columns over programs (each column of S evolves on its own). The backward pass mirrors
this: a reverse walk carries dS (columns split again) and stores it per chunk, then every chunk's
gradients are computed in parallel from its stored S, dS_next and T.

Matrix products accumulate in fp32. For 16-bit inputs the per-chunk gradient kernel rounds most of
its operands to the inputs' dtype (see `dot_dtype`); the other kernels multiply fp32 operands at
tf32. fp32 inputs take three-pass tf32 products, or one-pass tf32 where torch allows TF32 for fp32
matrix products. Stored states, W, U0 and T stay fp32 either way.
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

CHUNK_SIZES = (16, 32, 64)
MAX_HEAD_DIM = 128
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

_L2_EPS = tl.constexpr(reference.L2_EPS)
# Largest chunk x padded head dim the chunk kernels run: the backward's per-chunk kernel holds about
# twenty [C, d] / [C, C] fp32 tiles at once. Its three-pass fp32 products need the smaller tile: on an
# H200, fp32 fwd+bwd at 256 x 128, d=64 took 10.1 ms with chunk 32 and 1.4 ms with chunk 16.
MAX_CHUNK_TILE = {torch.float32: 16 * 64, torch.bfloat16: 32 * 64, torch.float16: 32 * 64}
# Value columns per program of the state walks (narrower blocks give more programs, but the walks are
# not the bottleneck: 64 was fastest on an H200 at 256 x 128 and at 32 x 1024).
STATE_VALUE_BLOCK = 64


@dataclass(frozen=True)
class ChunkConfig:
    """How the delta-rule kernels of one op call launch (forward and backward use the same chunks)."""

    chunk: int  # the chunk the kernels run (the chunkwise form is exact for any chunk: rounding only)
    value_block: int  # value columns per program of the state walks
    num_stages: int = 2  # software pipelining of the state walks' chunk loop
    num_warps: int = 4


@functools.lru_cache(maxsize=None)
def chunk_config(chunk_size: int, head_dims: tuple[int, ...], dtype: torch.dtype) -> ChunkConfig:
    """The launch of the delta-rule kernels for `head_dims` (dk, dv) and `dtype` inputs: the requested
    chunk, capped so that the per-chunk tiles fit. `tests/test_triton_resources.py` compiles every
    resulting launch for sm_90 and checks its shared memory."""
    block = max(block_size(d) for d in head_dims)
    chunk = max(16, min(chunk_size, MAX_CHUNK_TILE[dtype] // block))
    value_block = min(block_size(head_dims[-1]), STATE_VALUE_BLOCK)
    return ChunkConfig(chunk=chunk, value_block=value_block, num_stages=1 if block >= 128 else 2)


def dot_dtype(dtype: torch.dtype, sixteen_bit_operands: bool) -> str:
    """The `DOT_DTYPE` of a kernel's products for `dtype` inputs (see `dot`). fp32 inputs: "tf32" where
    torch lets fp32 matrix products use TF32 (`torch.backends.cuda.matmul.allow_tf32`, which the
    trainer's `tf32` key sets, as it does for the projections and cuDNN), else "fp32" (three-pass,
    about fp32 accuracy). 16-bit inputs: their own dtype's name with `sixteen_bit_operands`, else
    "tf32" (fp32 operands).

    The window-attention kernels and the per-chunk gradient kernel take 16-bit operands (on an H200 at
    256 x 128, d=64: window dq 170 -> 119 us, dk/dv 210 -> 146 us; per-chunk gradients 372 -> 285 us).
    In the prepare kernel and the state walks they cost the most accuracy (relative error of the
    final state 1e-7 -> 3e-3 on random keys, 1e-2 on similar keys) and gained about 80 us, and at
    chunk 64 they gave an illegal memory access under Triton 3.6 at d=16."""
    if dtype == torch.float32:
        return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32"
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype] if sixteen_bit_operands else "tf32"


def block_size(dim: int) -> int:
    """Padded tile width for a head dimension (a power of two, at least 16 for tensor-core products)."""
    return max(16, 1 << (dim - 1).bit_length())


def ceil_div(a: int, b: int) -> int:
    """Programs of `b` rows that cover `a` rows (plain integers: the launchers run on every call, and
    Triton's own `cdiv` is a constexpr function, several times slower from host code)."""
    return -(-a // b)


def check_inputs(op: str, dtype: torch.dtype, head_dims: tuple[int, ...], chunk_size: int | None = None) -> None:
    """Clear errors for what the kernels do not cover (the reference backend covers everything)."""
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{op}: Triton kernels take float32, bfloat16 or float16 inputs, got {dtype}; "
                         "use backend='reference' for other dtypes")
    if max(head_dims) > MAX_HEAD_DIM:
        raise ValueError(f"{op}: head dims {head_dims} exceed the Triton kernels' limit of {MAX_HEAD_DIM}")
    if chunk_size is not None and chunk_size not in CHUNK_SIZES:
        raise ValueError(f"{op}: chunk_size must be one of {CHUNK_SIZES} for the Triton kernels, got {chunk_size}")


# ----------------------------------------------------------------------------- shared Triton helpers


@triton.jit
def operand(x, DOT_DTYPE: tl.constexpr):
    """x rounded as `dot` rounds its operands for `DOT_DTYPE` ("bf16", "fp16"; unchanged otherwise). A
    tile that two products take (one of them transposed), rounded once before them, is stored to
    shared memory once for both; rounded by each product, Triton recomputes it in the other layout."""
    if DOT_DTYPE == "bf16" or DOT_DTYPE == "fp16":
        x = x.to(tl.dtype(DOT_DTYPE))
    return x


@triton.jit
def dot(a, b, DOT_DTYPE: tl.constexpr, FP32_OPERANDS: tl.constexpr = False):
    """a `[M, K]` @ b `[K, N]` accumulated in fp32, by `DOT_DTYPE` (see `dot_dtype`): "fp32" (fp32
    inputs) three-pass tf32, about fp32 accuracy; "tf32" fp32 operands at tf32; "bf16" or "fp16" both
    operands rounded to that dtype, as the inputs were (half the registers of fp32 operands, twice
    the tensor-core rate), unless FP32_OPERANDS keeps them fp32 at tf32 for a product whose rounding
    costs the results most accuracy."""
    if DOT_DTYPE == "fp32":
        return tl.dot(a, b, input_precision="tf32x3")
    elif FP32_OPERANDS or DOT_DTYPE == "tf32":
        return tl.dot(a, b, input_precision="tf32")
    else:
        return tl.dot(operand(a, DOT_DTYPE), operand(b, DOT_DTYPE))


@triton.jit
def feature_map(x):
    """phi(x) = SiLU(x) / max(||SiLU(x)||, eps) per row of `[N, D]` fp32 (zero padding stays zero)."""
    s = x * tl.sigmoid(x)
    norm = tl.sqrt(tl.sum(s * s, axis=1))
    return s / tl.maximum(norm, _L2_EPS)[:, None]


@triton.jit
def feature_map_backward(x, grad):
    """Gradient of `feature_map` at rows x `[N, D]` given the output gradient `[N, D]`."""
    sig = tl.sigmoid(x)
    s = x * sig
    norm = tl.sqrt(tl.sum(s * s, axis=1))
    inv_norm = 1.0 / tl.maximum(norm, _L2_EPS)
    y = s * inv_norm[:, None]
    # Below eps the norm is clamped to a constant, so no projection term.
    along = tl.where(norm > _L2_EPS, tl.sum(y * grad, axis=1), 0.0)
    grad_s = (grad - y * along[:, None]) * inv_norm[:, None]
    return grad_s * sig * (1.0 + x * (1.0 - sig))


@triton.jit
def chunk_episodes(resets):
    """Episode bookkeeping for one chunk of int32 resets `[C]` (0 on padding rows).

    Returns continues `[C]` (token still in the incoming state's episode), same `[C, C]`
    (tokens share an episode), in_last `[C]` (token shares the last token's episode) and
    carry (scalar: the incoming state survives the whole chunk).
    """
    episode = tl.cumsum(resets, axis=0)
    last = tl.max(episode, axis=0)
    return episode == 0, episode[:, None] == episode[None, :], episode == last, last == 0


@triton.jit
def unit_lower_inverse(a, CHUNK: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """(I + a)^-1 for strictly lower triangular a `[C, C]` fp32 (C <= 64), by doubling the inverted
    diagonal blocks: with X inverting every diagonal block of size s, X - X (a on the lower-left
    s-blocks of each 2s-block) X inverts the 2s-blocks, as [[A, 0], [L, B]]^-1 = [[A^-1, 0],
    [-B^-1 L A^-1, B^-1]]. log2(C) steps of two products. Only the prepare kernel calls it, whose
    products keep fp32 operands (see `dot_dtype`): with similar keys in a chunk the inverse's
    entries cancel, and 16-bit operands doubled dk's error there.
    """
    rows = tl.arange(0, CHUNK)
    inverse = tl.where(rows[:, None] == rows[None, :], 1.0, 0.0)
    for level in tl.static_range(6):
        if (1 << level) < CHUNK:
            same_pair = (rows[:, None] >> (level + 1)) == (rows[None, :] >> (level + 1))
            lower_left = same_pair & (((rows[:, None] >> level) & 1) == 1) & (((rows[None, :] >> level) & 1) == 0)
            inverse -= dot(dot(inverse, tl.where(lower_left, a, 0.0), DOT_DTYPE), inverse, DOT_DTYPE)
    return inverse


@triton.jit
def token_offsets(b, t, h, T, H, D, cols):
    """Element offsets `[C, BLOCK]` of rows t, columns `cols` of a contiguous `[B, T, H, D]` tensor."""
    return ((b * T + t[:, None]) * H + h) * D + cols[None, :]


@triton.jit
def load_rows(ptr, b, t, h, T, H, D, cols, mask):
    """Rows t, columns `cols` of a `[B, T, H, D]` tensor as fp32 `[C, BLOCK]` (0 outside `mask`)."""
    return tl.load(ptr + token_offsets(b, t, h, T, H, D, cols), mask=mask, other=0.0).to(tl.float32)


@triton.jit
def state_columns(DK: tl.constexpr, DV: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_V: tl.constexpr):
    """The state walks' share of a `[dk, dv]` state: value columns [BLOCK_V * program_id(1), ...).
    Returns the key and value column indices, the block's offsets in one state and its mask."""
    ck = tl.arange(0, BLOCK_DK)
    cv = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    return ck, cv, ck[:, None] * DV + cv[None, :], (ck[:, None] < DK) & (cv[None, :] < DV)


@triton.jit
def walk_chunk(n, q_ptr, k_ptr, w_ptr, resets_ptr, b, h, T, H, ck, cv,
               DK: tl.constexpr, DV: tl.constexpr, CHUNK: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """What both state walks read of chunk n: its steps t `[C]`, the value-column mask `[C, BLOCK_V]`,
    phi(q), phi(k), W `[C, dk]`, the episode flags and the causal same-episode scores phi(q) phi(k)^T."""
    rows = tl.arange(0, CHUNK)
    t = n * CHUNK + rows
    valid = t < T
    k_mask = valid[:, None] & (ck[None, :] < DK)
    qn = feature_map(load_rows(q_ptr, b, t, h, T, H, DK, ck, k_mask))
    kn = feature_map(load_rows(k_ptr, b, t, h, T, H, DK, ck, k_mask))
    w = load_rows(w_ptr, b, t, h, T, H, DK, ck, k_mask)
    continues, same, in_last, carry = chunk_episodes(tl.load(resets_ptr + b * T + t, mask=valid, other=0).to(tl.int32))
    scores = tl.where((rows[:, None] >= rows[None, :]) & same, dot(qn, tl.trans(kn), DOT_DTYPE), 0.0)
    return t, valid[:, None] & (cv[None, :] < DV), qn, kn, w, continues, in_last, carry, scores


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _prepare_kernel(
    k_ptr, v_ptr, beta_ptr, resets_ptr, w_ptr, u0_ptr, inverses_ptr,
    T, H,
    DK: tl.constexpr, DV: tl.constexpr, CHUNK: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
    STORE_INVERSES: tl.constexpr, DOT_DTYPE: tl.constexpr,
):
    """W = T diag(beta c) K and U0 = T diag(beta) V of one chunk (fp32, token layout) and, if asked,
    T itself `[B, H, NC, C, C]` for the backward pass."""
    n = tl.program_id(0)
    pid = tl.program_id(1).to(tl.int64)
    b, h = pid // H, pid % H
    rows = tl.arange(0, CHUNK)
    t = n * CHUNK + rows
    valid = t < T
    ck, cv = tl.arange(0, BLOCK_DK), tl.arange(0, BLOCK_DV)
    k_mask = valid[:, None] & (ck[None, :] < DK)
    v_mask = valid[:, None] & (cv[None, :] < DV)
    kn = feature_map(load_rows(k_ptr, b, t, h, T, H, DK, ck, k_mask))
    v = load_rows(v_ptr, b, t, h, T, H, DV, cv, v_mask)
    beta = tl.load(beta_ptr + (b * T + t) * H + h, mask=valid, other=0.0).to(tl.float32)
    resets = tl.load(resets_ptr + b * T + t, mask=valid, other=0).to(tl.int32)
    continues, same, _, _ = chunk_episodes(resets)
    kk = dot(kn, tl.trans(kn), DOT_DTYPE)
    a = tl.where((rows[:, None] > rows[None, :]) & same, beta[:, None] * kk, 0.0)
    inverse = unit_lower_inverse(a, CHUNK, DOT_DTYPE)
    w = dot(inverse, tl.where(continues, beta, 0.0)[:, None] * kn, DOT_DTYPE)
    u0 = dot(inverse, beta[:, None] * v, DOT_DTYPE)
    tl.store(w_ptr + token_offsets(b, t, h, T, H, DK, ck), w, mask=k_mask)
    tl.store(u0_ptr + token_offsets(b, t, h, T, H, DV, cv), u0, mask=v_mask)
    if STORE_INVERSES:
        chunk_offset = (pid * tl.cdiv(T, CHUNK) + n) * CHUNK * CHUNK
        tl.store(inverses_ptr + chunk_offset + rows[:, None] * CHUNK + rows[None, :], inverse)


@triton.jit
def _forward_walk_kernel(
    q_ptr, k_ptr, w_ptr, u0_ptr, resets_ptr, state_ptr, o_ptr, final_ptr, chunk_states_ptr,
    T, H, scale,
    DK: tl.constexpr, DV: tl.constexpr, CHUNK: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_V: tl.constexpr,
    STORE_CHUNK_STATES: tl.constexpr, DOT_DTYPE: tl.constexpr,
):
    """The state walk over the chunks for value columns [BLOCK_V * program_id(1), ...): outputs,
    final state and (if asked) the state entering every chunk `[B, H, NC, dk, dv]`."""
    pid = tl.program_id(0).to(tl.int64)
    b, h = pid // H, pid % H
    ck, cv, state_offsets, state_mask = state_columns(DK, DV, BLOCK_DK, BLOCK_V)
    state = tl.load(state_ptr + pid * DK * DV + state_offsets, mask=state_mask, other=0.0)
    num_chunks = tl.cdiv(T, CHUNK)
    for n in range(num_chunks):
        t, v_mask, qn, kn, w, continues, in_last, carry, scores = walk_chunk(
            n, q_ptr, k_ptr, w_ptr, resets_ptr, b, h, T, H, ck, cv, DK, DV, CHUNK, DOT_DTYPE)
        if STORE_CHUNK_STATES:
            tl.store(chunk_states_ptr + (pid * num_chunks + n) * DK * DV + state_offsets, state, mask=state_mask)
        u = load_rows(u0_ptr, b, t, h, T, H, DV, cv, v_mask) - dot(w, state, DOT_DTYPE)
        from_state = tl.where(continues[:, None], dot(qn, state, DOT_DTYPE), 0.0)
        o = (from_state + dot(scores, u, DOT_DTYPE)) * scale
        tl.store(o_ptr + token_offsets(b, t, h, T, H, DV, cv), o, mask=v_mask)
        state = tl.where(carry, state, 0.0) + dot(tl.trans(kn), tl.where(in_last[:, None], u, 0.0), DOT_DTYPE)
    tl.store(final_ptr + pid * DK * DV + state_offsets, state, mask=state_mask)


@triton.jit
def _state_gradient_kernel(
    q_ptr, k_ptr, w_ptr, resets_ptr, do_ptr, gate_ptr, dfinal_ptr, dstates_ptr, dinitial_ptr,
    T, H, scale,
    DK: tl.constexpr, DV: tl.constexpr, CHUNK: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_V: tl.constexpr,
    HAS_GATE: tl.constexpr, DOT_DTYPE: tl.constexpr,
):
    """The reverse walk carrying dS (value columns split as in `_forward_walk_kernel`): stores the gradient
    of the state leaving every chunk `[B, H, NC, dk, dv]` and the initial state's gradient. With
    HAS_GATE the output was gate * o_FW + ..., so the incoming gradient is scaled by the gate."""
    pid = tl.program_id(0).to(tl.int64)
    b, h = pid // H, pid % H
    ck, cv, state_offsets, state_mask = state_columns(DK, DV, BLOCK_DK, BLOCK_V)
    dstate = tl.load(dfinal_ptr + pid * DK * DV + state_offsets, mask=state_mask, other=0.0)
    num_chunks = tl.cdiv(T, CHUNK)
    for i in range(num_chunks):
        n = num_chunks - 1 - i
        t, v_mask, qn, kn, w, continues, in_last, carry, scores = walk_chunk(
            n, q_ptr, k_ptr, w_ptr, resets_ptr, b, h, T, H, ck, cv, DK, DV, CHUNK, DOT_DTYPE)
        tl.store(dstates_ptr + (pid * num_chunks + n) * DK * DV + state_offsets, dstate, mask=state_mask)
        g = load_rows(do_ptr, b, t, h, T, H, DV, cv, v_mask) * scale
        if HAS_GATE:
            g = g * load_rows(gate_ptr, b, t, h, T, H, DV, cv, v_mask)
        du = dot(tl.trans(scores), g, DOT_DTYPE)
        du += tl.where(in_last[:, None], dot(kn, dstate, DOT_DTYPE), 0.0)
        dstate = (tl.where(carry, dstate, 0.0)
                  + dot(tl.trans(qn), tl.where(continues[:, None], g, 0.0), DOT_DTYPE)
                  - dot(tl.trans(w), du, DOT_DTYPE))
    tl.store(dinitial_ptr + pid * DK * DV + state_offsets, dstate, mask=state_mask)


@triton.jit
def chunk_gradient_kernel(
    q_ptr, k_ptr, v_ptr, beta_ptr, resets_ptr, chunk_states_ptr, dstates_ptr, inverses_ptr, do_ptr,
    gate_ptr, o_kv_ptr,
    dq_ptr, dk_ptr, dv_ptr, dbeta_ptr, dgate_ptr,
    T, H, scale,
    DK: tl.constexpr, DV: tl.constexpr, CHUNK: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
    HAS_GATE: tl.constexpr, DOT_DTYPE: tl.constexpr,
):
    """dq, dk, dv, dbeta of one chunk from the state S entering it, the gradient dS_next of the
    state leaving it and its T = (I + A)^-1 (all stored by the earlier kernels). With HAS_GATE the
    output was gate * o_FW + (1 - gate) * o_KV: the incoming gradient is scaled by the gate and the
    gate's own gradient is written too.

    The kernel holds many tiles, so it keeps their live ranges short (spilled registers cost more
    than loading again from L2): S and dS_next are loaded again, transposed, for their late
    products, and q, k again for the feature map's backward."""
    n = tl.program_id(0)
    pid = tl.program_id(1).to(tl.int64)
    b, h = pid // H, pid % H
    num_chunks = tl.cdiv(T, CHUNK)
    rows = tl.arange(0, CHUNK)
    t = n * CHUNK + rows
    valid = t < T
    ck, cv = tl.arange(0, BLOCK_DK), tl.arange(0, BLOCK_DV)
    k_mask = valid[:, None] & (ck[None, :] < DK)
    v_mask = valid[:, None] & (cv[None, :] < DV)
    state_at = (pid * num_chunks + n) * DK * DV
    state_offsets = ck[:, None] * DV + cv[None, :]
    state_mask = (ck[:, None] < DK) & (cv[None, :] < DV)
    beta = tl.load(beta_ptr + (b * T + t) * H + h, mask=valid, other=0.0).to(tl.float32)
    continues, same, in_last, carry = chunk_episodes(tl.load(resets_ptr + b * T + t, mask=valid, other=0).to(tl.int32))
    causal = (rows[:, None] >= rows[None, :]) & same
    inverse = tl.load(inverses_ptr + (pid * num_chunks + n) * CHUNK * CHUNK + rows[:, None] * CHUNK + rows[None, :])

    # Recompute the chunk's forward quantities: U = T diag(beta) (V - diag(c) K S).
    qn = feature_map(load_rows(q_ptr, b, t, h, T, H, DK, ck, k_mask))
    kn = feature_map(load_rows(k_ptr, b, t, h, T, H, DK, ck, k_mask))
    state = tl.load(chunk_states_ptr + state_at + state_offsets, mask=state_mask, other=0.0)
    qs = tl.where(continues[:, None], dot(qn, state, DOT_DTYPE), 0.0)
    residual = (load_rows(v_ptr, b, t, h, T, H, DV, cv, v_mask)
                - tl.where(continues[:, None], dot(kn, state, DOT_DTYPE), 0.0))
    u = dot(inverse, beta[:, None] * residual, DOT_DTYPE)
    scores = tl.where(causal, dot(qn, tl.trans(kn), DOT_DTYPE), 0.0)
    do = load_rows(do_ptr, b, t, h, T, H, DV, cv, v_mask)
    if HAS_GATE:
        o_fw = (qs + dot(scores, u, DOT_DTYPE)) * scale
        tl.store(dgate_ptr + token_offsets(b, t, h, T, H, DV, cv),
                 do * (o_fw - load_rows(o_kv_ptr, b, t, h, T, H, DV, cv, v_mask)), mask=v_mask)
        do = do * load_rows(gate_ptr, b, t, h, T, H, DV, cv, v_mask)
    g = do * scale

    # Backward through O, S_next and U = T R (R = diag(beta) residual).
    # dU at fp32 operands: its rounding reaches dv, dbeta and dk through T^T, the most of any product.
    du = dot(tl.trans(scores), g, DOT_DTYPE, True)
    dstate = tl.load(dstates_ptr + state_at + state_offsets, mask=state_mask, other=0.0)
    du += tl.where(in_last[:, None], dot(kn, dstate, DOT_DTYPE, True), 0.0)
    drhs = dot(tl.trans(inverse), du, DOT_DTYPE)
    tl.store(dv_ptr + token_offsets(b, t, h, T, H, DV, cv), beta[:, None] * drhs, mask=v_mask)
    da = tl.where((rows[:, None] > rows[None, :]) & same, -dot(drhs, tl.trans(u), DOT_DTYPE), 0.0)
    kk = dot(kn, tl.trans(kn), DOT_DTYPE)
    tl.store(dbeta_ptr + (b * T + t) * H + h, tl.sum(drhs * residual, axis=1) + tl.sum(da * kk, axis=1), mask=valid)

    # Backward through A = beta K K^T, the scores and the products with S and dS_next.
    dkk = beta[:, None] * da
    d_scores = tl.where(causal, dot(g, tl.trans(u), DOT_DTYPE), 0.0)
    state_t_offsets = ck[None, :] * DV + cv[:, None]
    state_t_mask = (ck[None, :] < DK) & (cv[:, None] < DV)
    state_t = tl.load(chunk_states_ptr + state_at + state_t_offsets, mask=state_t_mask, other=0.0)
    dqn = dot(tl.where(continues[:, None], g, 0.0), state_t, DOT_DTYPE) + dot(d_scores, kn, DOT_DTYPE)
    tl.store(dq_ptr + token_offsets(b, t, h, T, H, DK, ck),
             feature_map_backward(load_rows(q_ptr, b, t, h, T, H, DK, ck, k_mask), dqn), mask=k_mask)
    dkn = dot(tl.trans(d_scores), qn, DOT_DTYPE) + dot(dkk, kn, DOT_DTYPE) + dot(tl.trans(dkk), kn, DOT_DTYPE)
    dkn -= dot(tl.where(continues, beta, 0.0)[:, None] * drhs, state_t, DOT_DTYPE)
    dstate_t = tl.load(dstates_ptr + state_at + state_t_offsets, mask=state_t_mask, other=0.0)
    dkn += dot(tl.where(in_last[:, None], u, 0.0), dstate_t, DOT_DTYPE)
    tl.store(dk_ptr + token_offsets(b, t, h, T, H, DK, ck),
             feature_map_backward(load_rows(k_ptr, b, t, h, T, H, DK, ck, k_mask), dkn), mask=k_mask)


# ----------------------------------------------------------------------------- launchers


class Saved(NamedTuple):
    """What the forward kernels keep for the backward ones (fp32): the chunk-start states
    `[B, H, NC, dk, dv]`, W `[B, T, H, dk]` and the chunks' T = (I + A)^-1 `[B, H, NC, C, C]`."""

    chunk_states: Tensor
    w: Tensor
    inverses: Tensor


def forward(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, resets: Tensor, state: Tensor, scale: float,
            config: ChunkConfig, save_for_backward: bool,
            out_dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor, Saved | None]:
    """Launch the forward kernels on contiguous inputs (q, k `[B, T, H, dk]`, v `[B, T, H, dv]`,
    beta `[B, T, H]`, resets `[B, T]`, fp32 state `[B, H, dk, dv]`). Returns o `[B, T, H, dv]` in
    `out_dtype` (default v's), the final state and, if asked, what the backward pass needs."""
    batch, steps, heads, dk = q.shape
    dv = v.shape[-1]
    num_chunks = ceil_div(steps, config.chunk)
    common = dict(DK=dk, DV=dv, CHUNK=config.chunk, BLOCK_DK=block_size(dk), DOT_DTYPE=dot_dtype(q.dtype, False),
                  num_warps=config.num_warps)
    w = torch.empty(q.shape, device=q.device, dtype=torch.float32)
    u0 = torch.empty(v.shape, device=q.device, dtype=torch.float32)
    inverses = w.new_empty(batch, heads, num_chunks, config.chunk, config.chunk) if save_for_backward else w
    _prepare_kernel[(num_chunks, batch * heads)](k, v, beta, resets, w, u0, inverses, steps, heads,
                                                 BLOCK_DV=block_size(dv), STORE_INVERSES=save_for_backward, **common)
    o = torch.empty_like(v, dtype=out_dtype or v.dtype)
    final = torch.empty_like(state)
    chunk_states = state.new_empty(batch, heads, num_chunks, dk, dv) if save_for_backward else final
    _forward_walk_kernel[(batch * heads, ceil_div(dv, config.value_block))](
        q, k, w, u0, resets, state, o, final, chunk_states, steps, heads, scale,
        BLOCK_V=config.value_block, STORE_CHUNK_STATES=save_for_backward, num_stages=config.num_stages, **common,
    )
    return o, final, Saved(chunk_states, w, inverses) if save_for_backward else None


def backward(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, resets: Tensor, saved: Saved, do: Tensor,
             dfinal: Tensor, scale: float, config: ChunkConfig, gate: Tensor | None = None,
             o_kv: Tensor | None = None, grad_dtype: torch.dtype | None = None) -> tuple[Tensor, ...]:
    """Launch the backward kernels with the forward's `config` and `saved` results. Returns dq, dk, dv
    (in `grad_dtype`, default the inputs' dtypes), dbeta, dstate (fp32) and, when `gate` is given
    (Synchronous HQLT), dgate."""
    batch, steps, heads, dk = q.shape
    dv_dim = v.shape[-1]
    num_chunks = ceil_div(steps, config.chunk)
    has_gate = gate is not None
    common = dict(DK=dk, DV=dv_dim, CHUNK=config.chunk, BLOCK_DK=block_size(dk), HAS_GATE=has_gate,
                  num_warps=config.num_warps)
    dstates = torch.empty_like(saved.chunk_states)
    dstate = torch.empty_like(dfinal)
    _state_gradient_kernel[(batch * heads, ceil_div(dv_dim, config.value_block))](
        q, k, saved.w, resets, do, gate if has_gate else do, dfinal, dstates, dstate, steps, heads, scale,
        BLOCK_V=config.value_block, num_stages=config.num_stages, DOT_DTYPE=dot_dtype(q.dtype, False), **common,
    )
    dq = torch.empty_like(q, dtype=grad_dtype or q.dtype)
    dk_ = torch.empty_like(k, dtype=grad_dtype or k.dtype)
    dv = torch.empty_like(v, dtype=grad_dtype or v.dtype)
    dbeta = torch.empty_like(beta)
    dgate = torch.empty_like(gate) if has_gate else None
    chunk_gradient_kernel[(num_chunks, batch * heads)](
        q, k, v, beta, resets, saved.chunk_states, dstates, saved.inverses, do,
        gate if has_gate else do, o_kv if o_kv is not None else do,
        dq, dk_, dv, dbeta, dgate if has_gate else dq,
        steps, heads, scale, BLOCK_DV=block_size(dv_dim), DOT_DTYPE=dot_dtype(q.dtype, True), **common,
    )
    return (dq, dk_, dv, dbeta, dstate) + ((dgate,) if has_gate else ())


class DeltaRuleFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, beta, resets, state, scale, config):
        o, final, saved = forward(q, k, v, beta, resets, state, scale, config,
                                  save_for_backward=any(ctx.needs_input_grad))
        if saved is not None:
            ctx.save_for_backward(q, k, v, beta, resets, *saved)
        ctx.scale, ctx.config = scale, config
        return o, final

    @staticmethod
    def backward(ctx, do, dfinal):
        q, k, v, beta, resets, *saved = ctx.saved_tensors
        dq, dk, dv, dbeta, dstate = backward(
            q, k, v, beta, resets, Saved(*saved), do.contiguous(), dfinal.contiguous(), ctx.scale, ctx.config,
        )
        return dq, dk, dv, dbeta, None, dstate, None, None


def delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    resets: Tensor,
    state: Tensor,
    scale: float | None = None,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """Triton delta rule, same contract as `reference.delta_rule` (read after write).

    q, k: `[B, T, H, dk]` raw (phi applied inside); v: `[B, T, H, dv]`; beta: `[B, T, H]`;
    resets: bool `[B, T]`; state: `[B, H, dk, dv]` (computed in fp32).
    Returns o `[B, T, H, dv]` (dtype of v) and the final state `[B, H, dk, dv]` fp32.
    """
    check_inputs("delta_rule", q.dtype, (q.shape[-1], v.shape[-1]), chunk_size)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return DeltaRuleFunction.apply(
        q.contiguous(), k.contiguous(), v.contiguous(), beta.contiguous(), resets.contiguous(),
        state.float().contiguous(), scale, chunk_config(chunk_size, (q.shape[-1], v.shape[-1]), q.dtype),
    )
