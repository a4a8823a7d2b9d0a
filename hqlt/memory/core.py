"""The memory-core contract (DESIGN §2): the base class every core extends.

A core maps `x [B, T, input_dim]` and a state to `y [B, T, hidden_dim]` and the next state, with
`resets [B, T]` marking episode starts. T == 1 is step mode, T > 1 sequence mode; both give the
same results. The state is a flat dict of batch-first tensors, so that a learner can index, store,
detach and `torch.save` it without knowing the core (`state_batch_size(state)` is its B). Entries
may be bool or int64 (a KV ring's valid slots and write position), so finished episodes are cleared
with `reset_state`, not by multiplying the state; `forward` checks every entry's dtype and shape.

    y, new_state = core(x, state, resets)                 # functional: `state` stays as it was
    y, state = core(x, state, resets, in_place=True)      # the tensors of `state` now hold the new state

`in_place=True` is for acting, without gradients (under no_grad or inference_mode): the call writes
the new state into the given tensors and returns a dict of those same tensors, with the same values
as the functional call. A rollout then never allocates state, and a captured CUDA graph of the step
finds its state in its static buffers. Cores whose step updates a large state update it in place directly (the
attention family's KV rings, and Synchronous HQLT's whole step through the fused step op); for any
other entry `forward` copies the new value into the given tensor.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

import torch
from torch import Tensor, nn

State = dict[str, Tensor]


class MemoryCore(nn.Module, ABC):
    """Base class: input checks, `reset_state`, the in-place switch and the diagnostics switch.

    Subclasses implement `initial_state` and `_forward` (and may override `_forward_in_place` to
    update a large state without copies). While `record_diagnostics` is True, every
    forward also fills `last_diagnostics` (plain floats, computed without gradients); otherwise the
    forward pays nothing for them.
    """

    def __init__(self, input_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.hidden_dim = hidden_dim
        self.record_diagnostics = False
        self.last_diagnostics: dict[str, float] = {}
        self._state_specs: dict[str, tuple[torch.dtype, tuple[int, ...]]] | None = None  # (dtype, shape[1:]) per entry

    @abstractmethod
    def initial_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
    ) -> State:
        """The state of `batch_size` fresh episodes: dict of tensors `[batch_size, ...]`."""

    @abstractmethod
    def _forward(self, x: Tensor, state: State, resets: Tensor, diagnostics: dict[str, Tensor] | None) -> tuple[Tensor, State]:
        """`forward` after the input checks; fills `diagnostics` when it is a dict."""

    def _forward_in_place(
        self, x: Tensor, state: State, resets: Tensor, diagnostics: dict[str, Tensor] | None
    ) -> tuple[Tensor, State]:
        """`_forward` for `in_place=True`: may update the tensors of `state` in place and return them;
        `forward` copies every entry returned as a new tensor into the given one. Default: `_forward`."""
        return self._forward(x, state, resets, diagnostics)

    def forward(
        self, x: Tensor, state: Mapping[str, Tensor], resets: Tensor, *, in_place: bool = False
    ) -> tuple[Tensor, State]:
        """x: float `[B, T, input_dim]`; state: from `initial_state` or a previous call; resets: bool `[B, T]`.

        Returns y `[B, T, hidden_dim]` and the state after step T-1: new tensors, or with `in_place`
        the tensors of `state` holding the new values.
        """
        self._check_inputs(x, state, resets)
        if in_place and torch.is_grad_enabled():
            # Autograd may keep the old state for the backward pass, which the call overwrites.
            raise RuntimeError(
                "in_place=True is for acting without gradients: call it under torch.no_grad() or "
                "torch.inference_mode(), or call the core functionally (in_place=False)"
            )
        run = self._forward_in_place if in_place else self._forward
        diagnostics: dict[str, Tensor] | None = {} if self.record_diagnostics else None
        y, new_state = run(x, dict(state), resets, diagnostics)
        if diagnostics is not None:
            self.last_diagnostics = {name: float(value) for name, value in diagnostics.items()}
        if in_place:
            for name, value in new_state.items():
                if value is not state[name]:
                    state[name].copy_(value)
            new_state = dict(state)
        return y, new_state

    def reset_state(self, state: Mapping[str, Tensor], done: Tensor) -> State:
        """Set the rows where `done` (bool `[B]`) is true to a fresh episode's state; other rows are kept.

        What `(1 - done) * state` does for an LSTM, for every core: it keeps bool/int64 entries as they are."""
        batch_size = self._check_state(state)
        if not isinstance(done, Tensor) or done.dtype != torch.bool or tuple(done.shape) != (batch_size,):
            raise ValueError(f"done must be a bool tensor of shape [{batch_size}] (the state's batch size), got {_describe(done)}")
        fresh = self.initial_state(batch_size, device=done.device)
        reset = {}
        for name, value in state.items():
            rows = done.to(value.device).view(-1, *([1] * (value.dim() - 1)))
            reset[name] = torch.where(rows, fresh[name].to(value.device, value.dtype), value)
        return reset

    # ------------------------------------------------------------------ input checks

    def _check_inputs(self, x: Tensor, state: Mapping[str, Tensor], resets: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a tensor [B, T, {self.input_dim}], got {type(x).__name__}")
        if x.dim() != 3 or x.shape[-1] != self.input_dim or x.shape[1] == 0:
            raise ValueError(f"x must have shape [B, T, input_dim={self.input_dim}] with T >= 1, got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        if not isinstance(resets, Tensor) or resets.dtype != torch.bool or resets.shape != x.shape[:2]:
            raise ValueError(f"resets must be a bool tensor of shape [B, T] = {list(x.shape[:2])}, got {_describe(resets)}")
        batch_size = self._check_state(state)
        if batch_size != x.shape[0]:
            raise ValueError(f"the state holds {batch_size} rows but x has batch size {x.shape[0]}")

    def _check_state(self, state: Mapping[str, Tensor]) -> int:
        """Check that `state` belongs to this core (entries, dtypes, shapes); returns its batch size."""
        if self._state_specs is None:
            self._state_specs = {
                name: (value.dtype, tuple(value.shape[1:]))
                for name, value in self.initial_state(1, device="meta").items()
            }
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a dict of tensors from initial_state, got {type(state).__name__}")
        missing = sorted(self._state_specs.keys() - state.keys())
        extra = sorted(state.keys() - self._state_specs.keys())
        if missing or extra:
            raise ValueError(
                f"state does not belong to this {type(self).__name__}: missing keys {missing}, unexpected keys {extra}; "
                f"expected keys {sorted(self._state_specs)}"
            )
        for name, (dtype, shape) in self._state_specs.items():
            _check_entry(name, state[name], dtype, shape)
        return state_batch_size(state)


def state_batch_size(state: Mapping[str, Tensor]) -> int:
    """The batch size B of a core's state (a dict of tensors `[B, ...]`): the first dim of every entry."""
    batch_sizes = {value.shape[0] if isinstance(value, Tensor) and value.dim() else None for value in state.values()}
    if len(batch_sizes) != 1 or None in batch_sizes:
        raise ValueError(f"state entries must be tensors sharing one batch size (dim 0), got {_shapes(state)}")
    return batch_sizes.pop()


