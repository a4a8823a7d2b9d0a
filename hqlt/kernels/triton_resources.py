"""Shared memory of every Triton launch the dispatch can make, checked for an H100 on any machine.

The launchers are run on small CPU tensors with a stand-in driver for an sm_90 target and a compile
hook that records each launch (kernel, argument types, constexprs, num_warps, num_stages) instead of
compiling and launching it; nothing runs. Each distinct launch is then lowered by Triton's own NVIDIA
pipeline (TTIR, TTGIR, then the passes of its LLVM stage up to shared-memory allocation) and the
`ttg.shared` the allocation writes is read back: the very number the driver compares with the
device's limit when it loads the kernel (`OutOfResources: shared memory, Required: ...`). Stopping
before LLVM and ptxas makes one launch cost about a second instead of tens.

    python -m hqlt.kernels.triton_resources --workers 2          # every launch; exit 1 if one does not fit
    python -m hqlt.kernels.triton_resources --workers 2 --json   # the same as JSON lines (read by the tests)
    python -m hqlt.kernels.triton_resources --ptxas              # also registers and spills (full compiles)

Run it in a fresh process without TRITON_INTERPRET (interpreted kernels are not compiled, and the
kernels' launch caches keep the stand-in target afterwards).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import re
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import torch
import triton
from triton import knobs
from triton._C.libtriton import ir, nvidia, passes
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptx_version_from_options
from triton.compiler.compiler import ASTSource, make_backend
from triton.runtime.driver import driver

H100 = GPUTarget("cuda", 90, 32)
H100_SHARED_MEMORY = 232448  # bytes one block may use on sm_90 (227 KB)

# What the memory cores can ask for: head dim = hidden / heads, the rollout step's ring holds `window` slots.
HEAD_DIMS = (16, 32, 64, 128)
DTYPES = (torch.float32, torch.bfloat16)
ROLLOUT_WINDOWS = (8, 16, 32, 64, 128)
# Triton specialises integer arguments on == 1 and on divisibility by 16: H > 1 as in every preset; T and the
# cached steps S multiples of 16 (T=100 with S=40 gave every launch the same shared memory, checked once).
_HEADS, _STEPS, _WINDOW = 4, 128, 32
_SWIGLU_HIDDEN = 512  # the feed-forward width of a 128-wide block (any width compiles to the same launch)


@dataclass(frozen=True)
class Case:
    """One call the memory cores can make: op, head dim, requested chunk, input dtype, pass, and whether
    torch allows TF32 for fp32 matrix products (the fp32 kernels' products follow it)."""

    op: str
    head_dim: int
    dtype: torch.dtype
    backward: bool
    chunk_size: int | None = None
    window: int | None = None
    tf32: bool = False

    def describe(self) -> str:
        extra = (f" chunk={self.chunk_size}" if self.chunk_size else "") + (f" window={self.window}" if self.window else "")
        precision = " tf32" if self.tf32 else ""
        dim = "" if self.op == "swiglu" else f" d={self.head_dim}"  # element-wise: no head dim
        return f"{self.op}{dim}{extra} {str(self.dtype).removeprefix('torch.')}{precision} {'bwd' if self.backward else 'fwd'}"


@dataclass
class Launch:
    """One compiled variant of one kernel, and the dispatch cases that launch it."""

    kernel: triton.JITFunction
    signature: dict
    constants: dict
    attrs: dict
    num_warps: int
    num_stages: int
    cases: list[Case] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.kernel.fn.__module__.rsplit('.', 1)[-1]}.{self.kernel.fn.__name__}"

    def key(self) -> str:
        return repr((self.name, sorted(self.signature.items()), sorted(self.constants.items()),
                     sorted(self.attrs.items()), self.num_warps, self.num_stages))

    def constexprs(self) -> dict[str, object]:
        """The launch's constexpr arguments by name (block sizes, chunk, flags)."""
        names = self.kernel.arg_names
        return {names[path[0]]: value for path, value in self.constants.items()
                if self.signature.get(names[path[0]]) == "constexpr"}


