"""The chunkwise reference ops against their per-step recurrences (fp64), and their gradients."""

import pytest
import torch

from hqlt.kernels import reference

B, H, D = 3, 2, 4


def _resets(batch: int, steps: int, generator: torch.Generator) -> torch.Tensor:
    """Random resets plus the hard cases: at t=0, consecutive, at a chunk start and none at all."""
    resets = torch.rand(batch, steps, generator=generator) < 0.2
    resets[0, 0] = True
    resets[0, 5:7] = True
    resets[1, 4] = True
    resets[2] = False
    return resets


def _delta_inputs(steps: int, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, steps, H, D, generator=g, dtype=dtype) for _ in range(3))
    beta = 2 * torch.rand(B, steps, H, generator=g, dtype=dtype)  # negative eigenvalues allowed
    state = torch.randn(B, H, D, D, generator=g, dtype=dtype)
    return q, k, v, beta, _resets(B, steps, g), state


@pytest.mark.parametrize("steps,chunk_size", [(19, 4), (16, 8), (7, 64), (33, 16)])
def test_delta_rule_chunkwise_matches_recurrence(steps, chunk_size):
    q, k, v, beta, resets, state = _delta_inputs(steps)
    o_ref, s_ref = reference.delta_rule_recurrent(q, k, v, beta, resets, state)
    o, s = reference.delta_rule_chunkwise(q, k, v, beta, resets, state, chunk_size=chunk_size)
    torch.testing.assert_close(o, o_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s, s_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("steps,chunk_size", [(19, 4), (16, 8), (7, 64)])
def test_linear_attention_chunkwise_matches_recurrence(steps, chunk_size):
    q, k, v, _, resets, state = _delta_inputs(steps, seed=1)
    normalizer = torch.rand(B, H, D, dtype=torch.float64)
    o_ref, s_ref, z_ref = reference.linear_attention_recurrent(q, k, v, resets, state.abs(), normalizer)
    o, s, z = reference.linear_attention_chunkwise(q, k, v, resets, state.abs(), normalizer, chunk_size=chunk_size)
    torch.testing.assert_close(o, o_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s, s_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(z, z_ref, rtol=1e-12, atol=1e-12)


def test_delta_rule_reset_clears_incoming_state():
    q, k, v, beta, resets, state = _delta_inputs(9)
    resets[:] = False
    resets[:, 0] = True
    o_with, s_with = reference.delta_rule_chunkwise(q, k, v, beta, resets, state, chunk_size=4)
    o_zero, s_zero = reference.delta_rule_chunkwise(q, k, v, beta, resets, torch.zeros_like(state), chunk_size=4)
    torch.testing.assert_close(o_with, o_zero)
    torch.testing.assert_close(s_with, s_zero)


def test_delta_rule_chunkwise_gradcheck():
    q, k, v, beta, resets, state = _delta_inputs(7, seed=2)
    inputs = [t.clone().requires_grad_() for t in (q, k, v, beta, state)]

    def fn(q, k, v, beta, state):
        return reference.delta_rule_chunkwise(q, k, v, beta, resets, state, chunk_size=3)

    assert torch.autograd.gradcheck(fn, inputs)


def test_linear_attention_chunkwise_gradcheck():
    q, k, v, _, resets, state = _delta_inputs(7, seed=3)
    normalizer = torch.rand(B, H, D, dtype=torch.float64)
    inputs = [t.clone().requires_grad_() for t in (q, k, v, state.abs(), normalizer)]

    def fn(q, k, v, state, normalizer):
        return reference.linear_attention_chunkwise(q, k, v, resets, state, normalizer, chunk_size=3)

    assert torch.autograd.gradcheck(fn, inputs)


def _window_inputs(steps: int, cached: int, seed: int = 4):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, steps, H, D, generator=g, dtype=torch.float64) for _ in range(3))
    cache_k, cache_v = (torch.randn(B, cached, H, D, generator=g, dtype=torch.float64) for _ in range(2))
    cache_valid = torch.rand(B, cached, generator=g) < 0.7
    return q, k, v, _resets(B, steps, g), cache_k, cache_v, cache_valid


