"""Memory cores: one API in step mode and sequence mode (DESIGN §2).

    core = build_core(name, input_dim=..., hidden_dim=..., **options)
    state = core.initial_state(batch_size, device)
    y, state = core(x, state, resets)      # x [B, T, input_dim], resets bool [B, T]
"""

from hqlt.memory.core import MemoryCore, State
from hqlt.memory.registry import CORE_NAMES, build_core, core_options

__all__ = ["CORE_NAMES", "MemoryCore", "State", "build_core", "core_options"]
