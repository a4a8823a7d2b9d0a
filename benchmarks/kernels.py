"""Kernel benchmarks on one GPU: our Triton ops against their peers, measured in the same run.

Part 1, forward+backward of one layer's core op (H=4; resets drawn so that episodes last `episode`
steps on average): our delta rule, window attention and fused Synchronous HQLT; fla's
`chunk_delta_rule` with the resets as `cu_seqlens` (bf16 only); FlexAttention sliding window with an
episode mask; cuDNN LSTM and a per-step LSTM loop with done masks (width 256). Peers get their
preferred layouts and masks/offsets built outside the timed region.

Part 2, one rollout step of 1024 envs under CUDA graphs: the policy (`hqlt.agents.Policy`) with an
LSTM core against the same policy with a 3-layer HQLT core (width 256, 4 heads, window 64), stepping
functionally (new state tensors each step) and in place (`in_place=True`, as the collector acts).

    PYTHONPATH=. python benchmarks/kernels.py --record        # full run, records benchmarks/RESULTS.md
    PYTHONPATH=. python benchmarks/kernels.py --save-dir out  # also writes the section bodies there
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from gymnasium import spaces
from results import markdown_table, record

from hqlt import kernels
from hqlt.agents.policy import Policy
from hqlt.kernels.cuda_graph import CapturedStep
from hqlt.memory import build_core

HEADS = 4
WINDOW = 64
LSTM_WIDTH = 256
CONFIGS = [  # (envs N, steps T, head dim d, mean episode length)
    (256, 128, 64, 64), (256, 128, 64, 256), (32, 1024, 64, 64), (32, 1024, 64, 256),
    (256, 128, 32, 64), (256, 128, 32, 256), (32, 1024, 32, 64), (32, 1024, 32, 256),
]


def median_ms(fn, rep_ms: int = 200) -> float:
    return triton.testing.do_bench(fn, warmup=50, rep=rep_ms, return_mode="median")


def measure(label: str, fn, rep_ms: int = 200) -> float | None:
    """Median ms of fn, or None (with the error printed) where the peer or our op fails."""
    try:
        return median_ms(fn, rep_ms)
    except Exception:  # noqa: BLE001 - a failing peer must not hide the other rows
        print(f"[{label}] failed:\n{traceback.format_exc(limit=3)}", file=sys.stderr)
        return None


def fwd_bwd(forward, inputs: list[torch.Tensor]):
    """A closure running forward + backward with fixed random output gradients."""
    outputs = forward(*inputs)
    grads = [torch.randn_like(o) for o in outputs]

    def run():
        for t in inputs:
            t.grad = None
        torch.autograd.backward(forward(*inputs), grads)

    return run


def leaf(*shape, dtype=torch.bfloat16, scale=1.0, fn=None):
    x = torch.randn(*shape, device="cuda") * scale
    return (fn(x) if fn else x).to(dtype).requires_grad_()


# ----------------------------------------------------------------------------- part 1: core ops


# Rounds of measurement per config: each round times every op once, in turn; an op keeps its best
# median. The device host is shared, and a burst of CPU load shifts a whole median of these
# launch-sensitive ops; interleaved rounds give every op, ours and the peers', the same chances.
ROUNDS = 3


def core_op_rows(envs: int, steps: int, dim: int, episode: int) -> dict[str, float | None]:
    torch.manual_seed(0)
    resets = torch.rand(envs, steps, device="cuda") < 1.0 / episode
    cache_valid = torch.ones(envs, WINDOW, dtype=torch.bool, device="cuda")
    runs = {}
    for dtype, tag in [(torch.bfloat16, "bf16"), (torch.float32, "fp32")]:
        q, k, v = (leaf(envs, steps, HEADS, dim, dtype=dtype) for _ in range(3))
        beta = leaf(envs, steps, HEADS, dtype=dtype, fn=torch.sigmoid)
        gate = leaf(envs, steps, HEADS, dim, dtype=dtype, fn=torch.sigmoid)
        state = leaf(envs, HEADS, dim, dim, dtype=torch.float32)
        cache_k, cache_v = (leaf(envs, WINDOW, HEADS, dim, dtype=dtype) for _ in range(2))

        def delta(q, k, v, beta, state):
            return kernels.delta_rule(q, k, v, beta, resets, state)

        def window(q, k, v, cache_k, cache_v):
            return (kernels.window_attention(q, k, v, resets, cache_k, cache_v, cache_valid, window=WINDOW),)

        def hqlt(q, k, v, beta, gate, state, cache_k, cache_v):
            return kernels.synchronous_hqlt(q, k, v, beta, gate, resets, state, cache_k, cache_v, cache_valid,
                                            window=WINDOW)

        runs[f"ours delta rule {tag}"] = fwd_bwd(delta, [q, k, v, beta, state])
        runs[f"ours window attention {tag}"] = fwd_bwd(window, [q, k, v, cache_k, cache_v])
        runs[f"ours fused HQLT {tag}"] = fwd_bwd(hqlt, [q, k, v, beta, gate, state, cache_k, cache_v])
    for name, build in [("fla chunk_delta_rule bf16", fla_delta_rule), ("FlexAttention window bf16", flex_window)]:
        try:
            runs[name] = build(envs, steps, dim, resets)
        except Exception:  # noqa: BLE001 - a missing peer must not hide the other rows
            print(f"[{name}] failed:\n{traceback.format_exc(limit=3)}", file=sys.stderr)
    times: dict[str, float | None] = {}
    for _ in range(ROUNDS):
        for name, run in runs.items():
            if times.get(name, 0.0) is not None:
                measured = measure(name, run)
                times[name] = None if measured is None else min(measured, times.get(name, measured))
    return times


def fla_delta_rule(envs: int, steps: int, dim: int, resets: torch.Tensor):
    """fla varlen: the N rows flattened to one sequence cut at every row start and every reset."""
    from fla.ops.delta_rule import chunk_delta_rule

    starts = resets.clone()
    starts[:, 0] = True
    cu_seqlens = torch.cat([starts.flatten().nonzero()[:, 0], torch.tensor([envs * steps], device="cuda")])
    cu_seqlens_cpu = cu_seqlens.cpu()
    num_sequences = len(cu_seqlens) - 1
    q, k, v = (leaf(1, envs * steps, HEADS, dim) for _ in range(3))
    beta = leaf(1, envs * steps, HEADS, fn=torch.sigmoid)
    initial = leaf(num_sequences, HEADS, dim, dim, dtype=torch.float32)

    def forward(q, k, v, beta, initial):
        o, final = chunk_delta_rule(
            F.silu(q), F.silu(k), v, beta, initial_state=initial, output_final_state=True,
            use_qk_l2norm_in_kernel=True, cu_seqlens=cu_seqlens, cu_seqlens_cpu=cu_seqlens_cpu,
        )
        return o, final

    return fwd_bwd(forward, [q, k, v, beta, initial])


_FLEX = {}


def flex_window(envs: int, steps: int, dim: int, resets: torch.Tensor):
    """FlexAttention (compiled) with a sliding-window + same-episode block mask, [N, H, T, d] layout."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if "fn" not in _FLEX:
        _FLEX["fn"] = torch.compile(flex_attention, dynamic=False)
    episode = torch.cumsum(resets, dim=1, dtype=torch.int32)

    def mask(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx < WINDOW) & (episode[b, q_idx] == episode[b, kv_idx])

    block_mask = create_block_mask(mask, envs, None, steps, steps, device="cuda")
    q, k, v = (leaf(envs, HEADS, steps, dim) for _ in range(3))
    return fwd_bwd(lambda q, k, v: (_FLEX["fn"](q, k, v, block_mask=block_mask),), [q, k, v])


