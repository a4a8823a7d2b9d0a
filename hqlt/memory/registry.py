"""`build_core`: every memory core by name. Each builder's keyword-only parameters are that core's
options (with their defaults), so the valid options are declared in exactly one place."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from hqlt.memory.core import MemoryCore
from hqlt.memory.mlp import MLPCore
from hqlt.memory.recurrent import RecurrentCore


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _dropout_rate(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"dropout must be a number in [0, 1), got {value!r}")


def _lstm(input_dim: int, hidden_dim: int, *, num_layers: int = 1) -> MemoryCore:
    _positive_int("num_layers", num_layers)
    return RecurrentCore("lstm", input_dim, hidden_dim, num_layers=num_layers)


def _gru(input_dim: int, hidden_dim: int, *, num_layers: int = 1) -> MemoryCore:
    _positive_int("num_layers", num_layers)
    return RecurrentCore("gru", input_dim, hidden_dim, num_layers=num_layers)


def _mlp(input_dim: int, hidden_dim: int, *, num_layers: int = 1, dropout: float = 0.0) -> MemoryCore:
    _positive_int("num_layers", num_layers)
    _dropout_rate(dropout)
    return MLPCore(input_dim, hidden_dim, num_layers=num_layers, dropout=dropout)


_BUILDERS: dict[str, Callable[..., MemoryCore]] = {
    "lstm": _lstm,
    "gru": _gru,
    "mlp": _mlp,
}
CORE_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def core_options(name: str) -> dict[str, Any]:
    """The options `build_core(name, ...)` accepts, with their defaults."""
    builder = _builder(name)
    parameters = inspect.signature(builder).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


def build_core(name: str, *, input_dim: int, hidden_dim: int, **options: Any) -> MemoryCore:
    """Build the memory core `name` (one of `CORE_NAMES`) mapping `[B, T, input_dim]` to `[B, T, hidden_dim]`.

    `options` are the core's own (see `core_options(name)`); an unknown one raises a `ValueError`
    that lists the valid ones.
    """
    builder = _builder(name)
    _positive_int("input_dim", input_dim)
    _positive_int("hidden_dim", hidden_dim)
    valid = core_options(name)
    unknown = sorted(options.keys() - valid.keys())
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for core {name!r}; its options: {', '.join(valid) or 'none'}")
    return builder(input_dim, hidden_dim, **options)


def _builder(name: str) -> Callable[..., MemoryCore]:
    if name not in _BUILDERS:
        raise ValueError(f"unknown core {name!r}; valid names: {', '.join(CORE_NAMES)}")
    return _BUILDERS[name]
