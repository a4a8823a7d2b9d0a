"""CUDA-graph capture of a whole step function (e.g. the policy's `act`), so that a rollout step costs
one graph launch instead of dozens of kernel launches."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils import _pytree as pytree


class CapturedStep:
    """`fn(*args)` captured once as a CUDA graph on static copies of `example_args` (tensors, or
    dicts/tuples of tensors, on one CUDA device).

    Calling it copies each argument into its captured buffer (skipped where the argument *is* that
    buffer, e.g. a state updated in place and passed back), replays the graph and returns the
    captured outputs. Outputs are buffers reused by the next call: copy what must outlive it.
    Shapes, dtypes and the Python-side control flow of `fn` must not change between calls.
    """

    def __init__(self, fn: Callable[..., Any], *example_args: Any, warmup_steps: int = 3) -> None:
        self.inputs = pytree.tree_map(lambda t: t.clone(), example_args)
        self._input_leaves = pytree.tree_leaves(self.inputs)
        if not all(isinstance(t, torch.Tensor) and t.is_cuda for t in self._input_leaves):
            raise ValueError("CapturedStep needs CUDA tensors (or dicts/tuples of them) as arguments")
        # Warm up on a side stream (cuBLAS handles, Triton compilation, autotuning) before capturing.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup_steps):
                fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = fn(*self.inputs)

    def __call__(self, *args: Any) -> Any:
        leaves = pytree.tree_leaves(args)
        if len(leaves) != len(self._input_leaves):
            raise ValueError(f"expected {len(self._input_leaves)} tensors as in the captured call, got {len(leaves)}")
        for buffer, value in zip(self._input_leaves, leaves):
            if buffer.data_ptr() != value.data_ptr():
                buffer.copy_(value)
        self.graph.replay()
        return self.outputs
