"""`build_core`: every memory core by name. `CORE_OPTIONS` declares each core's options and defaults
in one place; `build_core` checks them and fails with a message listing the valid choices."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hqlt.kernels import BACKENDS
from hqlt.memory.attention import BLENDS, FW_MEMORIES, MIXERS, AttentionCore
from hqlt.memory.core import MemoryCore
from hqlt.memory.mlp import MLPCore
from hqlt.memory.recurrent import RecurrentCore

# Shared by the attention family so that one config serves all of it: `window` and `max_context`
# are unused by the FW-only cores, `allow_neg_eigval` by linear attention. window None = max_context.
_ATTENTION_OPTIONS: dict[str, Any] = dict(
    num_layers=2, num_heads=4, window=64, chunk_size=64, dropout=0.0, allow_neg_eigval=True, max_context=1024, backend=None
)
CORE_OPTIONS: dict[str, dict[str, Any]] = {
    "lstm": dict(num_layers=1, forget_bias=0.0),
    "gru": dict(num_layers=1),
    "mlp": dict(num_layers=1, dropout=0.0),
    "transformer": {**_ATTENTION_OPTIONS, "window": None},
    "linear_attention": _ATTENTION_OPTIONS,
    "deltanet": _ATTENTION_OPTIONS,
    # gate_bias: the dynamic mixers' weight on the FW-memory starts at sigmoid(gate_bias) (0.98): at 0.5, hqlt
    # learned to act on what its fast weights hold far later than deltanet did (RESULTS, "the mixing gate")
    "hqlt": {**_ATTENTION_OPTIONS, "blend": "synchronous", "mixer": "dynamic_vector", "fw_memory": "deltanet",
             "gate_bias": 4.0},
}
CORE_NAMES: tuple[str, ...] = tuple(CORE_OPTIONS)


def core_options(name: str) -> dict[str, Any]:
    """The options `build_core(name, ...)` accepts, with their defaults."""
    if name not in CORE_OPTIONS:
        raise ValueError(f"unknown core {name!r}; valid names: {', '.join(CORE_NAMES)}")
    return dict(CORE_OPTIONS[name])


def build_core(name: str, *, input_dim: int, hidden_dim: int, **options: Any) -> MemoryCore:
    """Build the memory core `name` (one of `CORE_NAMES`) mapping `[B, T, input_dim]` to `[B, T, hidden_dim]`.

    `options` are the core's own (`core_options(name)` lists them with their defaults).
    """
    valid = core_options(name)
    unknown = sorted(options.keys() - valid.keys())
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for core {name!r}; its options: {', '.join(valid)}")
    _positive_int("input_dim", input_dim)
    _positive_int("hidden_dim", hidden_dim)
    chosen = {**valid, **options}
    _positive_int("num_layers", chosen["num_layers"])
    if "dropout" in chosen:
        _check_dropout(chosen["dropout"])
    return _BUILDERS[name](input_dim, hidden_dim, **chosen)


def _recurrent(kind: str) -> Callable[..., MemoryCore]:
    return lambda input_dim, hidden_dim, **options: RecurrentCore(kind, input_dim, hidden_dim, **options)


def _attention(fw_memory: str | None, has_window: bool) -> Callable[..., MemoryCore]:
    """Builder of an attention-family core; `fw_memory` None and `has_window` False stand for the
    missing memory of the Transformer and the FW-only cores; HQLT takes `fw_memory` from its options."""

    def build(input_dim: int, hidden_dim: int, *, window: int | None, max_context: int, **options: Any) -> MemoryCore:
        memory = options.pop("fw_memory", fw_memory)
        blend, mixer = options.pop("blend", "synchronous"), options.pop("mixer", "dynamic_vector")
        _check_choice("blend", blend, BLENDS)
        _check_choice("mixer", mixer, MIXERS)
        _check_choice("fw_memory", memory, FW_MEMORIES + ((None,) if fw_memory is None else ()))
        for name, value in (("num_heads", options["num_heads"]), ("chunk_size", options["chunk_size"]), ("max_context", max_context)):
            _positive_int(name, value)
        if window is not None:
            _positive_int("window", window)
        gate_bias = options.get("gate_bias", 0.0)
        if isinstance(gate_bias, bool) or not isinstance(gate_bias, (int, float)):
            raise ValueError(f"gate_bias must be a number, got {gate_bias!r}")
        if not isinstance(options["allow_neg_eigval"], bool):
            raise ValueError(f"allow_neg_eigval must be True or False, got {options['allow_neg_eigval']!r}")
        _check_choice("backend", options["backend"], (None, "auto", *BACKENDS))
        num_heads = options["num_heads"]
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim={hidden_dim} is not divisible by num_heads={num_heads}")
        if has_window and (hidden_dim // num_heads) % 2:
            raise ValueError(
                f"head dim hidden_dim / num_heads = {hidden_dim // num_heads} is odd; RoPE needs an even head dim"
            )
        return AttentionCore(
            input_dim, hidden_dim, fw_memory=memory, window=(window or max_context) if has_window else None,
            blend=blend, mixer=mixer, **options,
        )

    return build


_BUILDERS: dict[str, Callable[..., MemoryCore]] = {
    "lstm": _recurrent("lstm"),
    "gru": _recurrent("gru"),
    "mlp": lambda input_dim, hidden_dim, **options: MLPCore(input_dim, hidden_dim, **options),
    "transformer": _attention(None, has_window=True),
    "linear_attention": _attention("linear_attention", has_window=False),
    "deltanet": _attention("deltanet", has_window=False),
    "hqlt": _attention("deltanet", has_window=True),
}


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_dropout(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"dropout must be a number in [0, 1), got {value!r}")


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; valid choices: {', '.join(str(c) for c in choices)}")
