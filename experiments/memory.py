"""Paper-scale memory by simulation: Table 5 and Figures 2a, 2b, 2c, 3 and 5.

    python experiments/memory.py table5                 # one experiment
    python experiments/memory.py all --out results/paper
    python experiments/memory.py fig5 --backend cuda    # measure on a GPU instead

Each point is one `measure_peak_memory` call and one run record (memory_source "simulated"
or "cuda") under <out>/runs/. Points whose record already exists are not recomputed.
The paper's baseline attention is eager (transformers' default for LLaMA in 2023; its
Figures 2a and 5 add FlashAttention as an optimisation), so eager is the default here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tqdm import tqdm  # noqa: E402

from lorafa.memory.measure import A100_80GB, measure_peak_memory  # noqa: E402
from lorafa.paths import results_dir  # noqa: E402
from lorafa.results import config_hash, find_finished, write_record  # noqa: E402

GB = 10**9
A100_40GB = 40 * GB
METHODS = ("full_ft", "lora", "lora_fa")

# Table 5: (conf/model name, paper label, batch size, sequence length, rank). Sequence lengths:
# 128 for RoBERTa (Table 2) and T5 (source and target), 1024 for LLaMA (as in Figures 3 and 5).
TABLE5 = (("roberta-base", "RoBERTa-base", 64, 128, 8), ("roberta-large", "RoBERTa-large", 64, 128, 8),
          ("t5-small", "T5-small", 128, 128, 8), ("t5-base", "T5-base", 64, 128, 8),
          ("t5-large", "T5-large", 32, 128, 16), ("llama-7b", "LLaMA-7B", 16, 1024, 64))
BATCHES = (1, 2, 4, 8, 16, 32)


def points(experiment: str, attn: str) -> list[dict]:
    """Every measure_peak_memory call of one experiment, as keyword dicts (plus 'capacity_bytes')."""
    llama2 = dict(model="llama2-7b", seq_len=1024, r=64, attn_implementation=attn)
    if experiment == "table5":
        return [dict(model=m, method=meth, batch_size=b, seq_len=s, r=r, attn_implementation=attn)
                for m, _, b, s, r in TABLE5 for meth in METHODS]
    if experiment == "fig2a":  # LoRA-FA alone and with FlashAttention, QLoRA (NF4) or ZeRO-3 over 8 GPUs
        variants = (dict(), dict(attn_implementation="sdpa"), dict(quantization="nf4"), dict(zero_shards=8))
        return [{**llama2, "method": "lora_fa", "batch_size": b, **v} for v in variants for b in BATCHES]
    if experiment == "fig2b":  # number of adapted linear layers (of 224), batch 8, on an A100 40GB
        return [{**llama2, "method": meth, "batch_size": 8, "num_adapted_layers": n, "capacity_bytes": A100_40GB}
                for meth in ("lora", "lora_fa") for n in (28, 56, 84, 112, 140, 168, 196, 224)]
    if experiment == "fig2c":  # rank 1..128, LLaMA-7B, batch 32, source/target length 128
        return [dict(model="llama-7b", method=meth, batch_size=32, seq_len=128, r=r, attn_implementation=attn)
                for meth in ("lora", "lora_fa") for r in (1, 2, 4, 8, 16, 32, 64, 128)]
    if experiment == "fig3":  # the breakdown at batch 16
        return [{**llama2, "method": meth, "batch_size": 16} for meth in ("lora", "lora_fa")]
    if experiment == "fig5":  # LoRA, LoRA-FA, LoRA-FA + FlashAttention over batch size
        return [{**llama2, "method": meth, "batch_size": b, **v}
                for meth, v in (("lora", {}), ("lora_fa", {}), ("lora_fa", {"attn_implementation": "sdpa"}))
                for b in BATCHES]
    raise ValueError(f"experiment={experiment!r} is invalid; allowed: {', '.join(EXPERIMENTS)}, all")


EXPERIMENTS = ("table5", "fig2a", "fig2b", "fig2c", "fig3", "fig5")


def run_point(point: dict, experiment: str, out: Path, backend: str, scale: str = "paper", force: bool = False):
    """Measure one point and write its record; reuse a finished record with the same config."""
    kwargs = {"capacity_bytes": A100_80GB, **point}
    digest = config_hash({"experiment": experiment, "backend": backend, **kwargs})
    if not force:
        done = find_finished(out, digest)
        if done is not None:
            return done
    res = measure_peak_memory(backend=backend, **kwargs)
    name = "-".join(str(v) for v in (experiment, point["model"], point["method"], f"b{point['batch_size']}",
                                    f"s{point['seq_len']}", f"r{point.get('r', 8)}", digest))
    record = res.to_record(run_id=name, experiment=f"memory/{experiment}", scale=scale, config_hash=digest,
                           device="simulated (fake tensors)" if backend == "simulate" else "cuda")
    # A record's status is always written; a simulated OOM is a result, not a failure.
    write_record(record, out)
    return record


def table5_markdown(records: dict) -> str:
    from analysis.paper_values import TABLE5 as PAPER

    rows = ["| Model | Method | Rank | batch | seq | Simulated (GB) | Paper (GB) |", "|---|---|---|---|---|---|---|"]
    for m, label, b, s, r in TABLE5:
        for meth in METHODS:
            rec = records.get((m, meth))
            sim = "-" if rec is None else f"{rec.peak_memory_bytes / GB:.1f}" + (" (OOM)" if rec.status == "oom" else "")
            paper = PAPER[(label, meth)][1]
            rows.append(f"| {label} | {meth} | {'-' if meth == 'full_ft' else r} | {b} | {s} | {sim} | "
                        f"{'OOM' if paper is None else paper} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=EXPERIMENTS + ("all",))
    parser.add_argument("--out", type=Path, default=None, help="results root (default: results/paper)")
    parser.add_argument("--backend", choices=("simulate", "cuda"), default="simulate")
    parser.add_argument("--attn", choices=("eager", "sdpa"), default="eager",
                        help="baseline attention implementation (default: eager, the paper's)")
    parser.add_argument("--models", nargs="*", default=None, help="restrict to these conf/model names")
    parser.add_argument("--force", action="store_true", help="recompute points that already have a record")
    args = parser.parse_args(argv)
    out = args.out or results_dir() / "paper"
    experiments = EXPERIMENTS if args.experiment == "all" else (args.experiment,)
    for exp in experiments:
        todo = [p for p in points(exp, args.attn) if not args.models or p["model"] in args.models]
        records = {}
        for point in tqdm(todo, desc=exp, unit="point"):
            rec = run_point(point, exp, out, args.backend, force=args.force)
            records[(point["model"], point["method"])] = rec
            tqdm.write(f"{exp}: {point['model']} {point['method']} b={point['batch_size']} "
                       f"{ {k: v for k, v in point.items() if k not in ('model', 'method', 'batch_size')} } "
                       f"-> {rec.peak_memory_bytes / GB:.2f} GB ({rec.status})")
        if exp == "table5":
            print(table5_markdown(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
