"""Bookkeeping of one call, shared by every layer: the KV ring buffer and the blends' write schedules.

The KV-memory of a layer keeps the raw keys and values (before RoPE) of the last S = window steps in
a ring buffer `[B, S, ...]`; `kv_write [B]` is the slot of the next write and `kv_valid [B, S]` flags
the entries of the episode current at the end of the last call. All layers write in lockstep, so
these two and the step-in-chunk counter of Delayed-Chunk are stored once, not per layer.

Within a call, "chronological" order lists the cached entries oldest first (entry i lives in slot
`(kv_write + i) % S`), and the "combined" sequence is those S entries followed by the T new tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from hqlt.kernels import advance_ring


def take(x: Tensor, index: Tensor) -> Tensor:
    """Per-row gather along time: x `[B, L, ...]`, index `[B, M]` -> `[B, M, ...]`."""
    rows = torch.arange(x.shape[0], device=x.device)[:, None]
    return x[rows, index]


def combine(cache: Tensor, new: Tensor) -> Tensor:
    """The combined sequence: cached entries (chronological) `[B, S, ...]` then new tokens `[B, T, ...]`."""
    return torch.cat([cache, new], dim=1)


@dataclass(frozen=True)
class ChunkSchedule:
    """Delayed-Chunk's FW-memory as one fast-weight call over an interleaved sequence (exact, parallel).

    The episode is cut into chunks of S steps; a token reads the FW state as of the start of its
    chunk and the state absorbs a chunk when it completes. Each chunk of the combined sequence
    (length L <= S) occupies 2L consecutive slots: first L *read* slots (the chunk's queries; no
    write), then L *write* slots (the chunk's keys and values, written only when the chunk is complete
    and alive). A fast-weight op, which writes then reads at every slot, therefore reads every query
    against exactly the chunks completed before it. The layout has the fixed length 2 (S + T), known
    without a host sync. Cached entries older than the open chunk are dead (never written; their read
    slots are ignored). The price: the FW op runs over 2 (S + T) tokens instead of T, about twice the
    work in sequence mode (T >> S), and O(S) instead of O(1) per step in step mode.
    """

    read_slots: Tensor  # [B, T] slot where new token t reads
    slot_sources: Tensor  # [B, 2(S+T)] for each slot, its index in cat(reads, writes) of the combined sequence
    slot_writes: Tensor  # [B, 2(S+T)] bool: the slot writes into the FW state
    slot_resets: Tensor  # [B, 2(S+T)] bool: an episode starts at this slot (the first read of its first chunk)

    def interleave(self, reads: Tensor, writes: Tensor) -> Tensor:
        """reads, writes: `[B, S+T, ...]` (combined order) -> the slot sequence `[B, 2(S+T), ...]`."""
        return take(torch.cat([reads, writes], dim=1), self.slot_sources)


@dataclass(frozen=True)
class Segment:
    """Everything a layer needs to run its KV-memory (and the delayed blends) on one call of T tokens."""

    window: int
    resets: Tensor  # [B, T]
    cache_slots: Tensor  # [B, S] ring slot of chronological entry i
    attention_resets: Tensor  # [B, T] episode starts (and chunk starts for Delayed-Chunk) for window attention
    attention_cache_valid: Tensor  # [B, S] chronological: cached entries the new tokens may attend to
    write_slots: Tensor  # [B, min(T, S)] ring slots of the last min(T, S) new tokens
    next_state: dict[str, Tensor]  # the shared state after the call: kv_valid, kv_write (and chunk_step)
    delayed_writes: Tensor | None  # Delayed-Stream: [B, T] the pair leaving the window at t is written
    chunks: ChunkSchedule | None  # Delayed-Chunk

    def chronological(self, ring: Tensor) -> Tensor:
        """ring `[B, S, ...]` in slot order -> oldest first."""
        return take(ring, self.cache_slots)

    def next_ring(self, ring: Tensor, new: Tensor, in_place: bool = False) -> Tensor:
        """The ring after the call (slot order) `[B, S, ...]`: `ring` with the new tokens `[B, T, ...]` written
        in order from slot kv_write on (only the last S of them survive); with `in_place`, written into
        `ring` itself (read what the call needs of the old ring first)."""
        rows = torch.arange(ring.shape[0], device=ring.device)[:, None]
        written = new[:, new.shape[1] - self.write_slots.shape[1] :].to(ring.dtype)
        if in_place:
            return ring.index_put_((rows, self.write_slots), written)
        return ring.index_put((rows, self.write_slots), written)


@dataclass(frozen=True)
class RingStep:
    """One rollout step through the in-place step op: the ring flags before the step, which each layer's
    op reads, and the step's resets; `advance` moves the flags on after the last layer."""

    kv_valid: Tensor  # [B, S] slot order
    kv_write: Tensor  # [B]
    resets: Tensor  # [B, 1]

    def advance(self) -> dict[str, Tensor]:
        """Advances `kv_valid` and `kv_write` in place; returns them as the shared state after the step."""
        advance_ring(self.kv_valid, self.kv_write, self.resets)
        return {"kv_valid": self.kv_valid, "kv_write": self.kv_write}


def build_ring_step(state: dict[str, Tensor], resets: Tensor, in_place: bool) -> RingStep:
    """state holds `kv_valid [B, S]` and `kv_write [B]`; resets: bool `[B, 1]`. The step advances these
    tensors themselves with `in_place`, copies of them otherwise (the inputs stay untouched)."""
    kv_valid, kv_write = state["kv_valid"], state["kv_write"]
    if not in_place:
        kv_valid, kv_write = kv_valid.clone(), kv_write.clone()
    return RingStep(kv_valid, kv_write, resets)


