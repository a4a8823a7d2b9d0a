"""PyTorch reference ops: the CPU path and the test oracle for every Triton kernel.

Layout everywhere: `[B, T, H, d]` (batch, time, heads, head dim). `resets[b, t]` is true when
step t starts a new episode for row b; the state is cleared *before* step t is processed.
Each op has a per-step recurrence (the definition) and, where it matters, a chunkwise form
(the fast exact equivalent, DESIGN §4). States are kept in fp32 (fp64 if the inputs are fp64);
outputs come back in the dtype of `v`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

L2_EPS = 1e-6
LINEAR_ATTENTION_EPS = 1e-6
ROPE_BASE = 10000.0


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype the reference ops compute in: x's, at least fp32."""
    return torch.promote_types(x.dtype, torch.float32)


def deltanet_feature_map(z: Tensor) -> Tensor:
    """phi(z) = SiLU(z) / ||SiLU(z)||_2 over the last dim."""
    return F.normalize(F.silu(z), dim=-1, eps=L2_EPS)


def linear_attention_feature_map(z: Tensor) -> Tensor:
    """phi(z) = ELU(z) + 1 (positive features)."""
    return F.elu(z) + 1.0


def _episode_masks(resets: Tensor) -> tuple[Tensor, Tensor]:
    """Episode bookkeeping for one segment of resets `[B, C]`.

    Returns `same_episode [B, C, C]` (token i and j belong to the same episode) and
    `continues [B, C]` (token i still belongs to the episode of the incoming state).
    """
    episode = torch.cumsum(resets.long(), dim=1)
    same_episode = episode[:, :, None] == episode[:, None, :]
    return same_episode, episode == 0


# ----------------------------------------------------------------------------- delta rule


def delta_rule_recurrent(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, resets: Tensor, state: Tensor, scale: float | None = None
) -> tuple[Tensor, Tensor]:
    """Per-step delta rule (DESIGN §3), read after write.

    q, k: `[B, T, H, dk]` raw (the feature map is applied here); v: `[B, T, H, dv]`;
    beta: `[B, T, H]`; resets: bool `[B, T]`; state: `[B, H, dk, dv]`.
    Returns o `[B, T, H, dv]` and the final state `[B, H, dk, dv]`.
    """
    dtype = compute_dtype(q)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qf, kf = deltanet_feature_map(q.to(dtype)), deltanet_feature_map(k.to(dtype))
    vf, bf = v.to(dtype), beta.to(dtype)
    s = state.to(dtype)
    outputs = []
    for t in range(q.shape[1]):
        s = s * (~resets[:, t]).to(dtype)[:, None, None, None]
        k_t = kf[:, t]
        prediction = torch.einsum("bhk,bhkv->bhv", k_t, s)
        s = s + torch.einsum("bhk,bhv->bhkv", k_t, bf[:, t, :, None] * (vf[:, t] - prediction))
        outputs.append(torch.einsum("bhk,bhkv->bhv", qf[:, t], s) * scale)
    return torch.stack(outputs, dim=1).to(v.dtype), s


