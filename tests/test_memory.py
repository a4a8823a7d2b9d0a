"""Memory cores: the contract of DESIGN §2 for every core and every HQLT variant.

Tiny sizes (window 3, chunk_size 4, T = 17) so that window, chunk and segment boundaries are
crossed many times while the whole file runs in seconds on a CPU.
"""

from __future__ import annotations

import io

import pytest
import torch

from hqlt.memory import CORE_NAMES, build_core, core_options

INPUT_DIM, HIDDEN_DIM, BATCH, STEPS = 5, 8, 4, 17

ATTENTION = dict(num_layers=2, num_heads=2, window=3, chunk_size=4)
BLENDS = ("synchronous", "delayed_stream", "delayed_chunk")
MIXERS = ("sum", "scalar", "dynamic_scalar", "dynamic_vector")
FW_MEMORIES = ("deltanet", "linear_attention")
CONFIGS: dict[str, tuple[str, dict]] = {
    "lstm": ("lstm", dict(num_layers=2)),
    "gru": ("gru", dict(num_layers=2)),
    "mlp": ("mlp", dict(num_layers=2)),
    "transformer": ("transformer", ATTENTION),
    "transformer-full-context": ("transformer", {**ATTENTION, "window": None, "max_context": 6}),
    "linear_attention": ("linear_attention", ATTENTION),
    "deltanet": ("deltanet", ATTENTION),
    "deltanet-positive-beta": ("deltanet", {**ATTENTION, "allow_neg_eigval": False}),
    **{
        f"hqlt-{blend}-{mixer}-{fw_memory}": ("hqlt", {**ATTENTION, "blend": blend, "mixer": mixer, "fw_memory": fw_memory})
        for blend in BLENDS
        for mixer in MIXERS
        for fw_memory in FW_MEMORIES
    },
    "hqlt-delayed_chunk-window1": ("hqlt", {**ATTENTION, "blend": "delayed_chunk", "window": 1}),
    "hqlt-delayed_chunk-window5": ("hqlt", {**ATTENTION, "blend": "delayed_chunk", "window": 5}),
    "hqlt-delayed_stream-window5": ("hqlt", {**ATTENTION, "blend": "delayed_stream", "window": 5}),
}


def make_core(config_id: str):
    torch.manual_seed(0)
    name, options = CONFIGS[config_id]
    return build_core(name, input_dim=INPUT_DIM, hidden_dim=HIDDEN_DIM, **options)


def make_resets(steps: int, generator: torch.Generator) -> torch.Tensor:
    """Rows: a reset at t=0 and consecutive resets; no reset at all; random resets; a reset at t=0 only."""
    resets = torch.zeros(BATCH, steps, dtype=torch.bool)
    resets[0, 0] = True
    resets[0, 5:7] = True
    resets[2] = torch.rand(steps, generator=generator) < 0.2
    resets[3, 0] = True
    return resets


def warm_state(core, generator: torch.Generator) -> dict:
    """A state that carries something: the initial state advanced over a few random steps."""
    state = core.initial_state(BATCH)
    x = torch.randn(BATCH, 7, INPUT_DIM, generator=generator)
    with torch.no_grad():
        _, state = core(x, state, make_resets(7, generator))
    return state


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Exact for integer/bool tensors; relative error <= 1e-4 (w.r.t. the largest entry) for floats."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, what
    if not expected.is_floating_point():
        assert torch.equal(actual, expected), what
        return
    error = (actual - expected).abs().max().item() if expected.numel() else 0.0
    scale = max(expected.abs().max().item() if expected.numel() else 0.0, 1e-3)
    assert error <= 1e-4 * scale, f"{what}: max error {error:.3g} vs scale {scale:.3g}"


def assert_same_run(run_a, run_b, what: str) -> None:
    (y_a, state_a), (y_b, state_b) = run_a, run_b
    assert_close(y_a, y_b, f"{what}: outputs")
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        assert_close(state_a[name], state_b[name], f"{what}: state[{name!r}]")


@pytest.mark.parametrize("config_id", list(CONFIGS))
def test_sequence_equals_steps_and_splits(config_id):
    core = make_core(config_id).eval()
    generator = torch.Generator().manual_seed(1)
    state = warm_state(core, generator)
    x = torch.randn(BATCH, STEPS, INPUT_DIM, generator=generator)
    resets = make_resets(STEPS, generator)
    with torch.no_grad():
        sequence = core(x, state, resets)

        step_state, outputs = state, []
        for t in range(STEPS):
            y, step_state = core(x[:, t : t + 1], step_state, resets[:, t : t + 1])
            outputs.append(y)
        assert_same_run(sequence, (torch.cat(outputs, dim=1), step_state), "T single steps")

        for split in (1, 6, int(torch.randint(2, STEPS - 1, (1,), generator=generator))):
            y_head, mid_state = core(x[:, :split], state, resets[:, :split])
            y_tail, end_state = core(x[:, split:], mid_state, resets[:, split:])
            assert_same_run(sequence, (torch.cat([y_head, y_tail], dim=1), end_state), f"split at {split}")