def build_segment(state: dict[str, Tensor], resets: Tensor, window: int, blend: str) -> Segment:
    """The bookkeeping of one call: state holds `kv_write [B]`, `kv_valid [B, S]` (and `chunk_step [B]`
    for blend == "delayed_chunk"); resets: bool `[B, T]`."""
    batch, steps = resets.shape
    device = resets.device
    rows = torch.arange(batch, device=device)[:, None]
    kv_write = state["kv_write"]
    cache_slots = (kv_write[:, None] + torch.arange(window, device=device)) % window
    cache_valid = state["kv_valid"][rows, cache_slots]

    episode = torch.cumsum(resets.long(), dim=1)  # [B, T] episode index within the call
    kept = min(steps, window)
    write_slots = (kv_write[:, None] + torch.arange(steps - kept, steps, device=device)) % window
    # Valid after the call: old entries if no episode started, new ones if of the last episode.
    old_valid = state["kv_valid"] & ~resets.any(dim=1, keepdim=True)
    new_valid = (episode == episode[:, -1:])[:, steps - kept :]
    next_state = {"kv_valid": old_valid.index_put((rows, write_slots), new_valid), "kv_write": (kv_write + steps) % window}

    attention_resets, attention_cache_valid = resets, cache_valid
    delayed_writes = chunks = None
    if blend == "delayed_stream":
        # The pair leaving the window at step t is combined entry t; it is written if it is of t's episode.
        combined_episode = combine(episode.new_zeros(batch, window), episode)
        combined_valid = combine(cache_valid, resets.new_ones(batch, steps))
        delayed_writes = combined_valid[:, :steps] & (combined_episode[:, :steps] == episode)
    elif blend == "delayed_chunk":
        chunk_step = state["chunk_step"]
        position = _position_in_chunk(chunk_step, resets, window)
        open_chunk = torch.arange(window, device=device) >= window - chunk_step[:, None]
        attention_resets = position == 0
        attention_cache_valid = cache_valid & open_chunk
        chunks = _chunk_schedule(attention_cache_valid, chunk_step, attention_resets, resets, window)
        next_state["chunk_step"] = (position[:, -1] + 1) % window
    return Segment(
        window, resets, cache_slots, attention_resets, attention_cache_valid, write_slots, next_state, delayed_writes, chunks
    )


def last_reset(resets: Tensor) -> Tensor:
    """Index of the last step at or before each step where `resets` (bool `[B, T]`) is true, int64 `[B, T]`;
    -1 before a row's first reset."""
    time = torch.arange(resets.shape[1], device=resets.device)
    return torch.cummax(torch.where(resets, time, -1), dim=1).values


def _position_in_chunk(chunk_step: Tensor, resets: Tensor, window: int) -> Tensor:
    """Step of each new token within its chunk `[B, T]`: counted from the last reset in the call, or on
    from the carried counter `chunk_step [B]` where the call has no reset yet."""
    time = torch.arange(resets.shape[1], device=resets.device)
    start = last_reset(resets)
    return torch.where(start >= 0, time - start, chunk_step[:, None] + time) % window


def _chunk_schedule(alive_cache: Tensor, chunk_step: Tensor, chunk_starts: Tensor, resets: Tensor, window: int) -> ChunkSchedule:
    """Slot layout of `ChunkSchedule` for the combined sequence of S cached entries and T new tokens.

    alive_cache: `[B, S]` cached entries of the open chunk; chunk_step: `[B]` its length so far;
    chunk_starts, resets: `[B, T]`.
    """
    batch, steps = resets.shape
    length = window + steps
    device = resets.device
    index = torch.arange(length, device=device).expand(batch, length)
    # Chunks of the combined sequence: the dead prefix, the open chunk, then the new tokens' chunks.
    cache_index = index[:, :window]
    cache_starts = (cache_index == 0) | (cache_index == window - chunk_step[:, None])
    starts = combine(cache_starts, chunk_starts)
    chunk_start = torch.cummax(torch.where(starts, index, 0), dim=1).values
    following_start = torch.where(combine(starts[:, 1:], starts.new_ones(batch, 1)), index + 1, length)
    chunk_end = torch.flip(torch.cummin(torch.flip(following_start, [1]), dim=1).values, [1])
    chunk_length = chunk_end - chunk_start
    offset = index - chunk_start
    read_slot = 2 * chunk_start + offset
    write_slot = read_slot + chunk_length
    alive = combine(alive_cache, resets.new_ones(batch, steps))
    writes = alive & (chunk_length == window)

    slots = torch.cat([read_slot, write_slot], dim=1)
    sources = torch.arange(2 * length, device=device).expand(batch, -1)
    slot_sources = torch.empty_like(slots).scatter_(1, slots, sources)
    no_flags = resets.new_zeros(batch, length)
    combined_resets = combine(resets.new_zeros(batch, window), resets)
    return ChunkSchedule(
        read_slots=read_slot[:, window:],
        slot_sources=slot_sources,
        slot_writes=take(torch.cat([no_flags, writes], dim=1), slot_sources),
        slot_resets=take(torch.cat([combined_resets, no_flags], dim=1), slot_sources),
    )
