"""Recurrent baselines: LSTM and GRU cores (DESIGN §3, Recurrent baselines).

Each layer is a one-layer `nn.LSTM`/`nn.GRU`, run three ways, all exact:
- step mode (T == 1): the fused cell (`torch.lstm_cell`/`torch.gru_cell`) on the layer's weights;
- sequence mode without resets inside the sequence: one fused (cuDNN/oneDNN) call per layer;
- sequence mode with resets inside: the episodes become the rows of one fused call per layer. Every
  row of x is cut at its resets into segments, laid out as right-padded rows `[M, L_max]`; a segment
  starts from zeros, or from the carried state for a row's first segment unless it starts an episode.
  This keeps one fused call and makes the sequential depth the longest segment instead of T.

The state after the call is each layer's state at the end of each row's last segment. Its h is the
layer's output there. The fused LSTM call returns c only after the padded end, so where a last
segment is shorter, c is recomputed from that segment's gates (`lstm_cell_after`).
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
    """The rows of a `[B, T]` call cut at their resets, as M right-padded rows of `max_length` steps.

    Step t of row b lives at flat position `slots[b * T + t]` of the padded `[M * max_length]` layout.
    """

    slots: Tensor  # [B * T]
    num_segments: int  # M
    max_length: int
    first: Tensor  # [B] segment of each row's first step
    last: Tensor  # [B] segment of each row's last step
    last_lengths: Tensor  # [B] length of each row's last segment
    last_span: int  # the longest last segment

    @staticmethod
    def cut(resets: Tensor) -> Segments:
        """resets: bool `[B, T]` with some reset inside (at t > 0)."""
        batch, steps = resets.shape
        starts = resets.clone()
        starts[:, 0] = True
        starts = starts.flatten()
        segment = starts.cumsum(0) - 1  # [B * T] segment of each step
        start_positions = starts.nonzero().flatten()  # [M]
        positions = torch.arange(batch * steps, device=resets.device)
        lengths = torch.diff(start_positions, append=positions[-1:] + 1)
        max_length = int(lengths.max())
        slots = segment * max_length + positions - start_positions[segment]
        first, last = segment[::steps], segment[steps - 1 :: steps]
        last_lengths = lengths[last]
        return Segments(slots, len(start_positions), max_length, first, last, last_lengths, int(last_lengths.max()))

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

    def __init__(self, kind: str, input_dim: int, hidden_dim: int, *, num_layers: int = 1) -> None:
        super().__init__(input_dim, hidden_dim)
        self.kind = kind
        self.num_layers = num_layers
        self.layers = nn.ModuleList(
            RNN_CLASSES[kind](input_dim if layer == 0 else hidden_dim, hidden_dim, batch_first=True)
            for layer in range(num_layers)
        )
        self.state_names = ("h", "c") if kind == "lstm" else ("h",)

    def initial_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
    ) -> State:
        """Zero hidden (and cell) states `[batch_size, num_layers, hidden_dim]`."""
        shape = (batch_size, self.num_layers, self.hidden_dim)
        return {name: torch.zeros(shape, device=device, dtype=dtype) for name in self.state_names}

    def _forward(self, x: Tensor, state: State, resets: Tensor, diagnostics: dict[str, Tensor] | None) -> tuple[Tensor, State]:
        carried = (~resets[:, :1]).to(x.dtype)  # [B, 1]: the incoming state survives step 0
        if x.shape[1] == 1:
            return self._step(x[:, 0], {name: value * carried[:, :, None] for name, value in state.items()})
        batch, steps = resets.shape
        segments = Segments.cut(resets) if resets[:, 1:].any() else None
        inputs = x if segments is None else segments.pad(x)
        final: dict[str, list[Tensor]] = {name: [] for name in self.state_names}
        for index, layer in enumerate(self.layers):
            initial = {name: value[:, index] * carried for name, value in state.items()}  # [B, hidden_dim]
            if segments is not None:  # first segments start from the carried state, the others from zeros
                initial = {
                    name: value.new_zeros(segments.num_segments, self.hidden_dim).index_copy(0, segments.first, value)
                    for name, value in initial.items()
                }
            outputs, last = self._layer_sequence(layer, inputs, initial, segments)
            for name in self.state_names:
                final[name].append(last[name])
            inputs = outputs
        y = inputs if segments is None else segments.unpad(inputs, batch)
        return y, {name: torch.stack(values, dim=1) for name, values in final.items()}

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
        self, layer: nn.Module, inputs: Tensor, initial: State, segments: Segments | None
    ) -> tuple[Tensor, State]:
        """One layer over inputs `[R, L, F]` from initial `{name: [R, hidden_dim]}` (R = B, or M segments).

        Returns the outputs `[R, L, hidden_dim]` and the state `{name: [B, hidden_dim]}` after each row's
        last step.
        """
        hidden = tuple(initial[name][None] for name in self.state_names)
        outputs, ends = layer(inputs, hidden if self.kind == "lstm" else hidden[0])
        ends = ends if self.kind == "lstm" else (ends,)
        if segments is None:
            return outputs, {name: end[0] for name, end in zip(self.state_names, ends)}
        last, span = segments.last, segments.last_span
        final = {"h": outputs[last, segments.last_lengths - 1]}
        if self.kind == "lstm":
            final["c"] = lstm_cell_after(
                layer, inputs[last, :span], outputs[last, :span], initial["h"][last], initial["c"][last], segments.last_lengths
            )
        return outputs, final


def lstm_cell_after(layer: nn.LSTM, inputs: Tensor, outputs: Tensor, h0: Tensor, c0: Tensor, lengths: Tensor) -> Tensor:
    """The cell state of a one-layer LSTM after `lengths[r]` steps of row r, from its own outputs.

    inputs `[R, L, F]`, outputs `[R, L, hidden]` (the layer's h at every step, from h0, c0 `[R, hidden]`),
    lengths `[R]` in 1..L -> c `[R, hidden]`. The gates at step t follow from the input at t and h at
    t - 1, so all of them come from one batched product, and c_t = f_t c_{t-1} + i_t g_t unrolls to
    c = c0 prod_s f_s + sum_t i_t g_t prod_{s > t} f_s, with the products as sums of log f_s.
    """
    previous_h = torch.cat([h0[:, None], outputs[:, :-1]], dim=1)
    needed = slice(0, 3 * layer.hidden_size)  # the input, forget and cell-input gates; c never needs the output gate
    gates = F.linear(inputs, layer.weight_ih_l0[needed], layer.bias_ih_l0[needed]) + F.linear(
        previous_h, layer.weight_hh_l0[needed], layer.bias_hh_l0[needed]
    )
    input_gate, forget_gate, cell_input = gates.chunk(3, dim=-1)
    padding = (torch.arange(inputs.shape[1], device=inputs.device) >= lengths[:, None])[:, :, None]  # [R, L, 1]
    log_forget = F.logsigmoid(forget_gate).masked_fill(padding, 0.0)  # padding steps keep c
    writes = (torch.sigmoid(input_gate) * torch.tanh(cell_input)).masked_fill(padding, 0.0)
    # Sum of log f over the steps after t: a reversed cumulative sum of the next steps' log f.
    later = torch.cat([log_forget[:, 1:], torch.zeros_like(log_forget[:, :1])], dim=1)
    log_decay = later.flip(1).cumsum(1).flip(1)
    return c0 * (log_decay[:, 0] + log_forget[:, 0]).exp() + (writes * log_decay.exp()).sum(dim=1)
