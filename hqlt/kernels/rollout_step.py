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

    The step works on the ring in slot order (no gather into time order): the sequence op's positions
    are recovered per slot, the cache's oldest entry at 0 and the query at S.
    """
    check_step_inputs(q, kv_keys, kv_write, window)
    dtype = reference.compute_dtype(q)
    batch, slots = kv_valid.shape
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    keep = ~resets[:, 0]
    q_t, k_t, v_t = (x[:, 0].to(dtype) for x in (q, k, v))  # [B, H, d]

    # FW-memory: the delta rule's step (clear on reset, write, then read).
    qf, kf = reference.deltanet_feature_map(q_t), reference.deltanet_feature_map(k_t)
    fw_state.mul_(keep[:, None, None, None])
    prediction = (kf.unsqueeze(-2) @ fw_state).squeeze(-2)
    fw_state.add_(kf.unsqueeze(-1) * (beta[:, 0, :, None].to(dtype) * (v_t - prediction)).unsqueeze(-2))
    o_fw = (qf.unsqueeze(-2) @ fw_state).squeeze(-2) * scale

    # KV-memory: write the new pair, then attend over the slots at ring distance < window of this episode.
    rows = torch.arange(batch, device=q.device)
    kv_keys[rows, kv_write] = k[:, 0]
    kv_values[rows, kv_write] = v[:, 0]
    distance = (kv_write[:, None] - torch.arange(slots, device=q.device)) % slots  # [B, S]; the new pair: 0
    allowed = (distance < window) & ((kv_valid & keep[:, None]) | (distance == 0))
    query_position = torch.full((1,), slots, device=q.device)
    qr = reference.rotary(q_t.unsqueeze(1), query_position)  # [B, 1, H, d]
    kr = reference.rotary(kv_keys.to(dtype), slots - distance)  # [B, S, H, d]
    scores = (kr * qr).sum(-1).mul_(scale).masked_fill_(~allowed[..., None], float("-inf"))  # [B, S, H]
    o_kv = (torch.softmax(scores, dim=1).unsqueeze(-1) * kv_values.to(dtype)).sum(1)

    gate_t = gate[:, 0].to(dtype)
    o = gate_t * o_fw + (1 - gate_t) * o_kv
    return o.unsqueeze(1).to(v.dtype), fw_state


def advance_ring(kv_valid: Tensor, kv_write: Tensor, resets: Tensor) -> None:
    """After the last layer's step, in place: entries of an ended episode become invalid, the slot just
    written becomes valid, and the write slot moves on. kv_valid: bool `[B, S]`; kv_write: int64 `[B]`;
    resets: bool `[B, 1]`."""
    kv_valid &= ~resets
    kv_valid.scatter_(1, kv_write[:, None], True)
    kv_write.add_(1).remainder_(kv_valid.shape[1])

