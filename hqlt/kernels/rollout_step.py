"""One rollout step of Synchronous HQLT on the memory's own state buffers, updated in place.

The KV-memory is a ring buffer of the last S raw keys/values (before RoPE) per layer,
`kv_keys, kv_values [B, S, H, d]`, with `kv_valid [B, S]` (entry of the episode current before this
step) and `kv_write [B]` (slot of the next write) shared by all layers. A step writes the new pair
to slot `kv_write` first, so the query attends to itself and to the other slots at ring distance
(kv_write - slot) mod S < window; S >= window is required. `kv_valid` and `kv_write` belong to the
whole stack: advance them once per step, after the last layer, with `advance_ring`.

This module is the PyTorch reference of the step (composed from the reference ops, the CPU path
and the oracle of the Triton step kernel).
"""

from __future__ import annotations

import torch
from torch import Tensor

from hqlt.kernels import reference


def check_step_inputs(q: Tensor, kv_keys: Tensor, kv_write: Tensor, window: int) -> None:
    if q.shape[1] != 1:
        raise ValueError(f"synchronous_hqlt_step takes one step per env, q must be [B, 1, H, d]; got {tuple(q.shape)}")
    if kv_keys.shape[1] < window:
        raise ValueError(f"synchronous_hqlt_step: the KV ring holds {kv_keys.shape[1]} slots, fewer than window={window}")
    if kv_write.dtype != torch.long:
        raise ValueError(f"synchronous_hqlt_step: kv_write must be int64, got {kv_write.dtype}")


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
    """Synchronous HQLT for one step of every env; updates `fw_state`, `kv_keys`, `kv_values` in place.

    q, k, v, gate: `[B, 1, H, d]`; beta: `[B, 1, H]`; resets: bool `[B, 1]`; fw_state: `[B, H, d, d]` fp32;
    kv_keys, kv_values: `[B, S, H, d]` ring (slot order); kv_valid: bool `[B, S]`; kv_write: int64 `[B]`
    (both read only). Returns o = gate * o_FW + (1 - gate) * o_KV `[B, 1, H, d]` and `fw_state`.
    """
    check_step_inputs(q, kv_keys, kv_write, window)
    batch, slots = kv_valid.shape
    rows = torch.arange(batch, device=q.device)
    chronological = (kv_write[:, None] + torch.arange(slots, device=q.device)) % slots
    o, new_fw = reference.synchronous_hqlt(
        q, k, v, beta, gate, resets, fw_state,
        kv_keys[rows[:, None], chronological], kv_values[rows[:, None], chronological],
        kv_valid[rows[:, None], chronological], window, scale,
    )
    fw_state.copy_(new_fw)
    kv_keys[rows, kv_write] = k[:, 0]
    kv_values[rows, kv_write] = v[:, 0]
    return o, fw_state


def advance_ring(kv_valid: Tensor, kv_write: Tensor, resets: Tensor) -> None:
    """After the last layer's step, in place: entries of an ended episode become invalid, the slot just
    written becomes valid, and the write slot moves on. kv_valid: bool `[B, S]`; kv_write: int64 `[B]`;
    resets: bool `[B, 1]`."""
    kv_valid &= ~resets
    kv_valid.scatter_(1, kv_write[:, None], True)
    kv_write.add_(1).remainder_(kv_valid.shape[1])