def _window_attention_loop(q, k, v, resets, cache_k, cache_v, cache_valid, window):
    """Direct definition: for each query, softmax over same-episode keys at distance < window."""
    keys, values = torch.cat([cache_k, k], 1), torch.cat([cache_v, v], 1)
    cached = cache_k.shape[1]
    positions = torch.arange(keys.shape[1])
    kr = reference.rotary(keys, positions)
    out = torch.zeros_like(q)
    for b in range(q.shape[0]):
        valid = torch.cat([cache_valid[b], torch.ones(q.shape[1], dtype=torch.bool)]).clone()
        for t in range(q.shape[1]):
            if resets[b, t]:
                valid[: cached + t] = False
            lo = max(0, cached + t - window + 1)
            idx = [j for j in range(lo, cached + t + 1) if valid[j]]
            qr = reference.rotary(q[b : b + 1, t : t + 1], positions[cached + t : cached + t + 1])[0, 0]
            scores = torch.einsum("hd,jhd->hj", qr, kr[b, idx]) / D**0.5
            out[b, t] = torch.einsum("hj,jhd->hd", scores.softmax(-1), values[b, idx])
    return out


@pytest.mark.parametrize("steps,cached,window", [(13, 4, 4), (9, 6, 3), (5, 2, 8)])
def test_window_attention_matches_definition(steps, cached, window):
    inputs = _window_inputs(steps, cached)
    o = reference.window_attention(*inputs, window=window)
    torch.testing.assert_close(o, _window_attention_loop(*inputs, window), rtol=1e-10, atol=1e-10)


def test_window_attention_depends_only_on_relative_position():
    """Shifting every position by the same amount (a longer cache of invalid entries) changes nothing."""
    q, k, v, resets, cache_k, cache_v, cache_valid = _window_inputs(6, 3)
    o = reference.window_attention(q, k, v, resets, cache_k, cache_v, cache_valid, window=4)
    pad = torch.randn(B, 5, H, D, dtype=torch.float64)
    o_shifted = reference.window_attention(
        q, k, v, resets, torch.cat([pad, cache_k], 1), torch.cat([pad, cache_v], 1),
        torch.cat([torch.zeros(B, 5, dtype=torch.bool), cache_valid], 1), window=4,
    )
    torch.testing.assert_close(o, o_shifted, rtol=1e-10, atol=1e-10)


def test_window_attention_gradcheck():
    q, k, v, resets, cache_k, cache_v, cache_valid = _window_inputs(5, 3, seed=5)
    inputs = [t.clone().requires_grad_() for t in (q, k, v, cache_k, cache_v)]

    def fn(q, k, v, cache_k, cache_v):
        return reference.window_attention(q, k, v, resets, cache_k, cache_v, cache_valid, window=3)

    assert torch.autograd.gradcheck(fn, inputs)


def test_synchronous_hqlt_mixes_both_memories():
    q, k, v, beta, resets, state = _delta_inputs(8, seed=6)
    _, _, _, _, cache_k, cache_v, cache_valid = _window_inputs(8, 3, seed=6)
    gate = torch.rand_like(q)
    o, s = reference.synchronous_hqlt(q, k, v, beta, gate, resets, state, cache_k, cache_v, cache_valid, window=3)
    o_fw, s_fw = reference.delta_rule_recurrent(q, k, v, beta, resets, state)
    o_kv = reference.window_attention(q, k, v, resets, cache_k, cache_v, cache_valid, window=3)
    torch.testing.assert_close(o, gate * o_fw + (1 - gate) * o_kv)
    torch.testing.assert_close(s, s_fw)


def test_attention_entropy_bounds():
    q, k, _, resets, cache_k, _, cache_valid = _window_inputs(6, 3, seed=7)
    entropy = reference.attention_entropy(q, k, resets, cache_k, cache_valid, window=4)
    assert 0.0 <= entropy.item() <= torch.log(torch.tensor(4.0)).item()
    uniform = reference.attention_entropy(torch.zeros_like(q), k, resets, cache_k, torch.ones_like(cache_valid), 1)
    assert uniform.item() == pytest.approx(0.0, abs=1e-9)
