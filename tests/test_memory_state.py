"""The state a core checks on every call: its batch size, and clear errors for the states that RL loops
get wrong (entries turned to float by arithmetic masking, a missing entry, a wrong batch size)."""

from __future__ import annotations

import pytest
import torch

from hqlt.memory import CORE_NAMES, MemoryCore, build_core, core_options, state_batch_size

INPUT_DIM, HIDDEN_DIM, BATCH = 5, 8, 3
SMALL = dict(num_layers=1, num_heads=2, window=4, max_context=8)  # the options each core takes among these


def small_core(name: str) -> MemoryCore:
    torch.manual_seed(0)
    options = {key: value for key, value in SMALL.items() if key in core_options(name)}
    return build_core(name, input_dim=INPUT_DIM, hidden_dim=HIDDEN_DIM, **options)


def step(core: MemoryCore, state: dict, batch_size: int = BATCH) -> tuple[torch.Tensor, dict]:
    """One step of `core` on random input `[batch_size, 1, INPUT_DIM]`, no episode starting."""
    x = torch.randn(batch_size, 1, INPUT_DIM, generator=torch.Generator().manual_seed(1))
    return core(x, state, torch.zeros(batch_size, 1, dtype=torch.bool))


def cleanrl_masked(state: dict, done: torch.Tensor) -> dict:
    """CleanRL's reset of finished episodes, `(1.0 - done) * state`, with `done` float `[B]`."""
    return {name: (1.0 - done).view(-1, *[1] * (value.dim() - 1)) * value for name, value in state.items()}


@pytest.mark.parametrize("name", CORE_NAMES)
def test_state_batch_size(name):
    state = small_core(name).initial_state(BATCH)
    assert state_batch_size(state) == BATCH
    with pytest.raises(ValueError, match="state entries must be tensors sharing one batch size"):
        state_batch_size({**state, "other": torch.zeros(BATCH + 1, 2)})


@pytest.mark.parametrize("name", CORE_NAMES)
def test_arithmetically_masked_state_names_the_entry_and_its_dtype(name):
    """Float-converted bool/int64 entries fail naming the entry, its dtype and shape, and the fix; cores
    whose state is all float run, and reset_state is right for every core."""
    core = small_core(name)
    _, state = step(core, core.initial_state(BATCH))
    done = torch.tensor([1.0, 0.0, 0.0])
    exact = [entry for entry, value in state.items() if not value.is_floating_point()]
    for entry in exact:
        shape = ", ".join(["B", *map(str, state[entry].shape[1:])])
        message = (
            rf"state\['{entry}'\] must be a {state[entry].dtype} tensor \[{shape}\], got torch.float32: "
            r"arithmetic masking such as \(1 - done\) \* state .* core.reset_state\(state, done\)"
        )
        with pytest.raises(TypeError, match=message):
            step(core, {**state, entry: cleanrl_masked(state, done)[entry]})
    if not exact:
        step(core, cleanrl_masked(state, done))
    y, _ = step(core, core.reset_state(state, done.bool()))
    assert torch.isfinite(y).all()
    assert name not in ("transformer", "hqlt") or exact  # the KV ring's valid slots and write position


@pytest.mark.parametrize("name", CORE_NAMES)
def test_missing_entry_wrong_batch_size_and_wrong_shape_fail_clearly(name):
    core = small_core(name)
    state = core.initial_state(BATCH)
    first = next(iter(state))
    with pytest.raises(ValueError, match=rf"missing keys \['{first}'\], unexpected keys \[\]; expected keys"):
        step(core, {entry: value for entry, value in state.items() if entry != first})
    with pytest.raises(ValueError, match=f"the state holds {BATCH + 1} rows but x has batch size {BATCH}"):
        step(core, core.initial_state(BATCH + 1))
    with pytest.raises(ValueError, match=rf"state\['{first}'\] must have shape \[B"):
        step(core, {**state, first: state[first][..., None]})
    with pytest.raises(TypeError, match=rf"state\['{first}'\] must be a tensor \[B"):
        step(core, {**state, first: state[first].numpy()})


@pytest.mark.parametrize("name", CORE_NAMES)
def test_state_indexed_by_env_runs_those_envs(name):
    """`{name: value[envs] ...}` is the state of those envs: their outputs are those of the full batch."""
    core = small_core(name)
    _, state = step(core, core.initial_state(BATCH))
    envs = torch.tensor([2, 0])
    x = torch.randn(BATCH, 1, INPUT_DIM)
    resets = torch.zeros(BATCH, 1, dtype=torch.bool)
    y, _ = core(x, state, resets)
    y_envs, _ = core(x[envs], {entry: value[envs] for entry, value in state.items()}, resets[envs])
    torch.testing.assert_close(y_envs, y[envs])
