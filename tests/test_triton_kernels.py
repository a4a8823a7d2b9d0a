"""Triton kernels against the PyTorch reference ops: outputs, final states and every gradient
(initial state and window cache included), fp32 and bf16, with resets at t=0, mid-chunk,
consecutive and at chunk starts.

Without a GPU the kernels run on the CPU through the Triton interpreter at small shapes; with one,
the same tests run at realistic shapes.
"""

import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    # Must be set before the kernel modules are imported: `triton.jit` reads it at decoration time.
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from hqlt import kernels  # noqa: E402
from hqlt.kernels import reference  # noqa: E402

DEVICE = torch.device("cuda" if CUDA else "cpu")
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 1e-2}
TF32_TOLERANCE = 1e-2  # fp32 inputs through one-pass TF32 products (10-bit mantissas, as fp16)
# (batch, steps, heads, head dim) per device: the interpreter runs every program serially in numpy.
SHAPE = (8, 300, 4, 64) if CUDA else (2, 37, 2, 16)
# An even head dim that is not a power of two (the kernels pad each RoPE half of it).
ODD_DIM = 48 if CUDA else 24


@pytest.fixture(autouse=True)
def _full_fp32_products(monkeypatch):
    """fp32 cases check the three-pass products, whatever an earlier test (a training run, whose `tf32`
    key defaults to true) left in torch's flag."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


def _resets(batch: int, steps: int, chunk_size: int, generator: torch.Generator) -> torch.Tensor:
    resets = torch.rand(batch, steps, generator=generator) < 0.08
    resets[0, 0] = True  # at t=0
    resets[-1, min(5, steps - 1)] = True  # mid-chunk
    resets[-1, steps // 2: steps // 2 + 2] = True  # consecutive
    resets[0, chunk_size:: chunk_size] = True  # at chunk starts
    if batch > 2:
        resets[1] = False  # no reset at all
    return resets.to(DEVICE)


def _randn(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=generator).to(DEVICE)


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    expected = expected.double()
    return ((actual.double() - expected).norm() / expected.norm().clamp_min(1e-30)).item()


def _compare(
    run, inputs: dict[str, torch.Tensor], dtype: torch.dtype, grad_dtype_inputs: set[str], tolerance: float | None = None
) -> None:
    """Run `run(backend, **inputs)` on both backends with random output gradients and compare
    every output and every input gradient (relative error below `tolerance`, default the dtype's).
    Inputs named in `grad_dtype_inputs` take `dtype`; the reference gets everything upcast to fp64."""
    ours = {
        name: (t.to(dtype) if name in grad_dtype_inputs else t).detach().requires_grad_(t.is_floating_point())
        for name, t in inputs.items()
    }
    oracle = {name: t.detach().double().requires_grad_() if t.is_floating_point() else t for name, t in ours.items()}
    out_ours = run("triton", **ours)
    out_oracle = run("reference", **oracle)
    g = torch.Generator().manual_seed(123)
    upstream = [torch.randn(o.shape, generator=g).to(DEVICE) for o in out_oracle]
    sum(((o.float() * u).sum() for o, u in zip(out_ours, upstream))).backward()
    sum(((o * u.double()).sum() for o, u in zip(out_oracle, upstream))).backward()
    tolerance = tolerance or TOLERANCE[dtype]
    errors = {f"out{i}": _relative_error(a, b) for i, (a, b) in enumerate(zip(out_ours, out_oracle))}
    for name, t in ours.items():
        if t.requires_grad:
            assert t.grad is not None and t.grad.dtype == t.dtype, f"gradient of {name}"
            errors[f"d{name}"] = _relative_error(t.grad, oracle[name].grad)
    bad = {name: err for name, err in errors.items() if not err < tolerance}
    assert not bad, f"relative errors above {tolerance}: {bad} (all: {errors})"


def _delta_run(backend, q, k, v, beta, resets, state, chunk_size=64):
    return kernels.delta_rule(q, k, v, beta, resets, state, chunk_size=chunk_size, backend=backend)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_size", [16, 32, 64])
@pytest.mark.parametrize("dims", [(SHAPE[3], SHAPE[3]), (SHAPE[3] // 2 + 8, SHAPE[3] + 8), (SHAPE[3] // 2, SHAPE[3] // 2)])
def test_delta_rule(dtype, chunk_size, dims):
    batch, steps, heads, _ = SHAPE
    dk, dv = dims
    g = torch.Generator().manual_seed(chunk_size + dk)
    inputs = dict(
        q=_randn(g, batch, steps, heads, dk), k=_randn(g, batch, steps, heads, dk),
        v=_randn(g, batch, steps, heads, dv), beta=2 * torch.rand(batch, steps, heads, generator=g).to(DEVICE),
        resets=_resets(batch, steps, chunk_size, g), state=_randn(g, batch, heads, dk, dv),
    )
    _compare(lambda backend, **x: _delta_run(backend, chunk_size=chunk_size, **x), inputs, dtype,
             {"q", "k", "v", "beta"})


def test_delta_rule_single_step_and_head_dim_128():
    """T=1 (the reference switches to its recurrence) and the largest head dim."""
    g = torch.Generator().manual_seed(5)
    for steps, dim in [(1, SHAPE[3]), (SHAPE[1] // 4, 128)]:
        inputs = dict(
            q=_randn(g, 2, steps, 2, dim), k=_randn(g, 2, steps, 2, dim), v=_randn(g, 2, steps, 2, dim),
            beta=torch.rand(2, steps, 2, generator=g).to(DEVICE), resets=_resets(2, steps, 16, g),
            state=_randn(g, 2, 2, dim, dim),
        )
        _compare(_delta_run, inputs, torch.float32, {"q", "k", "v", "beta"})


def _window_inputs(g, batch, steps, heads, dim, cached):
    return dict(
        q=_randn(g, batch, steps, heads, dim), k=_randn(g, batch, steps, heads, dim),
        v=_randn(g, batch, steps, heads, dim), resets=_resets(batch, steps, 16, g),
        cache_k=_randn(g, batch, cached, heads, dim), cache_v=_randn(g, batch, cached, heads, dim),
        cache_valid=(torch.rand(batch, cached, generator=g) < 0.8).to(DEVICE),
    )


WINDOW_CASES = [  # (cached steps S, window)
    (SHAPE[3], SHAPE[3]),
    (0, 5),
    (3, 9),
    (SHAPE[1] // 2, SHAPE[1] // 2 + 3),  # a window wider than one key block
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cached,window,dim", [case + (SHAPE[3],) for case in WINDOW_CASES] + [(3, 9, ODD_DIM)])
def test_window_attention(dtype, cached, window, dim):
    batch, steps, heads, _ = SHAPE
    g = torch.Generator().manual_seed(cached + window)
    inputs = _window_inputs(g, batch, steps, heads, dim, cached)

    def run(backend, q, k, v, resets, cache_k, cache_v, cache_valid):
        o = kernels.window_attention(q, k, v, resets, cache_k, cache_v, cache_valid, window=window, backend=backend)
        return (o,)

    _compare(run, inputs, dtype, {"q", "k", "v", "cache_k", "cache_v"})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_size,cached,window", [(16, SHAPE[3], SHAPE[3]), (32, 3, 9), (64, 20, 70)])
def test_synchronous_hqlt(dtype, chunk_size, cached, window):
    _compare_synchronous_hqlt(dtype, chunk_size, cached, window)


def test_fp32_products_follow_torchs_tf32_flag(monkeypatch):
    """fp32 inputs: three-pass products by default, one-pass TF32 where torch allows TF32 for fp32
    matrix products (the trainer's `tf32` key); the op then matches the reference to TF32's accuracy."""
    from hqlt.kernels.triton_delta_rule import dot_dtype

    flags = torch.backends.cuda.matmul
    monkeypatch.setattr(flags, "allow_tf32", False)
    assert dot_dtype(torch.float32, True) == dot_dtype(torch.float32, False) == "fp32"
    monkeypatch.setattr(flags, "allow_tf32", True)
    assert dot_dtype(torch.float32, True) == dot_dtype(torch.float32, False) == "tf32"
    assert (dot_dtype(torch.bfloat16, True), dot_dtype(torch.bfloat16, False)) == ("bf16", "tf32")
    _compare_synchronous_hqlt(torch.float32, 32, 3, 9, tolerance=TF32_TOLERANCE)


def _compare_synchronous_hqlt(dtype, chunk_size, cached, window, tolerance=None):
    batch, steps, heads, dim = SHAPE
    g = torch.Generator().manual_seed(chunk_size + window)
    inputs = _window_inputs(g, batch, steps, heads, dim, cached)
    inputs.update(
        beta=2 * torch.rand(batch, steps, heads, generator=g).to(DEVICE),
        gate=torch.rand(batch, steps, heads, dim, generator=g).to(DEVICE),
        fw_state=_randn(g, batch, heads, dim, dim),
    )

    def run(backend, q, k, v, beta, gate, resets, fw_state, cache_k, cache_v, cache_valid):
        return kernels.synchronous_hqlt(
            q, k, v, beta, gate, resets, fw_state, cache_k, cache_v, cache_valid,
            window=window, chunk_size=chunk_size, backend=backend,
        )

    _compare(run, inputs, dtype, {"q", "k", "v", "beta", "gate", "cache_k", "cache_v"}, tolerance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("hidden", [80, 3])  # rows that straddle the kernel's blocks of 1024 elements; a tiny one
def test_swiglu(dtype, hidden):
    g = torch.Generator().manual_seed(hidden)
    inputs = dict(gate_up=3 * _randn(g, SHAPE[0], SHAPE[1], 2 * hidden))
    _compare(lambda backend, gate_up: (kernels.swiglu(gate_up, backend=backend),), inputs, dtype, {"gate_up"},
             TOLERANCE.get(dtype, 1e-2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
# a head's, the hidden width, not a power of two, tiny, wider than the kernel takes (the reference then)
@pytest.mark.parametrize("dim", [SHAPE[3], 128, 48, 3, 1030])
def test_rms_norm(dtype, dim):
    g = torch.Generator().manual_seed(dim)
    inputs = dict(x=2 * _randn(g, SHAPE[0], SHAPE[1], dim) + 0.5, weight=1 + _randn(g, dim) / 4)

    def run(backend, x, weight):
        return (kernels.rms_norm(x, weight, 1e-6, backend=backend),)

    _compare(run, inputs, dtype, {"x"}, TOLERANCE.get(dtype, 1e-2))


@pytest.mark.parametrize("core", ["hqlt", "transformer", "mlp"])
def test_a_core_on_the_triton_backend_matches_the_reference(core, monkeypatch):
    """The whole core (norms, gating, memory ops and the projections around them) gives the same outputs and
    parameter gradients through the Triton ops as through the reference (backend chosen by HQLT_BACKEND)."""
    from hqlt.memory import build_core

    g = torch.Generator().manual_seed(7)
    batch, steps = 2, 20
    x, resets = _randn(g, batch, steps, 6), _resets(batch, steps, 16, g)
    upstream = _randn(g, batch, steps, 32)  # not y^2: a final RMSNorm's output has a nearly constant norm
    outputs, gradients = {}, {}
    for backend in ("triton", "reference"):
        monkeypatch.setenv("HQLT_BACKEND", backend)
        torch.manual_seed(0)
        options = {"mlp": {}, "hqlt": {"num_heads": 2}, "transformer": {"num_heads": 2, "max_context": 24}}[core]
        module = build_core(core, input_dim=6, hidden_dim=32, **options).to(DEVICE)
        y, _ = module(x, module.initial_state(batch, DEVICE), resets)
        (y * upstream).sum().backward()
        outputs[backend] = y.detach()
        gradients[backend] = {name: p.grad for name, p in module.named_parameters()}
    assert _relative_error(outputs["triton"], outputs["reference"]) < TOLERANCE[torch.float32]
    for name, grad in gradients["reference"].items():
        assert _relative_error(gradients["triton"][name], grad) < TOLERANCE[torch.float32], name


def test_unsupported_inputs_give_clear_errors():
    g = torch.Generator().manual_seed(0)
    q = _randn(g, 1, 4, 1, 16)
    beta, resets, state = torch.rand(1, 4, 1).to(DEVICE), torch.zeros(1, 4, dtype=torch.bool).to(DEVICE), q.new_zeros(1, 1, 16, 16)
    with pytest.raises(ValueError, match="chunk_size must be one of"):
        kernels.delta_rule(q, q, q, beta, resets, state, chunk_size=8, backend="triton")
    with pytest.raises(ValueError, match="float32, bfloat16 or float16"):
        kernels.delta_rule(q.double(), q.double(), q.double(), beta, resets, state, backend="triton")
    with pytest.raises(ValueError, match="float32, bfloat16 or float16"):
        kernels.swiglu(q.double(), backend="triton")
    with pytest.raises(ValueError, match="weight shape"):
        kernels.rms_norm(q, q.new_ones(15), 1e-6, backend="triton")
    with pytest.raises(ValueError, match="must be even"):
        kernels.swiglu(q[..., :15], backend="triton")
    with pytest.raises(ValueError, match="window must be"):
        kernels.window_attention(q, q, q, resets, q[:, :0], q[:, :0], resets[:, :0], window=0, backend="triton")


def test_an_op_without_a_triton_kernel_runs_the_reference_with_one_warning(monkeypatch):
    """Asked for by argument or by HQLT_BACKEND alike (linear attention has no Triton kernel)."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (_randn(g, 2, 5, 1, 8) for _ in range(3))
    resets, state, normalizer = torch.zeros(2, 5, dtype=torch.bool).to(DEVICE), q.new_zeros(2, 1, 8, 8), q.new_zeros(2, 1, 8)
    expected = reference.linear_attention(q, k, v, resets, state, normalizer)
    kernels._warn_no_kernel.cache_clear()
    monkeypatch.setenv("HQLT_BACKEND", "triton")
    with pytest.warns(UserWarning, match="'linear_attention' has no Triton kernel") as caught:
        by_variable = kernels.linear_attention(q, k, v, resets, state, normalizer)
        by_argument = kernels.linear_attention(q, k, v, resets, state, normalizer, backend="triton")
    assert len(caught) == 1
    for actual in (by_variable, by_argument):
        for a, b in zip(actual, expected):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
# at head dim 128 the kernel walks the ring in blocks of 16 slots: a window of 20 is a full block and a partial one
@pytest.mark.parametrize("dim,window", [(64, 64), (128, 100), (ODD_DIM, 20)] if CUDA else [(16, 6), (128, 20), (ODD_DIM, 6)])
def test_rollout_step_matches_sequence_op(dtype, dim, window):
    """T steps of the in-place step op (ring buffer, advance_ring between steps) equal one call of the
    sequence op on the same T steps, for the reference step and the Triton step kernel (which walks
    the ring in several blocks)."""
    batch, heads = (256, 4) if CUDA else (3, 2)
    steps = 2 * window + 3
    g = torch.Generator().manual_seed(7)
    q, k, v, gate = (_randn(g, batch, steps, heads, dim) for _ in range(4))
    gate = torch.sigmoid(gate)
    beta = 2 * torch.rand(batch, steps, heads, generator=g).to(DEVICE)
    resets = _resets(batch, steps, window, g)
    fw0 = _randn(g, batch, heads, dim, dim)
    empty = q.new_zeros(batch, window, heads, dim)
    o_seq, fw_seq = reference.synchronous_hqlt(
        *(x.double() for x in (q, k, v, beta, gate)), resets, fw0.double(), empty.double(), empty.double(),
        empty[..., 0, 0].bool(), window,
    )
    start_slots = torch.randint(0, window, (batch,), generator=g).to(DEVICE)
    for backend, step_dtype in [("reference", torch.float64), ("triton", dtype)]:
        fw = fw0.clone().to(torch.float64 if backend == "reference" else torch.float32)
        kv_keys, kv_values = empty.to(step_dtype).clone(), empty.to(step_dtype).clone()
        kv_valid, kv_write = empty[..., 0, 0].bool(), start_slots.clone()
        outputs = []
        for t in range(steps):
            inputs = [x[:, t: t + 1].to(step_dtype) for x in (q, k, v, beta, gate)]
            o, _ = kernels.synchronous_hqlt_step(
                *inputs, resets[:, t: t + 1], fw, kv_keys, kv_values, kv_valid, kv_write, window=window, backend=backend
            )
            kernels.advance_ring(kv_valid, kv_write, resets[:, t: t + 1])
            outputs.append(o)
        tolerance = 1e-10 if backend == "reference" else TOLERANCE[dtype]
        assert _relative_error(torch.cat(outputs, dim=1), o_seq) < tolerance, backend
        assert _relative_error(fw, fw_seq) < tolerance, backend
        torch.testing.assert_close(kv_write, (start_slots + steps) % window)


def test_rollout_step_rejects_a_ring_smaller_than_the_window():
    g = torch.Generator().manual_seed(0)
    x = _randn(g, 2, 1, 1, 16)
    ring = x.new_zeros(2, 3, 1, 16)
    with pytest.raises(ValueError, match="fewer than window"):
        kernels.synchronous_hqlt_step(
            x, x, x, x[..., 0], x, x[:, :, 0, 0] > 0, x.new_zeros(2, 1, 16, 16), ring, ring, ring[..., 0, 0] > 0,
            torch.zeros(2, dtype=torch.long, device=DEVICE), window=4, backend="triton",
        )
