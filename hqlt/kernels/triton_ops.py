"""Triton implementations of the dispatch ops; `hqlt.kernels` reads `OPS` (op name -> callable with
exactly the reference op's signature)."""

from __future__ import annotations

from collections.abc import Callable

from hqlt.kernels.backend import interpreting
from hqlt.kernels.triton_delta_rule import delta_rule
from hqlt.kernels.triton_interpreter import fix_bf16
from hqlt.kernels.triton_rms_norm import rms_norm
from hqlt.kernels.triton_rollout_step import synchronous_hqlt_step
from hqlt.kernels.triton_swiglu import swiglu
from hqlt.kernels.triton_synchronous_hqlt import synchronous_hqlt
from hqlt.kernels.triton_window_attention import window_attention

if interpreting():
    fix_bf16()

OPS: dict[str, Callable] = {
    "delta_rule": delta_rule,
    "rms_norm": rms_norm,
    "swiglu": swiglu,
    "synchronous_hqlt": synchronous_hqlt,
    "synchronous_hqlt_step": synchronous_hqlt_step,
    "window_attention": window_attention,
}