def lstm_rows(envs: int, steps: int) -> dict[str, float | None]:
    x = leaf(envs, steps, LSTM_WIDTH, dtype=torch.float32)
    lstm = torch.nn.LSTM(LSTM_WIDTH, LSTM_WIDTH, batch_first=True).cuda()
    cell = torch.nn.LSTMCell(LSTM_WIDTH, LSTM_WIDTH).cuda()
    keep = (torch.rand(envs, steps, 1, device="cuda") >= 1 / 64).float()

    def loop(x):
        h = c = x.new_zeros(envs, LSTM_WIDTH)
        outputs = []
        for t in range(steps):
            h, c = cell(x[:, t], (h * keep[:, t], c * keep[:, t]))
            outputs.append(h)
        return (torch.stack(outputs, dim=1),)

    return {
        "cuDNN LSTM fp32": measure("cudnn", fwd_bwd(lambda x: (lstm(x)[0],), [x])),
        "LSTM step loop fp32": measure("loop", fwd_bwd(loop, [x]), rep_ms=50),
    }


ROWS = [
    "ours delta rule bf16", "ours delta rule fp32", "fla chunk_delta_rule bf16",
    "ours window attention bf16", "ours window attention fp32", "FlexAttention window bf16",
    "ours fused HQLT bf16", "ours fused HQLT fp32", "cuDNN LSTM fp32", "LSTM step loop fp32",
]


def fmt(value: float | None, digits: int = 3) -> str:
    return "failed" if value is None else f"{value:.{digits}f}"


def ratio(numerator: float | None, denominator: float | None) -> str:
    return "-" if numerator is None or denominator is None else f"{numerator / denominator:.1f}x"