def delta_rule_chunkwise(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    resets: Tensor,
    state: Tensor,
    scale: float | None = None,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """Chunk-parallel delta rule with resets inside chunks (DESIGN §4); same contract as
    `delta_rule_recurrent`. Exact: per chunk of C tokens, with same-episode mask M and
    continuation flags c,

        A = strictly_lower(diag(beta) K K^T * M),  U = (I + A)^-1 (diag(beta) V - diag(beta c) K S0)
        O = (diag(c) Q S0 + (Q K^T * M * lower_incl) U) * scale,  S_C = c_C S0 + K^T diag(M_C) U
    """
    dtype = compute_dtype(q)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    # [B, H, T, d] so that the chunk algebra is plain batched matmuls.
    qf = deltanet_feature_map(q.to(dtype)).transpose(1, 2)
    kf = deltanet_feature_map(k.to(dtype)).transpose(1, 2)
    vf = v.to(dtype).transpose(1, 2)
    bf = beta.to(dtype).transpose(1, 2)
    s = state.to(dtype)
    outputs = []
    for start in range(0, q.shape[1], chunk_size):
        end = min(start + chunk_size, q.shape[1])
        n = end - start
        same_episode, continues = _episode_masks(resets[:, start:end])
        m = same_episode[:, None].to(dtype)  # [B, 1, C, C]
        c = continues[:, None, :, None].to(dtype)  # [B, 1, C, 1]
        k_c, q_c, v_c = kf[:, :, start:end], qf[:, :, start:end], vf[:, :, start:end]
        b_c = bf[:, :, start:end, None]  # [B, H, C, 1]
        eye = torch.eye(n, dtype=dtype, device=q.device)
        a = torch.tril(b_c * (k_c @ k_c.transpose(-1, -2)) * m, diagonal=-1)
        rhs = b_c * v_c - (b_c * c) * (k_c @ s)
        u = torch.linalg.solve_triangular(eye + a, rhs, upper=False, unitriangular=True)
        attn = torch.tril(q_c @ k_c.transpose(-1, -2) * m)
        outputs.append((c * (q_c @ s) + attn @ u) * scale)
        last_episode = m[:, :, -1, :, None]  # [B, 1, C, 1]: token j shares the last token's episode
        s = c[:, :, -1:] * s + k_c.transpose(-1, -2) @ (last_episode * u)
    o = torch.cat(outputs, dim=2).transpose(1, 2)
    return o.to(v.dtype), s


# ----------------------------------------------------------------------------- linear attention


def linear_attention_recurrent(
    q: Tensor, k: Tensor, v: Tensor, resets: Tensor, state: Tensor, normalizer: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-step linear attention with a normaliser summed over time (DESIGN §3).

    q, k: `[B, T, H, dk]` raw; v: `[B, T, H, dv]`; resets: bool `[B, T]`;
    state: `[B, H, dk, dv]`; normalizer: `[B, H, dk]`.
    Returns o `[B, T, H, dv]`, the final state and the final normalizer.
    """
    dtype = compute_dtype(q)
    qf, kf = linear_attention_feature_map(q.to(dtype)), linear_attention_feature_map(k.to(dtype))
    vf = v.to(dtype)
    s, z = state.to(dtype), normalizer.to(dtype)
    outputs = []
    for t in range(q.shape[1]):
        keep = (~resets[:, t]).to(dtype)
        s = s * keep[:, None, None, None] + torch.einsum("bhk,bhv->bhkv", kf[:, t], vf[:, t])
        z = z * keep[:, None, None] + kf[:, t]
        numerator = torch.einsum("bhk,bhkv->bhv", qf[:, t], s)
        denominator = (qf[:, t] * z).sum(-1, keepdim=True) + LINEAR_ATTENTION_EPS
        outputs.append(numerator / denominator)
    return torch.stack(outputs, dim=1).to(v.dtype), s, z


def linear_attention_chunkwise(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    resets: Tensor,
    state: Tensor,
    normalizer: Tensor,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor, Tensor]:
    """Chunk-parallel linear attention with resets; same contract as `linear_attention_recurrent`."""
    dtype = compute_dtype(q)
    qf = linear_attention_feature_map(q.to(dtype)).transpose(1, 2)
    kf = linear_attention_feature_map(k.to(dtype)).transpose(1, 2)
    vf = v.to(dtype).transpose(1, 2)
    s, z = state.to(dtype), normalizer.to(dtype)[..., None]  # z as a column: [B, H, dk, 1]
    outputs = []
    for start in range(0, q.shape[1], chunk_size):
        end = min(start + chunk_size, q.shape[1])
        same_episode, continues = _episode_masks(resets[:, start:end])
        m = same_episode[:, None].to(dtype)
        c = continues[:, None, :, None].to(dtype)
        k_c, q_c, v_c = kf[:, :, start:end], qf[:, :, start:end], vf[:, :, start:end]
        attn = torch.tril(q_c @ k_c.transpose(-1, -2) * m)
        numerator = c * (q_c @ s) + attn @ v_c
        denominator = c * (q_c @ z) + attn.sum(-1, keepdim=True) + LINEAR_ATTENTION_EPS
        outputs.append(numerator / denominator)
        last_episode = m[:, :, -1, :, None]
        s = c[:, :, -1:] * s + k_c.transpose(-1, -2) @ (last_episode * v_c)
        z = c[:, :, -1:] * z + k_c.transpose(-1, -2) @ last_episode
    o = torch.cat(outputs, dim=2).transpose(1, 2)
    return o.to(v.dtype), s, z[..., 0]


# ----------------------------------------------------------------------------- sliding-window attention


def rotary(x: Tensor, positions: Tensor, base: float = ROPE_BASE) -> Tensor:
    """RoPE (rotate-half form) of x `[B, L, H, d]` at integer `positions`, `[L]` or per row `[B, L]`."""
    half = x.shape[-1] // 2
    inv_freq = base ** (-torch.arange(half, device=x.device, dtype=x.dtype) / half)
    angles = positions.to(x.dtype)[..., None] * inv_freq  # [(B,) L, d/2]
    cos, sin = angles.cos().unsqueeze(-2), angles.sin().unsqueeze(-2)  # broadcast over heads
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


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
    """Softmax attention over the last `window` steps of the same episode, RoPE by relative distance.

    q, k, v: `[B, T, H, d]` (k before RoPE); resets: bool `[B, T]`;
    cache_k, cache_v: `[B, S, H, d]` the previous segment's keys/values, oldest first;
    cache_valid: bool `[B, S]` (entry belongs to the episode that is current at the segment start).
    Query t attends to keys at distance 0..window-1 in the same episode. Positions are local to
    the segment (cache first), so they stay bounded and only relative distances matter.
    Returns o `[B, T, H, d]`.
    """
    dtype = compute_dtype(q)
    batch, steps, _, head_dim = q.shape
    cached = cache_k.shape[1]
    scale = head_dim**-0.5 if scale is None else scale
    keys = torch.cat([cache_k, k], dim=1).to(dtype)
    values = torch.cat([cache_v, v], dim=1).to(dtype)
    key_positions = torch.arange(cached + steps, device=q.device)
    query_positions = key_positions[cached:]
    qr, kr = rotary(q.to(dtype), query_positions), rotary(keys, key_positions)
    scores = torch.einsum("bthd,bshd->bhts", qr, kr) * scale

    episode = torch.cumsum(resets.long(), dim=1)
    key_episode = torch.cat([episode.new_zeros(batch, cached), episode], dim=1)
    key_valid = torch.cat([cache_valid, cache_valid.new_ones(batch, steps)], dim=1)
    distance = query_positions[:, None] - key_positions[None, :]
    in_window = (distance >= 0) & (distance < window)
    allowed = (episode[:, :, None] == key_episode[:, None, :]) & key_valid[:, None, :] & in_window
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    o = torch.einsum("bhts,bshd->bthd", torch.softmax(scores, dim=-1), values)
    return o.to(v.dtype)


def attention_entropy(
    q: Tensor, k: Tensor, resets: Tensor, cache_k: Tensor, cache_valid: Tensor, window: int
) -> Tensor:
    """Mean entropy (nats) of the attention distributions of `window_attention` (a diagnostic).

    Shapes as in `window_attention`. Returns a scalar tensor.
    """
    batch, steps, _, head_dim = q.shape
    cached = cache_k.shape[1]
    eye = torch.eye(cached + steps, dtype=compute_dtype(q), device=q.device)
    # Attending over one-hot values returns the attention weights themselves.
    one_hot = eye[None, :, None, :].expand(batch, -1, q.shape[2], -1)
    probs = window_attention(
        q.float(), k.float(), one_hot[:, cached:], resets, cache_k.float(), one_hot[:, :cached], cache_valid, window,
        scale=head_dim**-0.5,
    )
    return -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1).mean()


# ----------------------------------------------------------------------------- normalisation


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm over the last dim with a learned scale: x / sqrt(mean(x^2) + eps) * weight.
    x: `[..., D]`, weight: `[D]`. Returns `[..., D]`."""
    return F.rms_norm(x, x.shape[-1:], weight, eps)


# ----------------------------------------------------------------------------- feed-forward gating


def swiglu(gate_up: Tensor) -> Tensor:
    """SwiGLU's gating, SiLU(gate) * up, where gate_up `[..., 2h]` holds gate then up. Returns `[..., h]`."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


# ----------------------------------------------------------------------------- op entry points


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
    """Reference delta rule: the recurrence for single steps, chunkwise otherwise."""
    if q.shape[1] == 1:
        return delta_rule_recurrent(q, k, v, beta, resets, state, scale)
    return delta_rule_chunkwise(q, k, v, beta, resets, state, scale, chunk_size)


def linear_attention(
    q: Tensor, k: Tensor, v: Tensor, resets: Tensor, state: Tensor, normalizer: Tensor, chunk_size: int = 64
) -> tuple[Tensor, Tensor, Tensor]:
    """Reference linear attention: the recurrence for single steps, chunkwise otherwise."""
    if q.shape[1] == 1:
        return linear_attention_recurrent(q, k, v, resets, state, normalizer)
    return linear_attention_chunkwise(q, k, v, resets, state, normalizer, chunk_size)


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
    window: int,
    scale: float | None = None,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """Synchronous HQLT core op: both memories read the same (q, k, v), mixed by a vector gate.

    q, k, v, gate: `[B, T, H, d]` (gate in (0, 1)); beta: `[B, T, H]`; resets: bool `[B, T]`;
    fw_state: `[B, H, d, d]`; cache_k, cache_v: `[B, S, H, d]` oldest first; cache_valid: bool `[B, S]`.
    Returns o = gate * o_FW + (1 - gate) * o_KV `[B, T, H, d]` and the final FW state.
    """
    o_fw, fw_state = delta_rule(q, k, v, beta, resets, fw_state, scale, chunk_size)
    o_kv = window_attention(q, k, v, resets, cache_k, cache_v, cache_valid, window, scale)
    return gate * o_fw + (1 - gate) * o_kv, fw_state


__all__ = [
    "attention_entropy",
    "compute_dtype",
    "delta_rule",
    "delta_rule_chunkwise",
    "delta_rule_recurrent",
    "deltanet_feature_map",
    "linear_attention",
    "linear_attention_chunkwise",
    "linear_attention_recurrent",
    "linear_attention_feature_map",
    "rms_norm",
    "rotary",
    "swiglu",
    "synchronous_hqlt",
    "window_attention",
]
