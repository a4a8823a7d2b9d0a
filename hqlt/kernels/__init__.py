"""Compute ops behind one dispatch function each.

Memory modules call only the functions below. Each picks its backend through
`backend.resolve_backend` (explicit `backend=` argument, then `HQLT_BACKEND`, then automatic)
and runs the PyTorch reference or the Triton kernel with the same contract.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

from torch import Tensor

from hqlt.kernels import reference, rollout_step
from hqlt.kernels.backend import BACKENDS, resolve_backend
from hqlt.kernels.rollout_step import advance_ring

# The PyTorch implementation of every op: the CPU path and the oracle of the Triton kernels.
REFERENCE_OPS: dict[str, Callable] = {
    "delta_rule": reference.delta_rule,
    "linear_attention": reference.linear_attention,
    "window_attention": reference.window_attention,
    "synchronous_hqlt": reference.synchronous_hqlt,
    "synchronous_hqlt_step": rollout_step.synchronous_hqlt_step,
    "swiglu": reference.swiglu,
    "rms_norm": reference.rms_norm,
}


def _triton_ops() -> dict[str, Callable]:
    """Triton implementations, imported on first use so that CPU-only installs never load them."""
    from hqlt.kernels import triton_ops

    return triton_ops.OPS


@functools.cache
def _warn_no_kernel(op: str) -> None:
    warnings.warn(f"op {op!r} has no Triton kernel; it runs the PyTorch reference on every backend", stacklevel=4)


def _implementation(op: str, backend: str | None, like: Tensor) -> Callable:
    """The op's implementation for the resolved backend. An op without a Triton kernel runs the
    reference whichever way Triton was asked for (argument or `HQLT_BACKEND`), with one warning."""
    if resolve_backend(backend, like.device) == "triton":
        ops = _triton_ops()
        if op in ops:
            return ops[op]
        _warn_no_kernel(op)
    return REFERENCE_OPS[op]


def delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    resets: Tensor,
    state: Tensor,
    *,
    scale: float | None = None,
    chunk_size: int = 64,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """Delta-rule fast weights, read after write (DESIGN §3-4).

    q, k: `[B, T, H, dk]` raw (phi = SiLU + L2 norm applied inside); v: `[B, T, H, dv]`;
    beta: `[B, T, H]`; resets: bool `[B, T]`; state: `[B, H, dk, dv]` fp32.
    Returns o `[B, T, H, dv]` (dtype of v) and the final state `[B, H, dk, dv]` fp32.
    """
    # A single step is a few batched ops; a chunk kernel launch only pays off on sequences.
    impl = REFERENCE_OPS["delta_rule"] if q.shape[1] == 1 else _implementation("delta_rule", backend, q)
    return impl(q, k, v, beta, resets, state, scale=scale, chunk_size=chunk_size)


def linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    resets: Tensor,
    state: Tensor,
    normalizer: Tensor,
    *,
    chunk_size: int = 64,
    backend: str | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Linear attention (phi = ELU + 1) with a normaliser over time.

    q, k: `[B, T, H, dk]` raw; v: `[B, T, H, dv]`; resets: bool `[B, T]`;
    state: `[B, H, dk, dv]`; normalizer: `[B, H, dk]`.
    Returns o `[B, T, H, dv]`, the final state and the final normalizer.
    """
    impl = _implementation("linear_attention", backend, q)
    return impl(q, k, v, resets, state, normalizer, chunk_size=chunk_size)


def window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    resets: Tensor,
    cache_k: Tensor,
    cache_v: Tensor,
    cache_valid: Tensor,
    *,
    window: int,
    scale: float | None = None,
    backend: str | None = None,
) -> Tensor:
    """Sliding-window softmax attention with the same-episode mask and RoPE by relative distance.

    q, k, v: `[B, T, H, d]`; resets: bool `[B, T]`; cache_k, cache_v: `[B, S, H, d]` previous keys
    and values, oldest first; cache_valid: bool `[B, S]`. Returns o `[B, T, H, d]`.
    """
    impl = _implementation("window_attention", backend, q)
    return impl(q, k, v, resets, cache_k, cache_v, cache_valid, window=window, scale=scale)


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
    *,
    window: int,
    chunk_size: int = 64,
    scale: float | None = None,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """Synchronous HQLT: delta rule and sliding-window attention on the same (q, k, v), mixed as
    o = gate * o_FW + (1 - gate) * o_KV.

    q, k, v, gate: `[B, T, H, d]`; beta: `[B, T, H]`; resets: bool `[B, T]`; fw_state: `[B, H, d, d]`;
    cache_k, cache_v: `[B, S, H, d]` oldest first; cache_valid: bool `[B, S]`.
    Returns o `[B, T, H, d]` and the final FW state.
    """
    impl = _implementation("synchronous_hqlt", backend, q)
    return impl(
        q, k, v, beta, gate, resets, fw_state, cache_k, cache_v, cache_valid,
        window=window, scale=scale, chunk_size=chunk_size,
    )


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
    *,
    window: int,
    scale: float | None = None,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """One rollout step of Synchronous HQLT for every env, on the memory's ring buffers, in place.

    q, k, v, gate: `[B, 1, H, d]`; beta: `[B, 1, H]`; resets: bool `[B, 1]`; fw_state: `[B, H, d, d]` fp32
    and kv_keys, kv_values: `[B, S, H, d]` (ring, slot order, S >= window) are updated in place;
    kv_valid: bool `[B, S]` and kv_write: int64 `[B]` are read only (advance them once per step, after
    the last layer, with `advance_ring`). Returns o `[B, 1, H, d]` and `fw_state`.
    """
    impl = _implementation("synchronous_hqlt_step", backend, q)
    return impl(
        q, k, v, beta, gate, resets, fw_state, kv_keys, kv_values, kv_valid, kv_write, window=window, scale=scale
    )


def rms_norm(x: Tensor, weight: Tensor, eps: float, *, backend: str | None = None) -> Tensor:
    """RMSNorm over the last dim with a learned scale: x / sqrt(mean(x^2) + eps) * weight.
    x: `[..., D]`, weight: `[D]`. Returns `[..., D]` in x's dtype."""
    return _implementation("rms_norm", backend, x)(x, weight, eps)


def swiglu(gate_up: Tensor, *, backend: str | None = None) -> Tensor:
    """SwiGLU's gating in the feed-forward blocks: SiLU(gate) * up, where gate_up `[..., 2h]` holds gate
    then up. Returns `[..., h]` in gate_up's dtype."""
    return _implementation("swiglu", backend, gate_up)(gate_up)


__all__ = [
    "BACKENDS",
    "advance_ring",
    "delta_rule",
    "linear_attention",
    "resolve_backend",
    "rms_norm",
    "swiglu",
    "synchronous_hqlt",
    "synchronous_hqlt_step",
    "window_attention",
]