def core_op_section(card: str, configs: list[tuple[int, int, int, int]]) -> str:
    columns, results = [], []
    lstm = {}
    for envs, steps, dim, episode in configs:
        start = time.time()
        times = core_op_rows(envs, steps, dim, episode)
        if (envs, steps) not in lstm:
            lstm[(envs, steps)] = lstm_rows(envs, steps)
        times.update(lstm[(envs, steps)])
        columns.append(f"N={envs} T={steps} d={dim} ep={episode}")
        results.append(times)
        print(f"{columns[-1]}: " + ", ".join(f"{k}={fmt(v)}" for k, v in times.items()), f"({time.time() - start:.0f}s)",
              flush=True)
    return format_core_ops(environment(card), columns, results)


def environment(card: str) -> str:
    return f"{card}, torch {torch.__version__}, Triton {triton.__version__}, fla {fla_version()}"


def format_core_ops(environment: str, columns: list[str], results: list[dict[str, float | None]]) -> str:
    """The `## Kernels` body: one column per config, one row per op, then the two target ratios."""
    table = [[row] + [fmt(t.get(row)) for t in results] for row in ROWS]
    table.append(["**fla / ours delta rule (bf16)**"]
                 + [ratio(t.get("fla chunk_delta_rule bf16"), t.get("ours delta rule bf16")) for t in results])
    peers = [None if t.get("fla chunk_delta_rule bf16") is None or t.get("FlexAttention window bf16") is None
             else t["fla chunk_delta_rule bf16"] + t["FlexAttention window bf16"] for t in results]
    table.append(["**(fla + Flex) / ours fused HQLT (bf16)**"]
                 + [ratio(p, t.get("ours fused HQLT bf16")) for p, t in zip(peers, results)])
    return (
        f"`PYTHONPATH=. python benchmarks/kernels.py` on one {environment}. Forward + backward of one layer's core op, milliseconds (median of "
        f"`triton.testing.do_bench`, the best of {ROUNDS} interleaved rounds over all ops), H={HEADS}, window {WINDOW} (our window attention also reads a cache of "
        f"{WINDOW} previous keys), resets Bernoulli(1/ep) per step. Peers: fla `chunk_delta_rule` "
        "with resets as `cu_seqlens` (offsets built outside the timed region; no fp32 support), FlexAttention "
        "compiled with a prebuilt sliding-window + episode block mask (no RoPE, no cache), LSTM width 256.\n\n"
        + markdown_table(["op"] + columns, table)
    )


def fla_version() -> str:
    try:
        import fla

        return fla.__version__
    except Exception:  # noqa: BLE001
        return "(not installed)"


# ----------------------------------------------------------------------------- part 2: rollout step


def fused_attention_step(core, x: torch.Tensor, state: dict, resets: torch.Tensor):
    """The HQLT core's step in place (`in_place=True`: the fused step op on the state's own tensors),
    as the collector runs it; x `[B, 1, D]`, resets `[B, 1]`."""
    return core(x, state, resets, in_place=True)


def step_times(variants, obs, prev_action, prev_reward, resets, envs: int, steps: int) -> dict[str, float | None]:
    """Mean ms of one captured policy step per variant (after `steps` warm-up steps), under the current
    TF32 setting."""
    observation_space = spaces.Box(-1.0, 1.0, (64,))
    action_space = spaces.Box(-1.0, 1.0, (4,))
    times = {}
    for name, (core, in_place) in variants.items():
        policy = Policy(observation_space, action_space, core).cuda().eval()
        state = policy.initial_state(envs, device="cuda")
        try:
            act = functools.partial(policy.act, greedy=True, in_place=in_place)
            step = CapturedStep(act, obs[0], prev_action[0], prev_reward[0], state, resets[0])
            state = step.inputs[3]
            for t in range(steps):  # settle the memories past one window before timing
                state = step(obs[t], prev_action[t], prev_reward[t], state, resets[t])[3]
            torch.cuda.synchronize()
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            for t in range(steps):
                state = step(obs[t], prev_action[t], prev_reward[t], state, resets[t])[3]
            end.record()
            torch.cuda.synchronize()
            times[name] = start.elapsed_time(end) / steps
        except Exception:  # noqa: BLE001
            print(f"[{name}] failed:\n{traceback.format_exc(limit=4)}", file=sys.stderr)
            times[name] = None
    return times


