"""Chunkwise delta rule in Triton, with episode resets applied inside the kernel (DESIGN §4).

One program per (batch row, head) walks the sequence chunk by chunk, carrying the fp32 state
`[dk, dv]` in registers. Per chunk of C tokens (phi = SiLU then L2 norm, applied in-kernel):

    A = strictly_lower(diag(beta) K K^T * M),   T = (I + A)^-1
    U = T (diag(beta) V - diag(beta c) K S0)
    O = scale (diag(c) Q S0 + (Q K^T * M * lower_incl) U),   S_C = c_C S0 + K^T diag(m) U

with M the same-episode mask, c the "still in the incoming state's episode" flags and m the
last token's row of M. The forward pass stores the state at every chunk start; the backward
pass walks the chunks in reverse from those states, recomputing everything else.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from hqlt.kernels import reference

CHUNK_SIZES = (16, 32, 64)
MAX_HEAD_DIM = 128
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

_L2_EPS = tl.constexpr(reference.L2_EPS)
_SOLVE_BLOCK = tl.constexpr(16)  # diagonal blocks inverted by substitution; the rest by a Neumann product
# Largest chunk x padded head dim the chunk kernels run: larger tiles do not fit an H100's 227 KB of
# shared memory (chunk 64 at head dim 64 needs 240 KB in the backward even unpipelined).
MAX_CHUNK_TILE = 32 * 64


@dataclass(frozen=True)
class ChunkConfig:
    """How the chunk-loop kernels of one op call launch (forward and backward walk the same chunks)."""

    chunk: int  # the chunk the kernels run (the chunkwise form is exact for any chunk: rounding only)
    num_stages: int  # software pipelining of the chunk loop: loads of the next chunks start early
    num_warps: int = 4


def chunk_config(chunk_size: int, head_dims: tuple[int, ...], dtype: torch.dtype) -> ChunkConfig:
    """The launch of the delta-rule and fused Synchronous HQLT chunk kernels for `head_dims` (dk, dv)
    and `dtype` inputs: the requested chunk, capped so that the tiles fit; pipelined (3 stages, i.e.
    two more copies of each chunk's loaded tiles in shared memory) except beside fp32 [64, 64] chunk
    products or a [128, 128] state, where the pipelined backward needs up to 283 KB of the H100's
    227 KB (255 KB at head dim 32, chunk 64, fp32 under Triton 3.6). `tests/test_triton_resources.py`
    compiles every resulting launch for sm_90 and checks its shared memory."""
    block = max(block_size(d) for d in head_dims)
    chunk = max(16, min(chunk_size, MAX_CHUNK_TILE // block))
    crowded = block >= 128 or (chunk >= 64 and dtype == torch.float32)
    return ChunkConfig(chunk=chunk, num_stages=1 if crowded else 3)


def dot_precision(dtype: torch.dtype) -> str:
    """tf32 matrix products for 16-bit inputs; three-pass tf32 (about fp32 accuracy) for fp32 inputs."""
    return "tf32x3" if dtype == torch.float32 else "tf32"


def block_size(dim: int) -> int:
    """Padded tile width for a head dimension (a power of two, at least 16 for tensor-core products)."""
    return max(16, triton.next_power_of_2(dim))


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
def unit_lower_inverse(a, CHUNK: tl.constexpr, PREC: tl.constexpr):
    """(I + a)^-1 for strictly lower triangular a `[C, C]` fp32.

    The 16 x 16 diagonal blocks are inverted together by forward substitution (one row of every
    block per step); with D their inverse and N = D L (L the strictly block-lower part, so
    N^4 = 0 for C <= 64), (I + a)^-1 = (I - N)(I + N^2) D.
    """
    rows = tl.arange(0, CHUNK)
    eye = tl.where(rows[:, None] == rows[None, :], 1.0, 0.0)
    same_block = (rows[:, None] // _SOLVE_BLOCK) == (rows[None, :] // _SOLVE_BLOCK)
    a_block = tl.where(same_block, a, 0.0)
    inverse = eye
    for i in tl.static_range(1, _SOLVE_BLOCK):
        row = (rows % _SOLVE_BLOCK == i)[:, None]
        step = eye - tl.dot(tl.where(row, a_block, 0.0), inverse, input_precision=PREC)
        inverse = tl.where(row, step, inverse)
    if CHUNK > _SOLVE_BLOCK:
        n = tl.dot(inverse, a - a_block, input_precision=PREC)
        n2 = tl.dot(n, n, input_precision=PREC)
        inverse = tl.dot(eye - n, tl.dot(eye + n2, inverse, input_precision=PREC), input_precision=PREC)
    return inverse


@triton.jit
def delta_chunk_forward(q, k, v, beta, resets, state, scale, CHUNK: tl.constexpr, PREC: tl.constexpr):
    """One chunk of the delta rule: raw q, k `[C, dk]`, v `[C, dv]`, beta `[C]`, resets `[C]` int32,
    incoming state `[dk, dv]`, all fp32. Returns o `[C, dv]` and the chunk's final state."""
    qn = feature_map(q)
    kn = feature_map(k)
    continues, same, in_last, carry = chunk_episodes(resets)
    rows = tl.arange(0, CHUNK)
    strict = (rows[:, None] > rows[None, :]) & same
    causal = (rows[:, None] >= rows[None, :]) & same
    a = tl.where(strict, beta[:, None] * tl.dot(kn, tl.trans(kn), input_precision=PREC), 0.0)
    inverse = unit_lower_inverse(a, CHUNK, PREC)
    beta_c = tl.where(continues, beta, 0.0)
    rhs = beta[:, None] * v - beta_c[:, None] * tl.dot(kn, state, input_precision=PREC)
    u = tl.dot(inverse, rhs, input_precision=PREC)
    scores = tl.where(causal, tl.dot(qn, tl.trans(kn), input_precision=PREC), 0.0)
    from_state = tl.where(continues[:, None], tl.dot(qn, state, input_precision=PREC), 0.0)
    o = (from_state + tl.dot(scores, u, input_precision=PREC)) * scale
    kept = tl.where(carry, state, 0.0)
    new_state = kept + tl.dot(tl.trans(kn), tl.where(in_last[:, None], u, 0.0), input_precision=PREC)
    return o, new_state


@triton.jit
def token_offsets(b, t, h, T, H, D, cols):
    """Element offsets `[C, BLOCK]` of rows t of a contiguous `[B, T, H, D]` tensor."""
    return ((b * T + t[:, None]) * H + h) * D + cols[None, :]


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _forward_kernel(
    q_ptr, k_ptr, v_ptr, beta_ptr, resets_ptr, state_ptr, o_ptr, final_ptr, chunk_states_ptr,
    T, H, scale,
    DK: tl.constexpr, DV: tl.constexpr, CHUNK: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
    STORE_CHUNK_STATES: tl.constexpr, PREC: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    b, h = pid // H, pid % H
    rows = tl.arange(0, CHUNK)
    ck, cv = tl.arange(0, BLOCK_DK), tl.arange(0, BLOCK_DV)
    state_offsets = pid * DK * DV + ck[:, None] * DV + cv[None, :]
    state_mask = (ck[:, None] < DK) & (cv[None, :] < DV)
    state = tl.load(state_ptr + state_offsets, mask=state_mask, other=0.0)
    num_chunks = tl.cdiv(T, CHUNK)
    for n in range(num_chunks):
        t = n * CHUNK + rows
        valid = t < T
        k_mask = valid[:, None] & (ck[None, :] < DK)
        v_mask = valid[:, None] & (cv[None, :] < DV)
        q = tl.load(q_ptr + token_offsets(b, t, h, T, H, DK, ck), mask=k_mask, other=0.0).to(tl.float32)
        k = tl.load(k_ptr + token_offsets(b, t, h, T, H, DK, ck), mask=k_mask, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + token_offsets(b, t, h, T, H, DV, cv), mask=v_mask, other=0.0).to(tl.float32)
        beta = tl.load(beta_ptr + (b * T + t) * H + h, mask=valid, other=0.0).to(tl.float32)
        resets = tl.load(resets_ptr + b * T + t, mask=valid, other=0).to(tl.int32)
        if STORE_CHUNK_STATES:
            tl.store(chunk_states_ptr + (pid * num_chunks + n) * DK * DV + ck[:, None] * DV + cv[None, :],
                     state, mask=state_mask)
        o, state = delta_chunk_forward(q, k, v, beta, resets, state, scale, CHUNK, PREC)
        tl.store(o_ptr + token_offsets(b, t, h, T, H, DV, cv), o, mask=v_mask)
    tl.store(final_ptr + state_offsets, state, mask=state_mask)


@triton.jit
def backward_kernel(
    q_ptr, k_ptr, v_ptr, beta_ptr, resets_ptr, chunk_states_ptr, do_ptr, dfinal_ptr,
    gate_ptr, o_kv_ptr,
    dq_ptr, dk_ptr, dv_ptr, dbeta_ptr, dstate_ptr, dgate_ptr,
    T, H, scale,
    DK: tl.constexpr, DV: tl.constexpr, CHUNK: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
    HAS_GATE: tl.constexpr, PREC: tl.constexpr,
):
    """Reverse walk over the chunks. With HAS_GATE the output was gate * o_FW + (1 - gate) * o_KV:
    the incoming gradient is scaled by the gate and the gate's own gradient is written too."""
    pid = tl.program_id(0).to(tl.int64)
    b, h = pid // H, pid % H
    rows = tl.arange(0, CHUNK)
    ck, cv = tl.arange(0, BLOCK_DK), tl.arange(0, BLOCK_DV)
    strict_lower = rows[:, None] > rows[None, :]
    lower = rows[:, None] >= rows[None, :]
    state_offsets = ck[:, None] * DV + cv[None, :]
    state_mask = (ck[:, None] < DK) & (cv[None, :] < DV)
    dstate = tl.load(dfinal_ptr + pid * DK * DV + state_offsets, mask=state_mask, other=0.0)
    num_chunks = tl.cdiv(T, CHUNK)
    for i in range(num_chunks):
        n = num_chunks - 1 - i
        t = n * CHUNK + rows
        valid = t < T
        k_mask = valid[:, None] & (ck[None, :] < DK)
        v_mask = valid[:, None] & (cv[None, :] < DV)
        k_offsets = token_offsets(b, t, h, T, H, DK, ck)
        v_offsets = token_offsets(b, t, h, T, H, DV, cv)
        q = tl.load(q_ptr + k_offsets, mask=k_mask, other=0.0).to(tl.float32)
        k = tl.load(k_ptr + k_offsets, mask=k_mask, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + v_offsets, mask=v_mask, other=0.0).to(tl.float32)
        beta = tl.load(beta_ptr + (b * T + t) * H + h, mask=valid, other=0.0).to(tl.float32)
        resets = tl.load(resets_ptr + b * T + t, mask=valid, other=0).to(tl.int32)
        state = tl.load(chunk_states_ptr + (pid * num_chunks + n) * DK * DV + state_offsets, mask=state_mask,
                        other=0.0)
        do = tl.load(do_ptr + v_offsets, mask=v_mask, other=0.0).to(tl.float32)

        # Recompute the chunk's forward quantities.
        qn = feature_map(q)
        kn = feature_map(k)
        continues, same, in_last, carry = chunk_episodes(resets)
        kk = tl.dot(kn, tl.trans(kn), input_precision=PREC)
        a = tl.where(strict_lower & same, beta[:, None] * kk, 0.0)
        inverse = unit_lower_inverse(a, CHUNK, PREC)
        beta_c = tl.where(continues, beta, 0.0)
        ks = tl.dot(kn, state, input_precision=PREC)
        rhs = beta[:, None] * v - beta_c[:, None] * ks
        u = tl.dot(inverse, rhs, input_precision=PREC)
        scores = tl.where(lower & same, tl.dot(qn, tl.trans(kn), input_precision=PREC), 0.0)
        qs = tl.where(continues[:, None], tl.dot(qn, state, input_precision=PREC), 0.0)
        if HAS_GATE:
            gate = tl.load(gate_ptr + v_offsets, mask=v_mask, other=0.0).to(tl.float32)
            o_kv = tl.load(o_kv_ptr + v_offsets, mask=v_mask, other=0.0).to(tl.float32)
            o_fw = (qs + tl.dot(scores, u, input_precision=PREC)) * scale
            tl.store(dgate_ptr + v_offsets, do * (o_fw - o_kv), mask=v_mask)
            do = do * gate
        g = do * scale

        # Backward through O, S_C, U = T R, A and R.
        u_last = tl.where(in_last[:, None], u, 0.0)
        d_scores = tl.where(lower & same, tl.dot(g, tl.trans(u), input_precision=PREC), 0.0)
        du = tl.dot(tl.trans(scores), g, input_precision=PREC)
        du += tl.where(in_last[:, None], tl.dot(kn, dstate, input_precision=PREC), 0.0)
        drhs = tl.dot(tl.trans(inverse), du, input_precision=PREC)
        da = tl.where(strict_lower & same, -tl.dot(drhs, tl.trans(u), input_precision=PREC), 0.0)
        dbeta = tl.sum(drhs * v, axis=1) - tl.where(continues, tl.sum(drhs * ks, axis=1), 0.0) + tl.sum(da * kk, axis=1)
        dkk = beta[:, None] * da
        drhs_c = beta_c[:, None] * drhs
        dkn = tl.dot(tl.trans(d_scores), qn, input_precision=PREC)
        dkn += tl.dot(u_last, tl.trans(dstate), input_precision=PREC)
        dkn -= tl.dot(drhs_c, tl.trans(state), input_precision=PREC)
        dkn += tl.dot(dkk, kn, input_precision=PREC) + tl.dot(tl.trans(dkk), kn, input_precision=PREC)
        g_c = tl.where(continues[:, None], g, 0.0)
        dqn = tl.dot(g_c, tl.trans(state), input_precision=PREC) + tl.dot(d_scores, kn, input_precision=PREC)
        dstate = tl.where(carry, dstate, 0.0) + tl.dot(tl.trans(qn), g_c, input_precision=PREC)
        dstate -= tl.dot(tl.trans(kn), drhs_c, input_precision=PREC)

        tl.store(dq_ptr + k_offsets, feature_map_backward(q, dqn), mask=k_mask)
        tl.store(dk_ptr + k_offsets, feature_map_backward(k, dkn), mask=k_mask)
        tl.store(dv_ptr + v_offsets, beta[:, None] * drhs, mask=v_mask)
        tl.store(dbeta_ptr + (b * T + t) * H + h, dbeta, mask=valid)
    tl.store(dstate_ptr + pid * DK * DV + state_offsets, dstate, mask=state_mask)


# ----------------------------------------------------------------------------- launchers


def forward(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, resets: Tensor, state: Tensor, scale: float,
            config: ChunkConfig, store_chunk_states: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """Launch the forward kernel on contiguous inputs (q, k `[B, T, H, dk]`, v `[B, T, H, dv]`,
    beta `[B, T, H]`, resets `[B, T]`, fp32 state `[B, H, dk, dv]`).
    Returns o (dtype of v), the final state and, if asked, the chunk-start states `[B, H, NC, dk, dv]`."""
    batch, steps, heads, dk = q.shape
    dv = v.shape[-1]
    o = torch.empty_like(v)
    final = torch.empty_like(state)
    num_chunks = triton.cdiv(steps, config.chunk)
    chunk_states = state.new_empty(batch, heads, num_chunks, dk, dv) if store_chunk_states else final
    _forward_kernel[(batch * heads,)](
        q, k, v, beta, resets, state, o, final, chunk_states, steps, heads, scale,
        DK=dk, DV=dv, CHUNK=config.chunk, BLOCK_DK=block_size(dk), BLOCK_DV=block_size(dv),
        STORE_CHUNK_STATES=store_chunk_states, PREC=dot_precision(q.dtype),
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return o, final, chunk_states if store_chunk_states else None


def backward(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, resets: Tensor, chunk_states: Tensor, do: Tensor,
             dfinal: Tensor, scale: float, config: ChunkConfig, gate: Tensor | None = None,
             o_kv: Tensor | None = None, grad_dtype: torch.dtype | None = None) -> tuple[Tensor, ...]:
    """Launch the backward kernel with the forward's `config`. Returns dq, dk, dv (in `grad_dtype`,
    default the inputs' dtypes), dbeta, dstate (fp32) and, when `gate` is given (Synchronous HQLT), dgate."""
    batch, steps, heads, dk = q.shape
    dv_dim = v.shape[-1]
    dq = torch.empty_like(q, dtype=grad_dtype or q.dtype)
    dk_ = torch.empty_like(k, dtype=grad_dtype or k.dtype)
    dv = torch.empty_like(v, dtype=grad_dtype or v.dtype)
    dbeta = torch.empty_like(beta)
    dstate = torch.empty_like(dfinal)
    dgate = torch.empty_like(gate) if gate is not None else None
    backward_kernel[(batch * heads,)](
        q, k, v, beta, resets, chunk_states, do, dfinal,
        gate if gate is not None else do, o_kv if o_kv is not None else do,
        dq, dk_, dv, dbeta, dstate, dgate if dgate is not None else dq,
        steps, heads, scale,
        DK=dk, DV=dv_dim, CHUNK=config.chunk, BLOCK_DK=block_size(dk), BLOCK_DV=block_size(dv_dim),
        HAS_GATE=gate is not None, PREC=dot_precision(q.dtype),
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return (dq, dk_, dv, dbeta, dstate) + ((dgate,) if gate is not None else ())


class DeltaRuleFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, beta, resets, state, scale, config):
        needs_grad = any(ctx.needs_input_grad)
        o, final, chunk_states = forward(q, k, v, beta, resets, state, scale, config, needs_grad)
        ctx.save_for_backward(q, k, v, beta, resets, chunk_states)
        ctx.scale, ctx.config = scale, config
        return o, final

    @staticmethod
    def backward(ctx, do, dfinal):
        q, k, v, beta, resets, chunk_states = ctx.saved_tensors
        dq, dk, dv, dbeta, dstate = backward(
            q, k, v, beta, resets, chunk_states, do.contiguous(), dfinal.contiguous(), ctx.scale, ctx.config
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
