"""Memory cores: the contract of DESIGN §2 for every core and every HQLT variant.

Tiny sizes (window 3, chunk_size 4, T = 17) so that window, chunk and segment boundaries are
crossed many times while the whole file runs in seconds on a CPU.
"""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

from hqlt.kernels.reference import LINEAR_ATTENTION_EPS, deltanet_feature_map, linear_attention_feature_map, rotary

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
    original = {name: value.clone() for name, value in state.items()}
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
    assert all(torch.equal(state[name], original[name]) for name in state), "forward modified its input state"


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


# ---------------------------------------------------------------------- semantics (DESIGN §3) by a per-step oracle


def oracle_memories(mixer, q, k, v, beta, resets):
    """One layer's o_FW and o_KV `[B, T, H, d]` from a fresh state, step by step and row by row, straight
    from the definitions: the episode's history of tokens, softmax over the window (or the current chunk)
    with RoPE at absolute positions, and the FW state written per blend (None where a memory is absent)."""
    batch, steps, heads, head_dim = q.shape
    window, blend, fw_memory = mixer.window, mixer.blend, mixer.fw_memory
    o_fw = torch.zeros_like(q) if fw_memory else None
    o_kv = torch.zeros_like(q) if window else None
    for b in range(batch):
        history, fw, normalizer = [], q.new_zeros(heads, head_dim, head_dim), q.new_zeros(heads, head_dim)

        def write(j, strength):
            nonlocal fw, normalizer
            if fw_memory == "deltanet":
                key = deltanet_feature_map(k[b, j])
                error = v[b, j] - torch.einsum("hk,hkv->hv", key, fw)
                fw = fw + strength[:, None, None] * key[:, :, None] * error[:, None, :]
            else:
                key = linear_attention_feature_map(k[b, j])
                fw, normalizer = fw + key[:, :, None] * v[b, j][:, None, :], normalizer + key

        def read(t):
            if fw_memory == "deltanet":
                return torch.einsum("hk,hkv->hv", deltanet_feature_map(q[b, t]), fw) / head_dim**0.5
            query = linear_attention_feature_map(q[b, t])
            denominator = (query * normalizer).sum(-1, keepdim=True) + LINEAR_ATTENTION_EPS
            return torch.einsum("hk,hkv->hv", query, fw) / denominator

        for t in range(steps):
            if resets[b, t]:
                history, fw, normalizer = [], torch.zeros_like(fw), torch.zeros_like(normalizer)
            history.append(t)
            if window:
                visible = history[(len(history) - 1) // window * window :] if blend == "delayed_chunk" else history[-window:]
                keys = rotary(k[b, visible][None], torch.tensor(visible))[0]
                query = rotary(q[b, t][None, None], torch.tensor([t]))[0, 0]
                weights = torch.softmax(torch.einsum("hd,lhd->hl", query, keys) / head_dim**0.5, dim=-1)
                o_kv[b, t] = torch.einsum("hl,lhd->hd", weights, v[b, visible])
            if not fw_memory:
                continue
            if window is None or blend == "synchronous":
                write(t, beta[b, t] if fw_memory == "deltanet" else None)
            elif blend == "delayed_stream" and len(history) > window:
                write(history[-window - 1], beta[b, t] if fw_memory == "deltanet" else None)
            o_fw[b, t] = read(t)
            if blend == "delayed_chunk" and window and len(history) % window == 0:
                for j in history[-window:]:
                    write(j, beta[b, j] if fw_memory == "deltanet" else None)
    return o_fw, o_kv


def oracle_core(core, x, resets):
    """The core's forward from a fresh state, with every memory computed by `oracle_memories`."""
    h = core.input_proj(x)
    for norm, mixer, feed_forward in zip(core.memory_norms, core.mixers, core.feed_forwards):
        batch, steps, dim = h.shape
        heads_shape = (batch, steps, mixer.num_heads, mixer.head_dim)
        q, k, v, beta, gate = mixer.in_proj(norm(h)).split(mixer.split_sizes, dim=-1)
        q, k, v = q.view(heads_shape), k.view(heads_shape), F.silu(v).view(heads_shape)
        beta, gate = mixer.beta_scale * torch.sigmoid(beta), torch.sigmoid(gate + mixer.gate_offset)
        o_fw, o_kv = oracle_memories(mixer, q, k, v, beta, resets)
        if o_fw is None or o_kv is None:
            o = o_kv if o_fw is None else o_fw
        elif mixer.mixer == "sum":
            o = o_fw + o_kv
        elif mixer.mixer == "scalar":
            o = mixer.mix_weights[0] * o_fw + mixer.mix_weights[1] * o_kv
        elif mixer.mixer == "dynamic_scalar":
            o = gate[..., : mixer.num_heads, None] * o_fw + gate[..., mixer.num_heads :, None] * o_kv
        else:
            o = gate.view(heads_shape) * o_fw + (1 - gate.view(heads_shape)) * o_kv
        h = feed_forward(h + mixer.out_proj(mixer.head_norm(o).reshape(batch, steps, dim)))
    return core.final_norm(h)


@pytest.mark.parametrize("config_id", [c for c, (name, _) in CONFIGS.items() if name not in ("lstm", "gru", "mlp")])
def test_attention_cores_follow_the_definitions(config_id):
    core = make_core(config_id).double().eval()
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(BATCH, STEPS, INPUT_DIM, generator=generator, dtype=torch.float64)
    resets = make_resets(STEPS, generator)
    with torch.no_grad():
        y, _ = core(x, core.initial_state(BATCH, dtype=torch.float64), resets)
        expected = oracle_core(core, x, resets)
    torch.testing.assert_close(y, expected, rtol=1e-9, atol=1e-9)


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


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("blend", "delayed", "unknown blend 'delayed'; valid choices: synchronous, delayed_stream, delayed_chunk"),
        ("mixer", "gate", "unknown mixer 'gate'; valid choices: sum, scalar, dynamic_scalar, dynamic_vector"),
        ("fw_memory", "lstm", "unknown fw_memory 'lstm'; valid choices: deltanet, linear_attention"),
    ],
)
def test_unknown_hqlt_variant_lists_valid_choices(option, value, message):
    with pytest.raises(ValueError, match=message):
        build_core("hqlt", input_dim=3, hidden_dim=8, num_heads=2, **{option: value})