def rollout_step_section(card: str, envs: int = 1024, steps: int = 200) -> str:
    hqlt_options = dict(window=WINDOW, num_layers=3, num_heads=HEADS, blend="synchronous", mixer="dynamic_vector")
    variants = {  # name: (core, in_place); the collector acts in place with every core
        "LSTM policy (width 256)": (build_core("lstm", input_dim=256, hidden_dim=256), True),
        "LSTM policy (width 256, 3 layers)": (build_core("lstm", input_dim=256, hidden_dim=256, num_layers=3), True),
        "HQLT policy, functional step (state copies)": (build_core("hqlt", input_dim=256, hidden_dim=256, **hqlt_options), False),
        "HQLT policy, fused step op": (build_core("hqlt", input_dim=256, hidden_dim=256, **hqlt_options), True),
    }
    torch.manual_seed(0)
    obs = torch.rand(steps, envs, 64, device="cuda") * 2 - 1
    prev_action = torch.rand(steps, envs, 4, device="cuda") * 2 - 1
    prev_reward = torch.randn(steps, envs, device="cuda")
    resets = torch.rand(steps, envs, device="cuda") < 1 / 64
    times = {}
    for tf32 in (True, False):  # the trainer's default (tf32=true), then full fp32 products
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        times[tf32] = step_times(variants, obs, prev_action, prev_reward, resets, envs, steps)
    agreement = step_agreement(variants, resets, envs)
    rows = []
    for name in variants:
        row = [name]
        for tf32 in (True, False):
            row += [fmt(times[tf32][name], 4), ratio(times[tf32][name], times[tf32]["LSTM policy (width 256)"])]
        rows.append(row)
    return (
        f"`PYTHONPATH=. python benchmarks/kernels.py` on one {card}: one `Policy.act` step for {envs} envs "
        f"(Box(64) observations, Box(4) actions, greedy actions), captured as one CUDA graph "
        f"(`hqlt.kernels.cuda_graph.CapturedStep`), mean of {steps} replays after {steps} warm-up steps; "
        f"HQLT = 3 layers, width 256, 4 heads, window {WINDOW}, synchronous blend, dynamic vector mixer, fp32 "
        f"state. Matrix products with TF32 (the trainer's default, `tf32=true`) and in full fp32, each "
        f"policy against the LSTM policy under the same setting. "
        f"Every policy steps its state in place (`in_place=True`, as the collector acts on CUDA): the HQLT "
        f"core runs the fused step op on the graph's state buffers, the LSTM copies its new state into them. "
        f"The functional HQLT step runs the same op on copies of the state (new state tensors each step, "
        f"copied back into the graph's input buffers). "
        f"{agreement}\n\n"
        + markdown_table(["policy step", "ms (TF32)", "vs LSTM (TF32)", "ms (fp32)", "vs LSTM (fp32)"], rows)
    )


def step_agreement(variants, resets, envs: int, steps: int = 80) -> str:
    """Max |difference| between `steps` fused in-place steps and one sequence-mode call of the same
    core over those steps (from a fresh state)."""
    try:
        core, _ = variants["HQLT policy, fused step op"]
        x = torch.randn(envs, steps, 256, device="cuda")
        with torch.no_grad():
            y_sequence, _ = type(core)._forward(core, x, core.initial_state(envs, device="cuda"), resets[:steps].T, None)
            state = core.initial_state(envs, device="cuda")
            y_steps = [fused_attention_step(core, x[:, t: t + 1], state, resets[t][:, None])[0] for t in range(steps)]
        worst = (torch.cat(y_steps, dim=1) - y_sequence).abs().max().item()
        return f"Fused step op over {steps} steps vs one sequence-mode call of the core: max abs difference {worst:.1e}."
    except Exception:  # noqa: BLE001
        print(f"[agreement] failed:\n{traceback.format_exc(limit=4)}", file=sys.stderr)
        return "Agreement check failed (see log)."


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--record", action="store_true", help="write the sections into benchmarks/RESULTS.md")
    parser.add_argument("--save-dir", type=Path, help="also write each section body to DIR/<section>.md")
    parser.add_argument("--parts", default="step,ops", help="comma-separated: ops, step")
    parser.add_argument("--dims", default="64,32", help="comma-separated head dims of the core-op configs")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/kernels.py needs a CUDA GPU")
    card = torch.cuda.get_device_name()
    sections = {}
    parts = args.parts.split(",")
    if "step" in parts:
        sections["Rollout step"] = rollout_step_section(card)
        print(sections["Rollout step"], flush=True)
    if "ops" in parts:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 peers in full fp32
        dims = {int(d) for d in args.dims.split(",")}
        sections["Kernels"] = core_op_section(card, [c for c in CONFIGS if c[2] in dims])
        print(sections["Kernels"], flush=True)
    for name, body in sections.items():
        if args.save_dir:
            args.save_dir.mkdir(parents=True, exist_ok=True)
            (args.save_dir / f"{name.replace(' ', '_')}.md").write_text(body)
        if args.record:
            record(name, body)


if __name__ == "__main__":
    main()