def all_cases() -> list[Case]:
    """Every head dim, chunk size, dtype (fp32 with and without TF32) and pass of each op; every rollout
    window for the step op."""
    from hqlt.kernels.triton_delta_rule import CHUNK_SIZES
    from hqlt.kernels.triton_rms_norm import MAX_DIM, MIN_BLOCK

    # Every row tile of the norm kernel: its block is the row's width rounded up to a power of two.
    rms_norm_dims = [2**k for k in range(MIN_BLOCK.bit_length() - 1, MAX_DIM.bit_length())]
    cases = []
    precisions = [(dtype, False) for dtype in DTYPES] + [(torch.float32, True)]
    for d in HEAD_DIMS:
        for dtype, tf32 in precisions:
            for backward in (False, True):
                cases += [Case("delta_rule", d, dtype, backward, chunk, tf32=tf32) for chunk in CHUNK_SIZES]
                cases += [Case("synchronous_hqlt", d, dtype, backward, chunk, _WINDOW, tf32) for chunk in CHUNK_SIZES]
                cases.append(Case("window_attention", d, dtype, backward, window=_WINDOW, tf32=tf32))
            cases += [Case("synchronous_hqlt_step", d, dtype, False, window=w, tf32=tf32) for w in ROLLOUT_WINDOWS]
    cases += [Case("swiglu", 0, dtype, backward) for dtype in DTYPES for backward in (False, True)]
    cases += [Case("rms_norm", dim, dtype, backward) for dim in rms_norm_dims for dtype in DTYPES for backward in (False, True)]
    return cases


def _call(case: Case) -> None:
    """Run the Triton op of `case` (forward, and backward if asked) on small CPU tensors, with torch's TF32
    flag as the case says."""
    flags = torch.backends.cuda.matmul
    previous, flags.allow_tf32 = flags.allow_tf32, case.tf32
    try:
        _run_op(case)
    finally:
        flags.allow_tf32 = previous


def _run_op(case: Case) -> None:
    from hqlt.kernels import triton_ops

    op, d, dtype, window = triton_ops.OPS[case.op], case.head_dim, case.dtype, case.window
    steps = 1 if case.op == "synchronous_hqlt_step" else _STEPS

    def tensor(*shape: int, dtype: torch.dtype = dtype) -> torch.Tensor:
        return torch.zeros(*shape, dtype=dtype, requires_grad=case.backward)

    q, k, v, gate = (tensor(1, steps, _HEADS, d) for _ in range(4))
    beta = tensor(1, steps, _HEADS)
    resets = torch.zeros(1, steps, dtype=torch.bool)
    fw_state = tensor(1, _HEADS, d, d, dtype=torch.float32)
    if case.op == "swiglu":
        outputs = (op(tensor(1, steps, 2 * _SWIGLU_HIDDEN)),)
    elif case.op == "rms_norm":
        outputs = (op(tensor(1, steps, d), tensor(d, dtype=torch.float32), 1e-6),)
    elif case.op == "delta_rule":
        outputs = op(q, k, v, beta, resets, fw_state, chunk_size=case.chunk_size)
    elif case.op == "synchronous_hqlt_step":
        ring = [torch.zeros(1, window, _HEADS, d, dtype=dtype) for _ in range(2)]
        outputs = op(q, k, v, beta, gate, resets, fw_state, *ring, torch.ones(1, window, dtype=torch.bool),
                     torch.zeros(1, dtype=torch.long), window=window)
    else:
        cache_k, cache_v = tensor(1, window, _HEADS, d), tensor(1, window, _HEADS, d)
        cache_valid = torch.ones(1, window, dtype=torch.bool)
        if case.op == "window_attention":
            outputs = (op(q, k, v, resets, cache_k, cache_v, cache_valid, window),)
        else:
            outputs = op(q, k, v, beta, gate, resets, fw_state, cache_k, cache_v, cache_valid, window,
                         chunk_size=case.chunk_size)
    if case.backward:
        torch.autograd.backward(outputs, [torch.ones_like(o) for o in outputs])


class _H100Driver:
    """Stands in for the CUDA driver: the launchers only ask it for the target, device and stream."""

    def get_current_target(self) -> GPUTarget:
        return H100

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0


@contextlib.contextmanager
def _recording(record: Callable[[Launch], None]) -> Iterator[None]:
    """Within the block, every kernel launch is passed to `record` and skipped."""
    if knobs.runtime.interpret:
        raise RuntimeError("triton_resources compiles kernels: run it without TRITON_INTERPRET=1")

    def hook(*, fn, compile, **_) -> bool:
        record(Launch(fn.jit_function, compile["signature"], compile["constants"], compile["configs"][0],
                      compile["num_warps"], compile["num_stages"]))
        return True  # handled: do not compile, do not launch

    previous_hook, previous_driver = knobs.runtime.jit_cache_hook, driver._active  # None without a GPU
    driver.set_active(_H100Driver())
    knobs.runtime.jit_cache_hook = hook
    try:
        yield
    finally:
        knobs.runtime.jit_cache_hook = previous_hook
        driver.set_active(previous_driver)


def dispatch_launches(cases: list[Case] | None = None) -> list[Launch]:
    """The distinct launches the given cases (default: all) make, each listing its cases."""
    launches: dict[str, Launch] = {}

    def record(launch: Launch) -> None:
        launches.setdefault(launch.key(), launch).cases.append(case)

    with _recording(record):
        for case in cases or all_cases():
            _call(case)
    return list(launches.values())


