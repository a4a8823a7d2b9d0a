"""The attention family: Transformer (KV-memory), DeltaNet / linear attention (FW-memory) and HQLT
(both, blended), as one pre-norm residual stack (DESIGN §3).

Per layer and token: q = W_q x, k = W_k x, v = SiLU(W_v x), beta = sigmoid(w_beta x) per head
(times 2 with `allow_neg_eigval`); the ops in `hqlt.kernels` apply the feature maps and RoPE. The
two outputs `[B, T, H, d]` are mixed, normalised per head, concatenated and projected by W_o.

Blends (HQLT), all from the same q, k, v, beta:
- synchronous: both memories take (k_t, v_t) at step t (with the dynamic_vector mixer and DeltaNet:
  the fused `synchronous_hqlt` op, and in rollouts, i.e. single steps without gradients or
  diagnostics, the fused `synchronous_hqlt_step` op: on the state itself with `in_place=True`, on
  copies of it otherwise);
- delayed_stream: the pair leaving the KV window, (k_{t-S}, v_{t-S}), is written to the FW-memory at
  step t with beta_t, if it belongs to t's episode;
- delayed_chunk: chunks of S steps from the episode start; attention within the current chunk; the
  FW-memory is read as of the chunk start and absorbs a chunk when it completes. Exact and parallel
  (no loop): one fast-weight op call over an interleaved read/write sequence of 2 (S + T) tokens
  (see `segment.ChunkSchedule`); the open chunk's keys, values and betas wait in the KV ring.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hqlt import kernels
from hqlt.kernels.reference import attention_entropy
from hqlt.memory.blocks import FeedForwardBlock, RMSNorm
from hqlt.memory.core import MemoryCore, State
from hqlt.memory.segment import RingStep, Segment, build_ring_step, build_segment, combine, take

BLENDS = ("synchronous", "delayed_stream", "delayed_chunk")
MIXERS = ("sum", "scalar", "dynamic_scalar", "dynamic_vector")
FW_MEMORIES = ("deltanet", "linear_attention")


class MemoryMixer(nn.Module):
    """One layer's memory: projections, FW- and/or KV-memory, mixing, per-head RMSNorm and W_o.

    `fw_memory` None means KV-memory only; `window` None means FW-memory only.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        fw_memory: str | None,
        window: int | None,
        blend: str,
        mixer: str,
        allow_neg_eigval: bool,
        chunk_size: int,
        backend: str | None,
        gate_bias: float,
    ) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.fw_memory, self.window, self.blend = fw_memory, window, blend
        self.mixer = mixer if fw_memory and window else None
        self.beta_scale = 2.0 if allow_neg_eigval else 1.0
        self.chunk_size, self.backend = chunk_size, backend
        gate_width = {None: 0, "sum": 0, "scalar": 0, "dynamic_scalar": 2 * num_heads, "dynamic_vector": dim}[self.mixer]
        beta_width = num_heads if fw_memory == "deltanet" else 0
        self.split_sizes = (dim, dim, dim, beta_width, gate_width)
        # Offsets of the gate's logits: the weights on o_FW start at sigmoid(gate_bias), dynamic_scalar's on
        # o_KV at sigmoid(-gate_bias). Not saved: a constant of the architecture, like the sigmoid.
        offset = {
            "dynamic_scalar": torch.cat([torch.full((num_heads,), gate_bias), torch.full((num_heads,), -gate_bias)]),
            "dynamic_vector": torch.full((dim,), gate_bias),
        }.get(self.mixer, torch.zeros(0))
        self.register_buffer("gate_offset", offset, persistent=False)
        self.in_proj = nn.Linear(dim, sum(self.split_sizes), bias=False)
        if self.mixer == "scalar":
            self.mix_weights = nn.Parameter(torch.ones(2))
        self.head_norm = RMSNorm(self.head_dim, backend)
        self.out_proj = nn.Linear(dim, dim, bias=False)
        self.fused = blend == "synchronous" and self.mixer == "dynamic_vector" and fw_memory == "deltanet"

    def initial_state(self, batch_size: int, device: torch.device | str | None, dtype: torch.dtype) -> State:
        """This layer's state (names without the layer prefix); FW states are kept in at least fp32."""
        heads, d = self.num_heads, self.head_dim
        fw_dtype = torch.promote_types(dtype, torch.float32)
        state = {}
        if self.fw_memory:
            state["fw"] = torch.zeros(batch_size, heads, d, d, device=device, dtype=fw_dtype)
        if self.fw_memory == "linear_attention":
            state["fw_normalizer"] = torch.zeros(batch_size, heads, d, device=device, dtype=fw_dtype)
        if self.window:
            state["kv_keys"] = torch.zeros(batch_size, self.window, heads, d, device=device, dtype=dtype)
            state["kv_values"] = torch.zeros(batch_size, self.window, heads, d, device=device, dtype=dtype)
        if self.window and self.blend == "delayed_chunk" and self.fw_memory == "deltanet":
            state["kv_beta"] = torch.zeros(batch_size, self.window, heads, device=device, dtype=dtype)
        return state

    def forward(
        self, x: Tensor, state: State, resets: Tensor, segment: Segment | RingStep | None,
        diagnostics: dict[str, Tensor] | None, in_place: bool,
    ) -> tuple[Tensor, State]:
        """x: `[B, T, D]` (normalised layer input); state: this layer's; resets: bool `[B, T]`;
        segment: the call's KV bookkeeping (a `RingStep` for the fused rollout step; None without
        KV-memory). Returns `[B, T, D]` and the new state; with `in_place`, the KV rings (and with the
        fused step, every entry) are the given tensors, updated in place. Fills `diagnostics`
        (gate_mean, fw_state_norm, attention_entropy) when it is a dict."""
        batch, steps, _ = x.shape
        heads_shape = (batch, steps, self.num_heads, self.head_dim)
        q, k, v, beta, gate = self.in_proj(x).split(self.split_sizes, dim=-1)
        q, k, v = q.view(heads_shape), k.view(heads_shape), F.silu(v).view(heads_shape)
        beta = self.beta_scale * torch.sigmoid(beta)
        gate = torch.sigmoid(gate + self.gate_offset)
        if isinstance(segment, RingStep):
            o, new_state = self._rollout_step(q, k, v, beta, gate.view(heads_shape), resets, state, segment, in_place)
        else:
            o, new_state = self._memories(q, k, v, beta, gate, resets, state, segment, diagnostics, in_place)
        return self.out_proj(self.head_norm(o).reshape(batch, steps, -1)), new_state

    def _rollout_step(
        self, q: Tensor, k: Tensor, v: Tensor, beta: Tensor, gate: Tensor, resets: Tensor, state: State, ring: RingStep,
        in_place: bool,
    ) -> tuple[Tensor, State]:
        """One step `[B, 1, H, d]` through the fused step op, which updates its buffers in place: the state's
        own tensors with `in_place`, otherwise copies, so that the caller's state stays valid. It computes
        in the ring's dtype (e.g. fp32 under autocast)."""
        names = ("fw", "kv_keys", "kv_values")
        if in_place:
            new_state = {name: state[name] for name in names}
        else:
            new_state = {name: state[name].clone(memory_format=torch.contiguous_format) for name in names}
        dtype = new_state["kv_keys"].dtype
        q, k, v, beta, gate = (tensor.to(dtype) for tensor in (q, k, v, beta, gate))
        o, _ = kernels.synchronous_hqlt_step(
            q, k, v, beta, gate, resets, new_state["fw"], new_state["kv_keys"], new_state["kv_values"],
            ring.kv_valid, ring.kv_write, window=self.window, backend=self.backend,
        )
        return o, new_state

    def _memories(
        self, q: Tensor, k: Tensor, v: Tensor, beta: Tensor, gate: Tensor, resets: Tensor, state: State,
        segment: Segment | None, diagnostics: dict[str, Tensor] | None, in_place: bool,
    ) -> tuple[Tensor, State]:
        """The mixed memory output `[B, T, H, d]` and this layer's new state (KV rings written in place
        with `in_place`, after the cached entries are read)."""
        new_state: State = {}
        cache_k = cache_v = None
        if self.window:
            cache_k = segment.chronological(state["kv_keys"]).to(k.dtype)
            cache_v = segment.chronological(state["kv_values"]).to(v.dtype)
            new_state["kv_keys"] = segment.next_ring(state["kv_keys"], k, in_place)
            new_state["kv_values"] = segment.next_ring(state["kv_values"], v, in_place)
        if self.fused:
            o, new_state["fw"] = kernels.synchronous_hqlt(
                q, k, v, beta, gate.view(q.shape), resets, state["fw"], cache_k, cache_v, segment.attention_cache_valid,
                window=self.window, chunk_size=self.chunk_size, backend=self.backend,
            )
        else:
            o_kv = o_fw = None
            if self.window:
                o_kv = kernels.window_attention(
                    q, k, v, segment.attention_resets, cache_k, cache_v, segment.attention_cache_valid,
                    window=self.window, backend=self.backend,
                )
            if self.fw_memory:
                o_fw, fw_state = self._fast_weights(q, k, v, beta, resets, state, segment, cache_k, cache_v, in_place)
                new_state.update(fw_state)
            o = self._mix(o_fw, o_kv, gate)
        if diagnostics is not None:
            with torch.no_grad():
                self._diagnose(diagnostics, q, k, gate, new_state, segment, cache_k)
        return o, new_state

    def _fast_weights(
        self, q: Tensor, k: Tensor, v: Tensor, beta: Tensor, resets: Tensor, state: State, segment: Segment | None,
        cache_k: Tensor | None, cache_v: Tensor | None, in_place: bool,
    ) -> tuple[Tensor, State]:
        """The FW-memory's output `[B, T, H, d]` for this layer's blend and the state entries it updates.
        cache_k, cache_v: the KV ring, chronological `[B, S, H, d]` (None without KV-memory); `in_place`
        writes Delayed-Chunk's beta ring in place."""
        if self.window is None or self.blend == "synchronous":
            return self._fast_weight_op(q, k, v, beta, None, resets, state)
        steps = q.shape[1]
        if self.blend == "delayed_stream":
            delayed_k, delayed_v = combine(cache_k, k)[:, :steps], combine(cache_v, v)[:, :steps]
            return self._fast_weight_op(q, delayed_k, delayed_v, beta, segment.delayed_writes, resets, state)
        # delayed_chunk: the open chunk's betas wait in the ring with its keys and values.
        chunks = segment.chunks
        all_q = combine(torch.zeros_like(cache_k), q)
        all_k, all_v = combine(cache_k, k), combine(cache_v, v)
        slot_beta, ring_beta = None, {}
        if self.fw_memory == "deltanet":
            cache_beta = segment.chronological(state["kv_beta"]).to(beta.dtype)
            all_beta = combine(cache_beta, beta)
            slot_beta = chunks.interleave(all_beta, all_beta)
            ring_beta = {"kv_beta": segment.next_ring(state["kv_beta"], beta, in_place)}
        o, fw_state = self._fast_weight_op(
            chunks.interleave(all_q, all_q), chunks.interleave(all_k, all_k), chunks.interleave(all_v, all_v), slot_beta,
            chunks.slot_writes, chunks.slot_resets, state,
        )
        return take(o, chunks.read_slots), {**fw_state, **ring_beta}

    def _fast_weight_op(
        self, q: Tensor, k: Tensor, v: Tensor, beta: Tensor | None, writes: Tensor | None, resets: Tensor, state: State
    ) -> tuple[Tensor, State]:
        """Run the FW op over `[B, L, H, d]` inputs; `writes` (bool `[B, L]`, None = all) marks the tokens
        that write. A DeltaNet token writes nothing with beta = 0; a linear-attention token writes
        nothing with key -inf, since phi(-inf) = ELU(-inf) + 1 = 0."""
        if self.fw_memory == "deltanet":
            if writes is not None:
                beta = beta * writes[..., None]
            o, fw = kernels.delta_rule(
                q, k, v, beta, resets, state["fw"], chunk_size=self.chunk_size, backend=self.backend
            )
            return o, {"fw": fw}
        if writes is not None:
            k = k.masked_fill(~writes[..., None, None], float("-inf"))
        o, fw, normalizer = kernels.linear_attention(
            q, k, v, resets, state["fw"], state["fw_normalizer"], chunk_size=self.chunk_size, backend=self.backend
        )
        return o, {"fw": fw, "fw_normalizer": normalizer}

    def _mix_weights(self, gate: Tensor) -> tuple[Tensor, Tensor] | None:
        """The weights on o_FW and on o_KV, `[B, T, H, d]`-broadcastable, from the mixer's sigmoids
        gate `[B, T, gate_width]`; None for the plain sum."""
        if self.mixer == "scalar":
            return self.mix_weights[0], self.mix_weights[1]
        if self.mixer == "dynamic_scalar":
            return gate[..., : self.num_heads, None], gate[..., self.num_heads :, None]
        if self.mixer == "dynamic_vector":
            weight = gate.view(*gate.shape[:2], self.num_heads, self.head_dim)
            return weight, 1 - weight
        return None

    def _mix(self, o_fw: Tensor | None, o_kv: Tensor | None, gate: Tensor) -> Tensor:
        """Mix o_FW and o_KV `[B, T, H, d]`; gate: the mixer's sigmoids `[B, T, gate_width]`."""
        if o_kv is None or o_fw is None:
            return o_kv if o_fw is None else o_fw
        weights = self._mix_weights(gate)
        if weights is None:
            return o_fw + o_kv
        return weights[0] * o_fw + weights[1] * o_kv

    def _diagnose(
        self, diagnostics: dict[str, Tensor], q: Tensor, k: Tensor, gate: Tensor, new_state: State,
        segment: Segment | None, cache_k: Tensor | None,
    ) -> None:
        weights = self._mix_weights(gate)
        if weights is not None:
            diagnostics["gate_mean"] = weights[0].float().mean()
        if self.fw_memory:
            diagnostics["fw_state_norm"] = torch.linalg.matrix_norm(new_state["fw"].float()).mean()
        if self.window:
            diagnostics["attention_entropy"] = attention_entropy(
                q, k, segment.attention_resets, cache_k, segment.attention_cache_valid, self.window
            )


