"""The one place that decides which compute backend runs an op."""

from __future__ import annotations

import os

import torch

BACKENDS = ("reference", "triton")
ENV_VAR = "HQLT_BACKEND"


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreting() -> bool:
    """True when Triton kernels run on the CPU through the interpreter (`TRITON_INTERPRET=1`)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(override: str | None, device: torch.device) -> str:
    """Pick the backend for tensors on `device`.

    Order: an explicit `override` (config key), then the `HQLT_BACKEND` environment variable,
    then automatic: Triton on CUDA when Triton is installed, the PyTorch reference otherwise.
    """
    choice = override or os.environ.get(ENV_VAR) or "auto"
    if choice == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "reference"
    if choice not in BACKENDS:
        raise ValueError(f"unknown backend {choice!r}; valid choices: auto, {', '.join(BACKENDS)}")
    if choice == "triton":
        if not triton_available():
            raise RuntimeError("backend 'triton' was requested but Triton is not installed")
        if device.type != "cuda" and not interpreting():
            raise RuntimeError(
                "backend 'triton' on CPU tensors needs the Triton interpreter: set TRITON_INTERPRET=1"
            )
    return choice
