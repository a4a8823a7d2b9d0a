"""The memoryless control: the transformer block stack without a memory mixer."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hqlt.memory.blocks import FeedForwardBlock, RMSNorm
from hqlt.memory.core import MemoryCore, State


class MLPCore(MemoryCore):
    """Input projection, `num_layers` pre-norm SwiGLU blocks, final RMSNorm; y_t depends on x_t only.

    State: `empty` `[B, 0]`, which only carries the batch size so that the state indexes like any other.
    """

    def __init__(self, input_dim: int, hidden_dim: int, *, num_layers: int = 1, dropout: float = 0.0) -> None:
        super().__init__(input_dim, hidden_dim)
        self.input_proj = nn.Linear(input_dim, hidden_dim, bias=False)
        self.blocks = nn.ModuleList(FeedForwardBlock(hidden_dim, dropout) for _ in range(num_layers))
        self.final_norm = RMSNorm(hidden_dim)

    def initial_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
    ) -> State:
        """`{"empty": [batch_size, 0]}`."""
        return {"empty": torch.zeros(batch_size, 0, device=device, dtype=dtype)}

    def _forward(self, x: Tensor, state: State, resets: Tensor, diagnostics: dict[str, Tensor] | None) -> tuple[Tensor, State]:
        h = self.input_proj(x)
        for block in self.blocks:
            h = block(h)
        return self.final_norm(h), state
