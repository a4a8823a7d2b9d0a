"""LSTM and GRU cores: sequence mode (episodes as rows of fused calls, split where rows end) equals step
mode (fused cells) in outputs, final state and gradients, with resets at the layout's edge cases."""

from __future__ import annotations

import pytest
import torch

from hqlt.memory import build_core
from hqlt.memory.recurrent import Segments

INPUT_DIM, HIDDEN_DIM, STEPS = 3, 6, 23


def edge_case_resets() -> torch.Tensor:
    """Rows (each cut into segments of other lengths): the last segment is the longest; the last segment is
    a single step; consecutive resets and a reset at t=0; no reset at all; random resets."""
    resets = torch.zeros(5, STEPS, dtype=torch.bool)
    resets[0, [3, 7]] = True
    resets[1, [0, 10, STEPS - 1]] = True
    resets[2, [0, 1, 2, 15, 16]] = True
    resets[4] = torch.rand(STEPS, generator=torch.Generator().manual_seed(0)) < 0.25
    return resets


def run_sequence(core, x, state, resets):
    return core(x, state, resets)


def run_steps(core, x, state, resets):
    outputs = []
    for t in range(x.shape[1]):
        y, state = core(x[:, t : t + 1], state, resets[:, t : t + 1])
        outputs.append(y)
    return torch.cat(outputs, dim=1), state


def outputs_and_gradients(core, x, state, resets, run):
    """Outputs, final state, and the gradients of a loss on both w.r.t. x, the initial state and the weights."""
    x = x.clone().requires_grad_()
    state = {name: value.clone().requires_grad_() for name, value in state.items()}
    y, final = run(core, x, state, resets)
    weights = torch.linspace(-1, 1, y.numel()).view_as(y)
    loss = (weights * y).sum() + sum((value * value.flip(-1)).sum() for value in final.values())
    inputs = [x, *state.values(), *core.parameters()]
    return [y, *final.values(), *torch.autograd.grad(loss, inputs)]


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_sequence_mode_equals_steps_with_gradients(kind, num_layers):
    torch.manual_seed(0)
    core = build_core(kind, input_dim=INPUT_DIM, hidden_dim=HIDDEN_DIM, num_layers=num_layers)
    if kind == "lstm":  # forget gates near 1, so that the carried state still matters at the end of a row
        with torch.no_grad():
            for layer in core.layers:
                layer.bias_hh_l0[HIDDEN_DIM : 2 * HIDDEN_DIM] += 4.0
    resets = edge_case_resets()
    x = torch.randn(resets.shape[0], STEPS, INPUT_DIM)
    state = {name: torch.randn_like(value) for name, value in core.initial_state(resets.shape[0]).items()}
    sequence = outputs_and_gradients(core, x, state, resets, run_sequence)
    steps = outputs_and_gradients(core, x, state, resets, run_steps)
    for index, (actual, expected) in enumerate(zip(sequence, steps)):
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5, msg=lambda m: f"tensor {index}: {m}")


def test_segments_lay_out_episodes_longest_first_with_blocks_ending_at_last_segments():
    resets = torch.tensor([[True, False, True, False, False], [False, False, False, True, False]])
    segments = Segments.cut(resets)
    # Segments: row 0 -> steps 0-1, 2-4; row 1 -> steps 0-2, 3-4; longest first (stable): 0:2-4, 1:0-2, 0:0-1, 1:3-4.
    assert (segments.num_segments, segments.max_length) == (4, 3)
    assert segments.first.tolist() == [2, 1] and segments.last.tolist() == [0, 3]
    # Row 1's last segment ends after 2 steps, row 0's after 3: blocks end there; block 1 needs only 2 rows.
    assert segments.blocks == ((0, 2, 4), (2, 3, 2)) and segments.last_block.tolist() == [1, 0]
    x = torch.arange(10.0).view(2, 5, 1) + 1
    padded = segments.pad(x)
    assert padded[..., 0].tolist() == [[3, 4, 5], [6, 7, 8], [1, 2, 0], [9, 10, 0]]
    assert torch.equal(segments.unpad(padded, batch=2), x)


def test_state_keys_are_read_by_name():
    torch.manual_seed(0)
    core = build_core("lstm", input_dim=INPUT_DIM, hidden_dim=HIDDEN_DIM)
    resets = edge_case_resets()
    x = torch.randn(resets.shape[0], STEPS, INPUT_DIM)
    state = {name: torch.randn_like(value) for name, value in core.initial_state(resets.shape[0]).items()}
    reordered = {name: state[name] for name in reversed(list(state))}
    with torch.no_grad():
        for actual, expected in zip(core(x, reordered, resets), core(x, state, resets)):
            if isinstance(expected, dict):
                assert all(torch.equal(actual[name], expected[name]) for name in expected)
            else:
                assert torch.equal(actual, expected)