def test_hidden_dim_not_divisible_by_heads_fails():
    with pytest.raises(ValueError, match="hidden_dim=10 is not divisible by num_heads=4"):
        build_core("deltanet", input_dim=3, hidden_dim=10, num_heads=4)


def test_odd_head_dim_fails_for_rope():
    with pytest.raises(ValueError, match="head dim hidden_dim / num_heads = 3 is odd; RoPE needs an even head dim"):
        build_core("transformer", input_dim=3, hidden_dim=6, num_heads=2)


@pytest.mark.parametrize("mixer", ["dynamic_vector", "dynamic_scalar"])
@pytest.mark.parametrize("gate_bias", [2.0, 0.0, -1.0])
def test_the_mixing_gate_starts_at_sigmoid_of_gate_bias_on_the_fw_memory(mixer, gate_bias):
    core = build_core("hqlt", input_dim=INPUT_DIM, hidden_dim=HIDDEN_DIM, **ATTENTION, mixer=mixer, gate_bias=gate_bias)
    with torch.no_grad():
        for layer in core.mixers:  # gate logits = offset alone
            layer.in_proj.weight[-layer.split_sizes[-1]:] = 0.0
    core.record_diagnostics = True
    generator = torch.Generator().manual_seed(3)
    core(torch.randn(BATCH, STEPS, INPUT_DIM, generator=generator), core.initial_state(BATCH), make_resets(STEPS, generator))
    expected = torch.sigmoid(torch.tensor(gate_bias)).item()
    assert core.last_diagnostics["gate_mean/layer0"] == pytest.approx(expected, abs=1e-6)


def test_gate_bias_must_be_a_number():
    with pytest.raises(ValueError, match="gate_bias must be a number, got True"):
        build_core("hqlt", input_dim=INPUT_DIM, hidden_dim=HIDDEN_DIM, gate_bias=True)


# ---------------------------------------------------------------------- diagnostics


@pytest.mark.parametrize(
    ("config_id", "expected"),
    [
        ("hqlt-synchronous-dynamic_vector-deltanet", {"gate_mean/layer0", "gate_mean/layer1", "fw_state_norm", "attention_entropy"}),
        ("hqlt-delayed_chunk-dynamic_scalar-linear_attention", {"gate_mean/layer0", "gate_mean/layer1", "fw_state_norm", "attention_entropy"}),
        ("hqlt-delayed_stream-sum-deltanet", {"fw_state_norm", "attention_entropy"}),
        ("transformer", {"attention_entropy"}),
        ("deltanet", {"fw_state_norm"}),
    ],
)
def test_diagnostics_are_recorded_only_when_asked(config_id, expected):
    core = make_core(config_id).eval()
    generator = torch.Generator().manual_seed(7)
    state, x, resets = core.initial_state(BATCH), torch.randn(BATCH, STEPS, INPUT_DIM, generator=generator), make_resets(STEPS, generator)
    y, _ = core(x, state, resets)
    assert core.last_diagnostics == {}
    core.record_diagnostics = True
    y_recorded, _ = core(x, state, resets)
    diagnostics = core.last_diagnostics
    assert set(diagnostics) == expected and torch.equal(y, y_recorded)
    assert all(isinstance(value, float) and value == value for value in diagnostics.values())
    assert all(0.0 < diagnostics[name] < 1.0 for name in expected if name.startswith("gate_mean"))
    if "attention_entropy" in expected:
        assert 0.0 < diagnostics["attention_entropy"] <= torch.log(torch.tensor(3.0)).item() + 1e-6