class AttentionCore(MemoryCore):
    """Input projection, `num_layers` x (h += MemoryMixer(RMSNorm(h)); h += SwiGLU(RMSNorm(h))), final RMSNorm.

    State (batch first): per layer i `layer{i}.fw [B, H, d, d]` (+ `layer{i}.fw_normalizer [B, H, d]` for
    linear attention), `layer{i}.kv_keys`, `layer{i}.kv_values [B, S, H, d]` (raw keys, ring order;
    + `layer{i}.kv_beta [B, S, H]` for Delayed-Chunk with DeltaNet); shared `kv_valid [B, S]` (bool),
    `kv_write [B]` (int64, the next ring slot) and, for Delayed-Chunk, `chunk_step [B]` (int64, steps
    of the open chunk).
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        *,
        fw_memory: str | None,
        window: int | None,
        blend: str = "synchronous",
        mixer: str = "dynamic_vector",
        num_layers: int = 2,
        num_heads: int = 4,
        chunk_size: int = 64,
        dropout: float = 0.0,
        allow_neg_eigval: bool = True,
        backend: str | None = None,
        gate_bias: float = 4.0,
    ) -> None:
        super().__init__(input_dim, hidden_dim)
        self.window, self.blend = window, blend
        self.input_proj = nn.Linear(input_dim, hidden_dim, bias=False)
        self.memory_norms = nn.ModuleList(RMSNorm(hidden_dim, backend) for _ in range(num_layers))
        self.mixers = nn.ModuleList(
            MemoryMixer(
                hidden_dim, num_heads, fw_memory=fw_memory, window=window, blend=blend, mixer=mixer,
                allow_neg_eigval=allow_neg_eigval, chunk_size=chunk_size, backend=backend, gate_bias=gate_bias,
            )
            for _ in range(num_layers)
        )
        self.feed_forwards = nn.ModuleList(FeedForwardBlock(hidden_dim, dropout, backend) for _ in range(num_layers))
        self.dropout = nn.Dropout(dropout)
        self.final_norm = RMSNorm(hidden_dim, backend)

    def initial_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
    ) -> State:
        """Zero memories; every KV entry invalid; ring write slot and chunk counter 0."""
        state = {}
        for i, mixer in enumerate(self.mixers):
            state.update({f"layer{i}.{name}": value for name, value in mixer.initial_state(batch_size, device, dtype).items()})
        if self.window:
            state["kv_valid"] = torch.zeros(batch_size, self.window, device=device, dtype=torch.bool)
            state["kv_write"] = torch.zeros(batch_size, device=device, dtype=torch.long)
        if self.window and self.blend == "delayed_chunk":
            state["chunk_step"] = torch.zeros(batch_size, device=device, dtype=torch.long)
        return state

    def _forward_in_place(
        self, x: Tensor, state: State, resets: Tensor, diagnostics: dict[str, Tensor] | None
    ) -> tuple[Tensor, State]:
        return self._forward(x, state, resets, diagnostics, in_place=True)

    def _forward(
        self, x: Tensor, state: State, resets: Tensor, diagnostics: dict[str, Tensor] | None, in_place: bool = False
    ) -> tuple[Tensor, State]:
        """With `in_place`, the KV rings and (fused rollout step) every state entry are updated in place;
        `MemoryCore.forward` copies the rest."""
        rollout_step = self.mixers[0].fused and x.shape[1] == 1 and diagnostics is None and not torch.is_grad_enabled()
        if rollout_step:
            segment = build_ring_step(state, resets, in_place)
        else:
            segment = build_segment(state, resets, self.window, self.blend) if self.window else None
        new_state = dict(segment.next_state) if isinstance(segment, Segment) else {}
        layer_diagnostics = [] if diagnostics is not None else None
        h = self.input_proj(x)
        for i, (norm, mixer, feed_forward) in enumerate(zip(self.memory_norms, self.mixers, self.feed_forwards)):
            prefix = f"layer{i}."
            layer_state = {name[len(prefix) :]: value for name, value in state.items() if name.startswith(prefix)}
            found = {} if diagnostics is not None else None
            out, layer_state = mixer(norm(h), layer_state, resets, segment, found, in_place)
            h = feed_forward(h + self.dropout(out))
            new_state.update({prefix + name: value for name, value in layer_state.items()})
            if found is not None:
                layer_diagnostics.append(found)
        if isinstance(segment, RingStep):  # after the last layer: every layer's op reads the flags before the step
            new_state.update(segment.advance())
        if diagnostics is not None:
            _summarise(diagnostics, layer_diagnostics)
        return self.final_norm(h), new_state


def _summarise(diagnostics: dict[str, Tensor], layers: list[dict[str, Tensor]]) -> None:
    """Metric names: `gate_mean/layer{i}` per layer; `fw_state_norm`, `attention_entropy` averaged over layers."""
    for i, found in enumerate(layers):
        if "gate_mean" in found:
            diagnostics[f"gate_mean/layer{i}"] = found["gate_mean"]
    for name in ("fw_state_norm", "attention_entropy"):
        values = [found[name] for found in layers if name in found]
        if values:
            diagnostics[name] = torch.stack(values).mean()