@pytest.mark.parametrize("config_id", list(CONFIGS))
def test_gradients_reach_parameters_and_initial_state(config_id):
    core = make_core(config_id)
    generator = torch.Generator().manual_seed(2)
    state = {name: value.detach().requires_grad_(value.is_floating_point()) for name, value in warm_state(core, generator).items()}
    x = torch.randn(BATCH, STEPS, INPUT_DIM, generator=generator)
    resets = torch.zeros(BATCH, STEPS, dtype=torch.bool)
    resets[1, 9] = True
    y, final_state = core(x, state, resets)
    loss = y.square().sum() + sum(value.square().sum() for value in final_state.values() if value.is_floating_point())
    loss.backward()
    for name, parameter in core.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, f"no gradient reaches {name}"
    carried = [value for value in state.values() if value.requires_grad and value.numel()]
    if config_id != "mlp":
        assert carried and all(torch.isfinite(value.grad).all() for value in carried)
        assert any(value.grad.abs().sum() > 0 for value in carried), "no gradient reaches the initial state"


@pytest.mark.parametrize("config_id", list(CONFIGS))
def test_reset_removes_earlier_episode(config_id):
    core = make_core(config_id).eval()
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(BATCH, STEPS, INPUT_DIM, generator=generator)
    changed = x.clone()
    changed[:, :9] = torch.randn(BATCH, 9, INPUT_DIM, generator=generator)
    resets = torch.zeros(BATCH, STEPS, dtype=torch.bool)
    resets[:, 9] = True
    resets[1, 12] = True
    after = torch.randn(BATCH, 5, INPUT_DIM, generator=generator)
    no_resets = torch.zeros(BATCH, 5, dtype=torch.bool)
    with torch.no_grad():
        y, state = core(x, warm_state(core, generator), resets)
        y_changed, state_changed = core(changed, core.initial_state(BATCH), resets)
        assert_close(y_changed[:, 9:], y[:, 9:], "outputs after the reset")
        # The state left behind must not leak the earlier episode into later calls either.
        assert_close(core(after, state_changed, no_resets)[0], core(after, state, no_resets)[0], "next call")


def test_registry_lists_every_core():
    assert set(CORE_NAMES) == {name for name, _ in CONFIGS.values()}
    assert "num_layers" in core_options("lstm")


# ---------------------------------------------------------------------- state handling


@pytest.mark.parametrize("config_id", list(CONFIGS))
def test_state_round_trips_through_torch_save(config_id):
    core = make_core(config_id)
    state = warm_state(core, torch.Generator().manual_seed(4))
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[name], state[name]) for name in state)


@pytest.mark.parametrize("config_id", list(CONFIGS))
def test_reset_state_clears_exactly_the_given_rows(config_id):
    core = make_core(config_id)
    state = warm_state(core, torch.Generator().manual_seed(5))
    done = torch.tensor([True, False, True, False])
    reset = core.reset_state(state, done)
    fresh = core.initial_state(BATCH)
    for name, value in state.items():
        assert torch.equal(reset[name][done], fresh[name][done]), name
        assert torch.equal(reset[name][~done], value[~done]), name


# ---------------------------------------------------------------------- bad input fails fast


def test_unknown_core_lists_valid_names():
    with pytest.raises(ValueError, match="unknown core 'lstmm'.*valid names: lstm, gru"):
        build_core("lstmm", input_dim=3, hidden_dim=4)


def test_unknown_option_lists_the_core_options():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['heads'\] for core 'gru'; its options: num_layers$"):
        build_core("gru", input_dim=3, hidden_dim=4, heads=2)


def test_x_with_wrong_rank_or_width_fails():
    core = make_core("gru")
    state = core.initial_state(2)
    resets = torch.zeros(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"x must have shape \[B, T, input_dim=5\]"):
        core(torch.randn(2, 3), state, resets)
    with pytest.raises(ValueError, match=r"x must have shape \[B, T, input_dim=5\].*\(2, 3, 4\)"):
        core(torch.randn(2, 3, 4), state, resets)


def test_integer_x_fails():
    core = make_core("gru")
    with pytest.raises(TypeError, match="x must be a floating-point tensor, got dtype torch.int64"):
        core(torch.ones(2, 3, INPUT_DIM, dtype=torch.long), core.initial_state(2), torch.zeros(2, 3, dtype=torch.bool))


def test_resets_with_wrong_shape_or_dtype_fail():
    core = make_core("gru")
    x, state = torch.randn(2, 3, INPUT_DIM), core.initial_state(2)
    with pytest.raises(ValueError, match=r"resets must be a bool tensor of shape \[B, T\] = \[2, 3\], got torch.bool tensor of shape \[2, 4\]"):
        core(x, state, torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="resets must be a bool tensor.*got torch.float32"):
        core(x, state, torch.zeros(2, 3))


def test_state_of_another_core_or_batch_fails():
    core = make_core("gru")
    x, resets = torch.randn(2, 3, INPUT_DIM), torch.zeros(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"state does not belong to this RecurrentCore: missing keys \[\], unexpected keys \['c'\]"):
        core(x, make_core("lstm").initial_state(2), resets)
    with pytest.raises(ValueError, match="the state holds 3 rows but x has batch size 2"):
        core(x, core.initial_state(3), resets)


def test_reset_state_checks_done():
    core = make_core("lstm")
    with pytest.raises(ValueError, match=r"done must be a bool tensor of shape \[2\]"):
        core.reset_state(core.initial_state(2), torch.ones(3, dtype=torch.bool))
