"""Recurrent baselines: LSTM and GRU cores (DESIGN §3, Recurrent baselines).

Each layer is a one-layer `nn.LSTM`/`nn.GRU` (cuDNN on CUDA, oneDNN on CPU), run exactly in two ways:
- step mode (T == 1): the fused cell (`torch.lstm_cell`/`torch.gru_cell`) on the layer's weights;
- sequence mode: the episodes become the rows of the fused calls (`Segments`). Every row of x is cut at
  its resets into segments, laid out longest first as right-padded rows `[M, max_length]`; a segment
  starts from zeros, or from the carried state for a row's first segment unless it starts an episode.
  The fused call then needs no reset inside, and its sequential depth is the longest segment, not T.
  The call is split in time where rows' last segments end (at most B + 1 calls per layer; one when no
  reset falls inside the sequence), so that each row's final state is a state that a call returns, and
  segments that have ended drop out of the later calls.

Why: one fused call per stretch between reset steps over the original rows makes many narrow calls,
each paying the kernel's fixed cost and running the full depth T on a few rows (benchmarks/RESULTS.md,
Training SPS).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hqlt.memory.core import MemoryCore, State

RNN_CLASSES = {"lstm": nn.LSTM, "gru": nn.GRU}


@dataclass(frozen=True)
class Segments:
    """The rows of a `[B, T]` call cut at their resets into M segments, as right-padded rows `[M, max_length]`
    ordered longest first (so the segments still running at any step are the first rows).

    Step t of row b lives at flat position `slots[b * T + t]` of the padded `[M * max_length]` layout.
    `blocks` splits the padded steps in time: block k runs steps `start..end-1` of its first `rows` rows;
    each block ends where some row's last segment ends, and that row's final state is the state after
    block `last_block[b]`, at row `last[b]`.
    """

    slots: Tensor  # [B * T]
    num_segments: int  # M
    max_length: int
    first: Tensor  # [B] padded row of each row's first segment
    last: Tensor  # [B] padded row of each row's last segment
    blocks: tuple[tuple[int, int, int], ...]  # (start, end, rows)
    last_block: Tensor  # [B]

    @staticmethod
    def cut(resets: Tensor) -> Segments:
        """resets: bool `[B, T]`."""
        batch, steps = resets.shape
        starts = resets.clone()
        starts[:, 0] = True
        starts = starts.flatten()
        segment = starts.cumsum(0) - 1  # [B * T] segment of each step, in order of appearance
        start_positions = starts.nonzero().flatten()  # [M]
        num_segments = len(start_positions)
        positions = torch.arange(batch * steps, device=resets.device)
        lengths = torch.diff(start_positions, append=positions[-1:] + 1)
        order = torch.argsort(lengths, descending=True, stable=True)
        row = torch.empty_like(order)
        row[order] = torch.arange(num_segments, device=resets.device)  # padded row of each segment
        sorted_lengths = lengths[order].tolist()
        max_length = sorted_lengths[0]
        slots = row[segment] * max_length + positions - start_positions[segment]
        last_segment = segment[steps - 1 :: steps]
        last_lengths = lengths[last_segment].tolist()
        ends = sorted(set(last_lengths) | {max_length})
        blocks = tuple(
            (start, end, sum(length > start for length in sorted_lengths)) for start, end in zip([0, *ends[:-1]], ends)
        )
        last_block = torch.tensor([ends.index(length) for length in last_lengths], device=resets.device)
        return Segments(slots, num_segments, max_length, row[segment[::steps]], row[last_segment], blocks, last_block)

    def pad(self, x: Tensor) -> Tensor:
        """x `[B, T, F]` -> `[M, max_length, F]`, zeros after each segment's end."""
        padded = x.new_zeros(self.num_segments * self.max_length, x.shape[-1])
        return padded.index_copy(0, self.slots, x.flatten(0, 1)).view(self.num_segments, self.max_length, -1)

    def unpad(self, y: Tensor, batch: int) -> Tensor:
        """y `[M, max_length, F]` -> `[B, T, F]`."""
        return y.flatten(0, 1).index_select(0, self.slots).view(batch, -1, y.shape[-1])


