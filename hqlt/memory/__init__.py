"""Memory cores: one API in step mode and sequence mode (DESIGN §2).

    core = build_core(name, input_dim=..., hidden_dim=..., **options)   # name in CORE_NAMES
    state = core.initial_state(batch_size, device)                      # dict of [B, ...] tensors
    y, state = core(x, state, resets)         # x [B, T, input_dim] float, resets bool [B, T]
    y, state = core(x, state, resets, in_place=True)   # no grad: new state written into the given tensors
    state = core.reset_state(state, done)     # done bool [B]; not (1 - done) * state: entries are bool/int64 too
    batch_size = state_batch_size(state)      # B
    core.record_diagnostics = True            # forwards then fill core.last_diagnostics
"""

from hqlt.memory.attention import BLENDS, FW_MEMORIES, MIXERS
from hqlt.memory.core import MemoryCore, State, state_batch_size
from hqlt.memory.registry import CORE_NAMES, CORE_OPTIONS, build_core, core_options

__all__ = [
    "BLENDS",
    "CORE_NAMES",
    "CORE_OPTIONS",
    "FW_MEMORIES",
    "MIXERS",
    "MemoryCore",
    "State",
    "build_core",
    "core_options",
    "state_batch_size",
]
