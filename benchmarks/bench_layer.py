"""One adapted linear layer: saved activation bytes and forward+backward time per method.

    python benchmarks/bench_layer.py                 # CPU, fp32, the issue's grid
    python benchmarks/bench_layer.py --device cuda --dtype bfloat16

Methods, all on the same base weight and input in the same run: full fine-tuning, our LoRA,
our LoRA-FA, PEFT's LoRA, and PEFT's LoRA with A frozen (what public "LoRA-FA"
implementations do). Timings are interleaved round-robin across methods so that machine
noise hits all of them alike; compare the ratios, not the absolute times.
Writes results/bench/layer.csv and prints a table.
"""

from __future__ import annotations

import argparse
import copy
import csv
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from lorafa import AdapterConfig, activation_report, add_adapters
from lorafa.paths import results_dir

METHODS = ("full_ft", "lora", "lora_fa", "peft_lora", "peft_lora_frozen_a")


class OneLinear(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.layer = nn.Linear(d, d)

    def forward(self, x):
        return self.layer(x)


def build(method: str, base: OneLinear, r: int, dropout: float) -> nn.Module:
    model = copy.deepcopy(base)
    if method in ("full_ft", "lora", "lora_fa"):
        cfg = AdapterConfig(method="full_ft") if method == "full_ft" else \
            AdapterConfig(method=method, r=r, alpha=2 * r, dropout=dropout, target_modules=["layer"], adapter_dtype="auto")
        return add_adapters(model, cfg).train()
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=dropout, target_modules=["layer"]))
    if method == "peft_lora_frozen_a":
        for name, p in model.named_parameters():
            if "lora_A" in name:
                p.requires_grad_(False)
    return model.train()


def time_steps(models: dict, x: torch.Tensor, reps: int, sync) -> dict:
    """Median seconds of forward+backward per method, methods interleaved within each rep."""
    grad = torch.randn(x.shape, dtype=x.dtype, device=x.device)
    times = {m: [] for m in models}
    warmup = 3
    for rep in range(reps + warmup):
        for name, model in models.items():
            xi = x.detach().requires_grad_(True)
            sync()
            t0 = time.perf_counter()
            model(xi).backward(grad)
            sync()
            if rep >= warmup:
                times[name].append(time.perf_counter() - t0)
            model.zero_grad(set_to_none=True)
    return {m: statistics.median(t) for m, t in times.items()}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dims", type=int, nargs="+", default=[768, 4096])
    ap.add_argument("--ranks", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--dropouts", type=float, nargs="+", default=[0.0, 0.1])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=results_dir() / "bench" / "layer.csv")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    esize = torch.finfo(dtype).bits // 8
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = []
    grid = [(d, r, p) for d in args.dims for r in args.ranks for p in args.dropouts]
    for d, r, p in tqdm(grid, desc="layer benchmark", unit="shape"):
        torch.manual_seed(0)
        base = OneLinear(d).to(device=device, dtype=dtype)
        models = {m: build(m, base, r, p) for m in METHODS}
        x = torch.randn(args.batch, args.seq, d, device=device, dtype=dtype)
        saved = {m: activation_report(model, x=x.detach().requires_grad_(True)).total_bytes
                 for m, model in models.items()}
        times = time_steps(models, x, args.reps, sync)
        for m in METHODS:
            rows.append({"d": d, "r": r, "dropout": p, "method": m, "batch": args.batch, "seq": args.seq,
                         "dtype": args.dtype, "device": device.type, "threads": torch.get_num_threads(),
                         "saved_bytes": saved[m],
                         "bsr_bytes": args.batch * args.seq * r * esize,
                         "bsd_bytes": args.batch * args.seq * d * esize,
                         "step_ms": round(times[m] * 1e3, 3),
                         "time_vs_lora": round(times[m] / times["lora"], 3)})
        del models
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print_table(rows)
    print(f"\nwrote {args.out}")
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"\n{'d':>5} {'r':>3} {'drop':>4}  " + "  ".join(f"{m:>20}" for m in METHODS) + "   fa/lora time")
    shapes = sorted({(row["d"], row["r"], row["dropout"]) for row in rows})
    for d, r, p in shapes:
        cells = {row["method"]: row for row in rows if (row["d"], row["r"], row["dropout"]) == (d, r, p)}
        text = "  ".join(f"{cells[m]['saved_bytes'] / 2**10:9.0f}KiB {cells[m]['step_ms']:7.1f}ms" for m in METHODS)
        print(f"{d:>5} {r:>3} {p:>4}  {text}   {cells['lora_fa']['time_vs_lora']:.3f}")


if __name__ == "__main__":
    main()