class RecurrentCore(MemoryCore):
    """`num_layers` one-layer `nn.LSTM`s or `nn.GRU`s of width `hidden_dim`.

    State: `h` `[B, num_layers, hidden_dim]` (and `c` for the LSTM), batch first.
    """

    def __init__(
        self, kind: str, input_dim: int, hidden_dim: int, *, num_layers: int = 1, forget_bias: float = 0.0
    ) -> None:
        super().__init__(input_dim, hidden_dim)
        self.kind = kind
        self.num_layers = num_layers
        self.layers = nn.ModuleList(
            RNN_CLASSES[kind](input_dim if layer == 0 else hidden_dim, hidden_dim, batch_first=True)
            for layer in range(num_layers)
        )
        if forget_bias:
            if kind != "lstm":
                raise ValueError(f"forget_bias is an LSTM option; the {kind} core has no forget gate")
            # Gates are ordered (input, forget, cell, output): a positive forget bias keeps the cell's
            # memory at initialisation (Jozefowicz et al. 2015) instead of halving it every step.
            with torch.no_grad():
                for layer in self.layers:
                    layer.bias_ih_l0[hidden_dim : 2 * hidden_dim] = forget_bias
                    layer.bias_hh_l0[hidden_dim : 2 * hidden_dim] = 0.0
        self.state_names = ("h", "c") if kind == "lstm" else ("h",)

    def initial_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
    ) -> State:
        """Zero hidden (and cell) states `[batch_size, num_layers, hidden_dim]`."""
        shape = (batch_size, self.num_layers, self.hidden_dim)
        return {name: torch.zeros(shape, device=device, dtype=dtype) for name in self.state_names}

    def _forward(self, x: Tensor, state: State, resets: Tensor, diagnostics: dict[str, Tensor] | None) -> tuple[Tensor, State]:
        starting = resets[:, :1, None]  # [B, 1, 1]: rows whose step 0 starts an episode begin from zeros
        state = {name: state[name].masked_fill(starting, 0.0) for name in self.state_names}
        if x.shape[1] == 1:
            return self._step(x[:, 0], state)
        segments = Segments.cut(resets)
        inputs = segments.pad(x)
        final: dict[str, list[Tensor]] = {name: [] for name in self.state_names}
        for index, layer in enumerate(self.layers):
            carried = [state[name][:, index] for name in self.state_names]  # each [B, hidden_dim]
            initial = [  # [M, hidden_dim]: first segments start from the carried state, the others from zeros
                value.new_zeros(segments.num_segments, self.hidden_dim).index_copy(0, segments.first, value)
                for value in carried
            ]
            inputs, ends = self._layer_sequence(layer, inputs, initial, segments)
            for name, end in zip(self.state_names, ends):
                final[name].append(end)
        return segments.unpad(inputs, x.shape[0]), {name: torch.stack(values, dim=1) for name, values in final.items()}

    def _step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """One step: x `[B, input_dim]`, state already cleared where an episode starts -> y `[B, 1, hidden_dim]`."""
        new: dict[str, list[Tensor]] = {name: [] for name in self.state_names}
        for index, layer in enumerate(self.layers):
            weights = (layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_ih_l0, layer.bias_hh_l0)
            if self.kind == "lstm":
                h, c = torch.lstm_cell(x, (state["h"][:, index], state["c"][:, index]), *weights)
                new["c"].append(c)
            else:
                h = torch.gru_cell(x, state["h"][:, index], *weights)
            new["h"].append(h)
            x = h
        return x[:, None], {name: torch.stack(values, dim=1) for name, values in new.items()}

    def _layer_sequence(
        self, layer: nn.Module, inputs: Tensor, initial: list[Tensor], segments: Segments
    ) -> tuple[Tensor, list[Tensor]]:
        """One layer over the padded inputs `[M, max_length, F]` from its initial state (h, and c for the LSTM,
        each `[M, hidden_dim]`), block by block.

        Returns the outputs `[M, max_length, hidden_dim]` (zeros where a block left a row out) and the
        state after each row's last segment (h, and c: `[B, hidden_dim]`).
        """
        hidden, outputs, block_ends = initial, [], []
        for start, end, rows in segments.blocks:
            hx = tuple(value[:rows][None] for value in hidden)
            y, new = layer(inputs[:rows, start:end], hx if self.kind == "lstm" else hx[0])
            hidden = [value[0] for value in (new if self.kind == "lstm" else (new,))]
            left_out = segments.num_segments - rows
            outputs.append(F.pad(y, (0, 0, 0, 0, 0, left_out)))
            block_ends.append([F.pad(value, (0, 0, 0, left_out)) for value in hidden])
        ends = [torch.stack(values)[segments.last_block, segments.last] for values in zip(*block_ends)]
        return torch.cat(outputs, dim=1), ends
