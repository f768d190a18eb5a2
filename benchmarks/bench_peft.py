"""LoRA-FA for PEFT users: bytes kept for backward and one training step's time, RoBERTa-base shape.

    python benchmarks/bench_peft.py                    # batch 8 x 128, r 8, dropout 0.1, all encoder linears
    python benchmarks/bench_peft.py --reps 0           # memory only (seconds)

Every variant starts from the same random-weight RoBERTa-base classifier and the same batch:

    peft_lora              PEFT LoRA, torch AdamW
    peft_frozen_a          PEFT LoRA with A frozen (what public "LoRA-FA" implementations do)
    peft_lorafa_optimizer  PEFT's create_lorafa_optimizer (A frozen, B's gradient corrected)
    peft_use_lora_fa       PEFT LoRA after lorafa.peft.use_lora_fa, torch AdamW
    peft_use_lora_fa_corr  the same with b_grad_correction=True
    lorafa_lora_fa         lorafa's add_adapters(method="lora_fa"), torch AdamW
    lorafa_lora_fa_corr    lorafa's lora_fa_corrected, torch AdamW

A step is forward, backward and the optimizer's step; the variants are timed round-robin so
that machine noise hits all alike (compare ratios, not seconds). Writes results/bench/peft.csv
and peft.md and prints the table.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import RobertaConfig, RobertaForSequenceClassification

from lorafa import AdapterConfig, activation_report, add_adapters
from lorafa.paths import results_dir
from lorafa.peft import use_lora_fa
from lorafa.results import write_benchmark

TARGETS = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
VARIANTS = ("peft_lora", "peft_frozen_a", "peft_lorafa_optimizer", "peft_use_lora_fa", "peft_use_lora_fa_corr",
            "lorafa_lora_fa", "lorafa_lora_fa_corr")


def build(variant: str, base, r: int, dropout: float, lr: float):
    """(model, optimizer) of a variant; A starts from the same seed in every PEFT variant."""
    from peft import LoraConfig, get_peft_model
    from peft.optimizers import create_lorafa_optimizer

    model = copy.deepcopy(base)
    torch.manual_seed(0)
    if variant.startswith("lorafa_"):
        cfg = AdapterConfig(method="lora_fa", r=r, alpha=2 * r, dropout=dropout, target_modules=TARGETS,
                            b_grad_correction=variant.endswith("_corr"))
        model = add_adapters(model, cfg)
    else:
        model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=dropout, task_type="SEQ_CLS",
                                                 target_modules=TARGETS))
        if variant == "peft_frozen_a":
            for name, p in model.named_parameters():
                if "lora_A" in name:
                    p.requires_grad_(False)
        elif variant.startswith("peft_use_lora_fa"):
            use_lora_fa(model, b_grad_correction=variant.endswith("_corr"))
    if variant == "peft_lorafa_optimizer":
        optimizer = create_lorafa_optimizer(model, r=r, lora_alpha=2 * r, lr=lr)
    else:
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    return model.train(), optimizer


def time_steps(runs: dict, batch: dict, reps: int) -> dict:
    """Median seconds of one training step per variant, variants interleaved within each rep."""
    times = {v: [] for v in runs}
    for rep in range(reps + 2):  # two warm-up steps
        for variant, (model, optimizer) in runs.items():
            t0 = time.perf_counter()
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if rep >= 2:
                times[variant].append(time.perf_counter() - t0)
    return {v: statistics.median(t) for v, t in times.items()}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--layers", type=int, default=12, help="encoder layers (RoBERTa-base: 12)")
    ap.add_argument("--reps", type=int, default=5, help="timed steps per variant (0: memory only)")
    ap.add_argument("--out", type=Path, default=results_dir() / "bench" / "peft.csv")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    base = RobertaForSequenceClassification(RobertaConfig(num_hidden_layers=args.layers, num_labels=2))
    g = torch.Generator().manual_seed(1)
    batch = {"input_ids": torch.randint(3, base.config.vocab_size, (args.batch, args.seq), generator=g),
             "labels": torch.randint(0, 2, (args.batch,), generator=g)}
    runs = {v: build(v, base, args.r, args.dropout, 1e-4) for v in tqdm(VARIANTS, desc="build", unit="variant")}
    kept = {v: activation_report(model, input_ids=batch["input_ids"]).total_bytes for v, (model, _) in runs.items()}
    times = time_steps(runs, batch, args.reps) if args.reps else {}
    rows = [{"variant": v, "batch": args.batch, "seq": args.seq, "r": args.r, "dropout": args.dropout,
             "layers": args.layers, "threads": torch.get_num_threads(),
             "kept_mib": round(kept[v] / 2**20, 1), "kept_vs_peft_lora": round(kept[v] / kept["peft_lora"], 3),
             "step_s": round(times[v], 4) if times else None,
             "step_vs_peft_lora": round(times[v] / times["peft_lora"], 3) if times else None} for v in VARIANTS]
    write_benchmark(rows, args.out, markdown(rows))
    return rows


def markdown(rows: list[dict]) -> str:
    r = rows[0]
    lines = [f"RoBERTa-base shape ({r['layers']} layers), batch {r['batch']} x {r['seq']}, r {r['r']}, "
             f"dropout {r['dropout']}, fp32, {r['threads']} threads (python benchmarks/bench_peft.py)", "",
             "| variant | kept for backward (MiB) | / PEFT LoRA | step (s) | / PEFT LoRA |", "|---|---|---|---|---|"]
    for row in rows:
        step = f"{row['step_s']:.3f}" if row["step_s"] is not None else "-"
        ratio = f"{row['step_vs_peft_lora']:.3f}" if row["step_vs_peft_lora"] is not None else "-"
        lines.append(f"| {row['variant']} | {row['kept_mib']:,.1f} | {row['kept_vs_peft_lora']:.3f} | {step} | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