def shared_memory_bytes(launch: Launch) -> int:
    """Shared memory the launch's kernel needs on an H100: `ttg.shared` after Triton's allocation pass."""
    backend = make_backend(H100)
    options = backend.parse_options({"num_warps": launch.num_warps, "num_stages": launch.num_stages})
    context = ir.context()
    ir.load_dialects(context)
    backend.load_dialects(context)
    source = ASTSource(launch.kernel, launch.signature, launch.constants, launch.attrs)
    module = source.make_ir(H100, options, backend.get_codegen_implementation(options), backend.get_module_map(),
                            context)
    stages: dict = {}
    backend.add_stages(stages, options, source.language)
    for stage in ("ttir", "ttgir"):
        module = stages[stage](module, {})
    # The head of the NVIDIA backend's LLVM stage, up to and including shared-memory allocation.
    manager = ir.pass_manager(context)
    passes.ttgpuir.add_combine_tensor_select_and_if(manager)
    passes.convert.add_scf_to_cf(manager)
    passes.gluon.add_inliner(manager)
    nvidia.passes.ttgpuir.add_allocate_shared_memory_nv(manager, H100.arch, get_ptx_version_from_options(options, H100.arch))
    manager.run(module, "allocate_shared_memory")
    return module.get_int_attr("ttg.shared")


def ptxas_report(launch: Launch) -> dict[str, int]:
    """Full compilation for sm_90 (through ptxas; tens of seconds a launch): the kernel's `shared`
    metadata, and the registers and spilled bytes that Triton's own `ptxas -v` run reports."""
    previous = knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile
    knobs.nvidia.dump_ptxas_log = knobs.compilation.always_compile = True  # printed; a cache hit would skip ptxas
    try:
        with contextlib.redirect_stdout(io.StringIO()) as log:
            kernel = triton.compile(ASTSource(launch.kernel, launch.signature, launch.constants, launch.attrs),
                                    target=H100, options={"num_warps": launch.num_warps, "num_stages": launch.num_stages})
    finally:
        knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile = previous
    registers = re.search(r"Used (\d+) registers", log.getvalue())
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log.getvalue())
    return dict(compiled_shared=kernel.metadata.shared, registers=int(registers[1]),
                spill_stores=int(spills[1]), spill_loads=int(spills[2]))


def _measure_share(worker: int, workers: int, ptxas: bool) -> list[dict]:
    """Rows of every `workers`-th distinct launch from the `worker`-th (the launch order is deterministic)."""
    torch.set_num_threads(1)
    rows = []
    for launch in dispatch_launches()[worker::workers]:
        rows.append(dict(kernel=launch.name, constexprs=launch.constexprs(), num_warps=launch.num_warps,
                         num_stages=launch.num_stages, shared=shared_memory_bytes(launch),
                         cases=[case.describe() for case in launch.cases], **(ptxas_report(launch) if ptxas else {})))
    return rows


def measure(workers: int = 1, ptxas: bool = False) -> list[dict]:
    """One row per distinct launch of the dispatch: kernel, constexprs, num_warps, num_stages, shared
    bytes, the cases that launch it and, with `ptxas`, `ptxas_report`; compiled by `workers` processes."""
    if workers == 1:
        rows = _measure_share(0, 1, ptxas)
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            shares = pool.map(_measure_share, range(workers), [workers] * workers, [ptxas] * workers)
            rows = [row for share in shares for row in share]
    return sorted(rows, key=lambda row: (row["kernel"], json.dumps(row["constexprs"]), row["num_stages"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object per launch")
    parser.add_argument("--workers", type=int, default=1, help="compiling processes")
    parser.add_argument("--ptxas", action="store_true", help="also compile fully: registers and spills (slow)")
    args = parser.parse_args(argv)
    rows = measure(args.workers, args.ptxas)
    for row in rows:
        if args.json:
            print(json.dumps(row, default=str))
        else:
            constexprs = " ".join(f"{name}={value}" for name, value in row["constexprs"].items())
            fits = "fits" if row["shared"] <= H100_SHARED_MEMORY else "TOO BIG"
            spills = (f", {row['registers']} registers, spills {row['spill_stores']} B stored / "
                      f"{row['spill_loads']} B loaded" if args.ptxas else "")
            print(f"{row['kernel']} [{constexprs} num_warps={row['num_warps']} num_stages={row['num_stages']}]: "
                  f"shared {row['shared']} B, {fits}{spills} <- {'; '.join(row['cases'])}")
    return int(any(row["shared"] > H100_SHARED_MEMORY for row in rows))


if __name__ == "__main__":
    sys.exit(main())
