"""In-place mode of the memory cores (`core(x, state, resets, in_place=True)`): the given state tensors
receive the new state and come back, with the same outputs and values as the functional call, over
many steps with resets, for every core; on the reference backend and, small, on the Triton step
kernel through the interpreter.

Tiny sizes (window 3, chunk_size 4) so that the KV ring wraps many times in a few steps.
"""

from __future__ import annotations

import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    # Must be set before the kernel modules are imported: `triton.jit` reads it at decoration time.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hqlt.memory import build_core  # noqa: E402

INPUT_DIM, HIDDEN_DIM, BATCH, STEPS = 5, 8, 4, 24
ATTENTION = dict(num_layers=2, num_heads=2, window=3, chunk_size=4)
CONFIGS: dict[str, tuple[str, dict]] = {
    "lstm": ("lstm", dict(num_layers=2)),
    "gru": ("gru", dict(num_layers=2)),
    "mlp": ("mlp", dict(num_layers=2)),
    "transformer": ("transformer", ATTENTION),
    "linear_attention": ("linear_attention", ATTENTION),
    "deltanet": ("deltanet", ATTENTION),
    "hqlt-synchronous-fused-step": ("hqlt", ATTENTION),  # dynamic_vector mixer + DeltaNet: the step op
    "hqlt-synchronous-sum": ("hqlt", {**ATTENTION, "mixer": "sum"}),
    "hqlt-synchronous-linear_attention": ("hqlt", {**ATTENTION, "fw_memory": "linear_attention"}),
    "hqlt-delayed_stream": ("hqlt", {**ATTENTION, "blend": "delayed_stream", "mixer": "dynamic_scalar"}),
    "hqlt-delayed_chunk": ("hqlt", {**ATTENTION, "blend": "delayed_chunk", "mixer": "scalar"}),
}


def make_core(config_id: str, hidden_dim: int = HIDDEN_DIM, **extra):
    torch.manual_seed(0)
    name, options = CONFIGS[config_id]
    return build_core(name, input_dim=INPUT_DIM, hidden_dim=hidden_dim, **{**options, **extra}).eval()


def make_resets(batch: int, steps: int, generator: torch.Generator) -> torch.Tensor:
    """Random episode starts, plus one at t=0 and consecutive ones in row 0; row 1 never resets."""
    resets = torch.rand(batch, steps, generator=generator) < 0.15
    resets[0, 0] = True
    resets[0, 5:7] = True
    resets[1] = False
    return resets


def clone(state: dict) -> dict:
    return {name: value.clone() for name, value in state.items()}


def assert_same_state(actual: dict, expected: dict, what: str) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-5, atol=1e-6, msg=f"{what}: state[{name!r}]")


def run_both(core, steps: int, batch: int, device: torch.device = torch.device("cpu"), seed: int = 1, warm_steps: int = 5):
    """Steps the core functionally and in place side by side from a carried state, checking every step;
    returns both final states."""
    generator = torch.Generator().manual_seed(seed)
    state = core.initial_state(batch, device=device)
    with torch.no_grad():
        x = torch.randn(batch, warm_steps, INPUT_DIM, generator=generator).to(device)
        warm_resets = make_resets(batch, warm_steps, generator).to(device)
        for t in range(warm_steps):
            _, state = core(x[:, t : t + 1], state, warm_resets[:, t : t + 1])
        buffers = clone(state)
        given = dict(buffers)
        x = torch.randn(batch, steps, INPUT_DIM, generator=generator).to(device)
        resets = make_resets(batch, steps, generator).to(device)
        for t in range(steps):
            before = clone(state)
            y, new_state = core(x[:, t : t + 1], state, resets[:, t : t + 1])
            assert_same_state(state, before, f"step {t}: the functional step changed its input")
            state = new_state
            y_in_place, returned = core(x[:, t : t + 1], buffers, resets[:, t : t + 1], in_place=True)
            assert all(returned[name] is given[name] for name in given), "the in-place step returned new tensors"
            torch.testing.assert_close(y_in_place, y, rtol=1e-5, atol=1e-6, msg=f"step {t}: outputs")
            assert_same_state(buffers, state, f"step {t}")
    return state, buffers


@pytest.mark.parametrize("config_id", list(CONFIGS))
def test_in_place_steps_equal_functional_steps(config_id):
    core = make_core(config_id)
    run_both(core, STEPS, BATCH)


@pytest.mark.parametrize("config_id", ["lstm", "transformer", "deltanet", "hqlt-synchronous-fused-step", "hqlt-delayed_chunk"])
def test_in_place_sequence_equals_functional_sequence(config_id):
    """Sequence mode takes the switch too (chunk-parallel compute, the result written into the state)."""
    core = make_core(config_id)
    generator = torch.Generator().manual_seed(2)
    x, resets = torch.randn(BATCH, 9, INPUT_DIM, generator=generator), make_resets(BATCH, 9, generator)
    with torch.no_grad():
        _, state = core(x, core.initial_state(BATCH), resets)
        buffers = clone(state)
        y, new_state = core(x, state, resets)
        y_in_place, returned = core(x, buffers, resets, in_place=True)
    assert all(returned[name] is buffers[name] for name in buffers)
    torch.testing.assert_close(y_in_place, y, rtol=1e-5, atol=1e-6)
    assert_same_state(buffers, new_state, "sequence")


def test_functional_step_of_the_fused_core_leaves_the_state_untouched():
    """Without the switch the fused step op works on copies: acting and `Policy.value` may share a state."""
    core = make_core("hqlt-synchronous-fused-step")
    state = core.initial_state(BATCH)
    x = torch.randn(BATCH, 1, INPUT_DIM)
    with torch.no_grad():
        _, state = core(x, state, torch.ones(BATCH, 1, dtype=torch.bool))
        before = clone(state)
        _, new_state = core(x, state, torch.zeros(BATCH, 1, dtype=torch.bool))
    assert_same_state(state, before, "given state after a functional step")
    assert not torch.equal(new_state["layer0.fw"], before["layer0.fw"])
    assert not torch.equal(new_state["kv_write"], before["kv_write"])


def test_in_place_refuses_to_run_with_gradients():
    core = make_core("deltanet")
    with pytest.raises(RuntimeError, match="in_place=True is for acting without gradients"):
        core(torch.randn(2, 1, INPUT_DIM), core.initial_state(2), torch.zeros(2, 1, dtype=torch.bool), in_place=True)


def test_in_place_steps_on_the_triton_step_kernel():
    """The fused step op's Triton kernel (on CPU through the interpreter, small): in place equals
    functional, and both end where the reference step ends."""
    pytest.importorskip("triton")
    device = torch.device("cuda" if CUDA else "cpu")
    cores = {
        backend: make_core("hqlt-synchronous-fused-step", hidden_dim=32, backend=backend).to(device)  # head dim 16
        for backend in ("triton", "reference")
    }
    triton_state, _ = run_both(cores["triton"], 8, 2, device)
    reference_state, _ = run_both(cores["reference"], 8, 2, device)
    for name in reference_state:
        torch.testing.assert_close(triton_state[name], reference_state[name], rtol=1e-4, atol=1e-5)
