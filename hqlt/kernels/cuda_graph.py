"""CUDA-graph capture of a whole step function (e.g. the policy's `act`), so that a rollout step costs
one graph launch instead of dozens of kernel launches."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils import _pytree as pytree


class CapturedStep:
    """`fn(*args)` on static input buffers: clones of `example_args` (tensors, or dicts/tuples of tensors).

    Calling it copies each argument into its buffer (skipped where the argument *is* that buffer, e.g. a
    state that `fn` updates in place and that is passed back), runs `fn` on the buffers and returns its
    outputs. Outputs are buffers reused by the next call: copy what must outlive it. The arguments must
    keep the example's structure (same dict keys in the same order, same number of tensors).

    graph=True (CUDA tensors only): `fn` is captured once as a CUDA graph, and a call replays it. Shapes,
    dtypes and the Python-side control flow of `fn` must not change between calls, and `fn` may not
    synchronise with the host. Random numbers drawn by `fn` (torch's CUDA generator) advance with
    every replay.
    graph=False (any device): `fn` runs eagerly under the same protocol, its results copied into output
    buffers kept from the first call, so that code built on the protocol runs, and is tested, without
    a GPU.
    """

    def __init__(self, fn: Callable[..., Any], *example_args: Any, graph: bool = True, warmup_steps: int = 3) -> None:
        self.fn = fn
        self.inputs = pytree.tree_map(lambda t: t.clone(), example_args)
        self._input_leaves, self._input_spec = pytree.tree_flatten(self.inputs)
        if not all(isinstance(t, torch.Tensor) for t in self._input_leaves):
            raise ValueError("CapturedStep takes tensors (or dicts/tuples of them) as arguments")
        self.outputs: Any = None
        self.graph: torch.cuda.CUDAGraph | None = None
        if graph:
            self._capture(warmup_steps)

    def _capture(self, warmup_steps: int) -> None:
        if not all(t.is_cuda for t in self._input_leaves):
            raise ValueError("CapturedStep(graph=True) needs CUDA tensors as arguments; use graph=False on the CPU")
        # Warm up on a side stream (cuBLAS handles, Triton compilation, autotuning) before capturing. The
        # warm-up runs on the buffers, which the first call overwrites with its arguments, and under a
        # forked RNG: the run's random stream does not depend on when a step was captured.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.random.fork_rng(devices=[self._input_leaves[0].device]), torch.cuda.stream(side):
            for _ in range(warmup_steps):
                self.fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = self.fn(*self.inputs)

    def __call__(self, *args: Any) -> Any:
        leaves, spec = pytree.tree_flatten(args)
        if spec != self._input_spec:
            raise ValueError(f"arguments must have the structure of the captured call:\n{self._input_spec}\ngot\n{spec}")
        for buffer, value in zip(self._input_leaves, leaves):
            if value is not buffer:
                buffer.copy_(value)
        if self.graph is not None:
            self.graph.replay()
        else:
            self._run_eagerly()
        return self.outputs

    def _run_eagerly(self) -> None:
        outputs = self.fn(*self.inputs)
        if self.outputs is None:
            # Own buffers for every output that is not an input buffer (cloned here, so that they are
            # ordinary tensors even when `fn` runs under inference mode).
            inputs = {id(t) for t in self._input_leaves}
            self.outputs = pytree.tree_map_only(torch.Tensor, lambda t: t if id(t) in inputs else t.clone(), outputs)
            return
        for buffer, value in zip(pytree.tree_leaves(self.outputs), pytree.tree_leaves(outputs)):
            if value is not buffer:
                buffer.copy_(value)