def _check_entry(name: str, value: object, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    """`value` is a tensor `[B, *shape]` of `dtype` (of any floating dtype where `dtype` is one)."""
    expected = f"[B{''.join(f', {size}' for size in shape)}]"
    if not isinstance(value, Tensor):
        raise TypeError(f"state[{name!r}] must be a tensor {expected}, got {type(value).__name__}")
    if dtype.is_floating_point and not value.is_floating_point():
        raise TypeError(f"state[{name!r}] must be a floating-point tensor {expected}, got {value.dtype}")
    if not dtype.is_floating_point and value.dtype != dtype:
        # The likely cause: an RL loop clearing finished episodes as CleanRL does, (1 - done) * state.
        hint = (
            ": arithmetic masking such as (1 - done) * state turns bool and int64 entries into floats; "
            "clear finished episodes with core.reset_state(state, done)"
            if value.is_floating_point()
            else ""
        )
        raise TypeError(f"state[{name!r}] must be a {dtype} tensor {expected}, got {value.dtype}{hint}")
    if tuple(value.shape[1:]) != shape:
        raise ValueError(f"state[{name!r}] must have shape {expected}, got {list(value.shape)}")


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"{value.dtype} tensor of shape {list(value.shape)}"
    return type(value).__name__


def _shapes(state: Mapping[str, object]) -> str:
    return ", ".join(f"{name}: {_describe(value)}" for name, value in state.items())
