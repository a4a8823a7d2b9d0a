"""Recurrent baselines: LSTM and GRU cores (DESIGN §3, Recurrent baselines).

Sequence mode runs `nn.LSTM`/`nn.GRU` (cuDNN on CUDA) over the segments between the steps where
some row starts an episode, clearing the hidden state of the rows that start one. Without resets
strictly inside the sequence this is a single cuDNN call; a reset at t = 0 only clears the incoming
state. The segmentation is exact, so sequence mode equals step mode.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hqlt.memory.core import MemoryCore, State

RNN_CLASSES = {"lstm": nn.LSTM, "gru": nn.GRU}


class RecurrentCore(MemoryCore):
    """`nn.LSTM` or `nn.GRU` with `num_layers` layers of width `hidden_dim`.

    State: `h` `[B, num_layers, hidden_dim]` (and `c` for the LSTM), batch first.
    """

    def __init__(self, kind: str, input_dim: int, hidden_dim: int, *, num_layers: int = 1) -> None:
        super().__init__(input_dim, hidden_dim)
        self.kind = kind
        self.num_layers = num_layers
        self.rnn = RNN_CLASSES[kind](input_dim, hidden_dim, num_layers=num_layers, batch_first=True)
        self.state_names = ("h", "c") if kind == "lstm" else ("h",)

    def initial_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
    ) -> State:
        """Zero hidden (and cell) states `[batch_size, num_layers, hidden_dim]`."""
        shape = (batch_size, self.num_layers, self.hidden_dim)
        return {name: torch.zeros(shape, device=device, dtype=dtype) for name in self.state_names}

    def _forward(self, x: Tensor, state: State, resets: Tensor, diagnostics: dict[str, Tensor] | None) -> tuple[Tensor, State]:
        # nn.LSTM/nn.GRU keep the layer dim first: [num_layers, B, hidden_dim].
        hidden = [state[name].transpose(0, 1) for name in self.state_names]
        steps = x.shape[1]
        inner_starts = (torch.nonzero(resets[:, 1:].any(dim=0)).flatten() + 1).tolist() if steps > 1 else []
        bounds = [0, *inner_starts, steps]
        outputs = []
        for start, end in zip(bounds[:-1], bounds[1:]):
            starting = resets[:, start][None, :, None]
            hidden = [h.masked_fill(starting, 0.0).contiguous() for h in hidden]
            y, new_hidden = self.rnn(x[:, start:end], tuple(hidden) if self.kind == "lstm" else hidden[0])
            hidden = list(new_hidden) if self.kind == "lstm" else [new_hidden]
            outputs.append(y)
        y = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
        return y, {name: h.transpose(0, 1) for name, h in zip(self.state_names, hidden)}
