"""Parity length generalisation (the paper's expressivity test).

Train on bit strings of length 3-40 to output the running parity at every step, test the parity of
whole strings of length 40-256. 2 layers, width 128, 4 heads, window 8, beta in (0, 2).

    python benchmarks/parity.py --device cuda --jobs 5   # all five cores at once, records benchmarks/RESULTS.md
    python benchmarks/parity.py --cores deltanet --steps 50 --device cpu   # a quick look
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

import torch
import torch.nn.functional as F
from results import markdown_table, record

from hqlt.memory import build_core

CORES = {
    "transformer": dict(name="transformer", window=None, max_context=256),
    "deltanet": dict(name="deltanet"),
    "hqlt synchronous": dict(name="hqlt", blend="synchronous"),
    "hqlt delayed_stream": dict(name="hqlt", blend="delayed_stream"),
    "hqlt delayed_chunk": dict(name="hqlt", blend="delayed_chunk"),
}
TRAIN_LENGTHS = (3, 40)
TEST_LENGTHS = (40, 64, 128, 256)


class ParityModel(torch.nn.Module):
    def __init__(self, core_options: dict) -> None:
        super().__init__()
        options = dict(core_options)
        name = options.pop("name")
        defaults = dict(num_layers=2, num_heads=4, window=8, allow_neg_eigval=True)
        self.core = build_core(name, input_dim=2, hidden_dim=128, **{**defaults, **options})
        self.head = torch.nn.Linear(128, 2)

    def forward(self, bits: torch.Tensor) -> torch.Tensor:
        """bits: long `[B, T]` -> logits `[B, T, 2]` of the running parity."""
        batch, steps = bits.shape
        state = self.core.initial_state(batch, device=bits.device)
        resets = torch.zeros(batch, steps, dtype=torch.bool, device=bits.device)
        resets[:, 0] = True
        y, _ = self.core(F.one_hot(bits, 2).float(), state, resets)
        return self.head(y)


def sample(batch: int, length: int, device: str, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    bits = torch.randint(0, 2, (batch, length), generator=generator).to(device)
    return bits, torch.cumsum(bits, dim=1) % 2


def train_and_test(label: str, args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    model = ParityModel(CORES[label]).to(args.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.steps, pct_start=0.1)
    start = time.perf_counter()
    deadline = start + 60 * args.max_minutes
    for step in range(1, args.steps + 1):
        length = int(torch.randint(TRAIN_LENGTHS[0], TRAIN_LENGTHS[1] + 1, (), generator=generator))
        bits, parity = sample(args.batch_size, length, args.device, generator)
        loss = F.cross_entropy(model(bits).flatten(0, 1), parity.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if time.perf_counter() > deadline:
            break
    model.eval()
    accuracy = {}
    with torch.no_grad():
        for length in TEST_LENGTHS:
            bits, parity = sample(args.test_size, length, args.device, generator)
            accuracy[length] = (model(bits)[:, -1].argmax(-1) == parity[:, -1]).float().mean().item()
    return dict(accuracy=accuracy, final_loss=loss.item(), steps=step, seconds=time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", nargs="+", default=list(CORES), choices=list(CORES), metavar="CORE")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--test-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-minutes", type=float, default=60.0, help="training time limit per core")
    parser.add_argument("--jobs", type=int, default=1, help="cores trained at once, one process each")
    parser.add_argument("--no-record", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()

    rows = []
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = pool.map(train_and_test, args.cores, [args] * len(args.cores))
    for label, result in zip(args.cores, results):
        rows.append(
            [label]
            + [f"{100 * result['accuracy'][n]:.1f}" for n in TEST_LENGTHS]
            + [f"{result['final_loss']:.3f}", result["steps"], f"{result['seconds']:.0f}"]
        )
        print(label, result, flush=True)
    header = ["core"] + [f"acc% len {n}" for n in TEST_LENGTHS] + ["final train loss", "train steps", "seconds"]
    table = markdown_table(header, rows)
    print(table)
    if not args.no_record:
        device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
        command = f"python benchmarks/parity.py --steps {args.steps} --batch-size {args.batch_size} --seed {args.seed}"
        record("Parity length generalisation", f"`{command}` on {device}; train lengths 3-40, "
               f"accuracy of the parity of whole test strings (chance = 50%).\n\n{table}")


if __name__ == "__main__":
    main()
