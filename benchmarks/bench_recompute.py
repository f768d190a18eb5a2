"""The cost of selective recomputation: one training step with and without it, same run.

    python benchmarks/bench_recompute.py             # RoBERTa-base, CPU, fp32
    python benchmarks/bench_recompute.py --device cuda --dtype bfloat16 --models roberta-base llama-7b-2layers

For each model x method: the bytes kept for backward (activation_report) and the median time
of forward + backward + an AdamW step, with the option off and on, on the same weights and
batch. Steps alternate between the two models so that machine noise hits both alike; compare
the ratio (on / off), not the absolute times. Writes results/bench/recompute.csv, prints a table.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm

from lorafa import AdapterConfig, activation_report, add_adapters
from lorafa.models import build_model, load_model_spec
from lorafa.paths import results_dir
from lorafa.recompute import enable_selective_recompute

# name -> (conf/model name, architecture overrides, batch, sequence): RoBERTa-base at full size;
# LLaMA-7B's layer shape with 2 layers (its full fine-tuning needs ~20 GB: a GPU's job).
MODELS = {"roberta-base": ("roberta-base", {}, 8, 128),
          "llama-7b-2layers": ("llama-7b", {"num_hidden_layers": 2}, 2, 512)}
METHODS = ("full_ft", "lora", "lora_fa")


def build(name: str, method: str, dtype: torch.dtype, device: str):
    model_name, arch, batch, seq = MODELS[name]
    spec = load_model_spec(model_name)
    spec = dataclasses.replace(spec, arch={**spec.arch, **arch})
    torch.manual_seed(0)
    model = build_model(spec, device=device, dtype=str(dtype).replace("torch.", ""), attn_implementation="sdpa")
    r = 64 if spec.family == "causal" else 8
    cfg = AdapterConfig(method="full_ft") if method == "full_ft" else AdapterConfig(
        method=method, r=r, alpha=2 * r, dropout=0.1, adapter_dtype=str(dtype).replace("torch.", ""))
    add_adapters(model, cfg)
    model.config.use_cache = False
    ids = torch.randint(3, 1000, (batch, seq), device=device)
    labels = torch.zeros(batch, dtype=torch.long, device=device) if spec.family == "encoder" else ids
    return model.train(), {"input_ids": ids, "labels": labels}


def step_times(models: dict, inputs: dict, reps: int, sync) -> dict:
    optims = {k: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-6) for k, m in models.items()}
    times = {k: [] for k in models}
    for i in range(reps + 2):
        for key, model in models.items():
            sync()
            t0 = time.perf_counter()
            model(**inputs).loss.backward()
            optims[key].step()
            optims[key].zero_grad(set_to_none=True)
            sync()
            if i >= 2:  # two warm-up steps
                times[key].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--models", nargs="+", default=["roberta-base"], choices=list(MODELS))
    ap.add_argument("--out", default=str(results_dir() / "bench" / "recompute.csv"))
    args = ap.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    rows = []
    for name in tqdm(args.models, desc="models"):
        for method in METHODS:
            off, inputs = build(name, method, dtype, args.device)
            on = copy.deepcopy(off)
            enable_selective_recompute(on)
            kept = {k: activation_report(m, **inputs).total_bytes for k, m in (("off", off), ("on", on))}
            t = step_times({"off": off, "on": on}, inputs, args.reps, sync)
            rows.append({"model": name, "method": method, "device": args.device, "dtype": args.dtype,
                         "batch": inputs["input_ids"].shape[0], "seq": inputs["input_ids"].shape[1],
                         "kept_off_mib": round(kept["off"] / 2**20, 2), "kept_on_mib": round(kept["on"] / 2**20, 2),
                         "step_off_s": round(t["off"], 4), "step_on_s": round(t["on"], 4),
                         "time_on_over_off": round(t["on"] / t["off"], 3)})
            del off, on
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"{'model':<18} {'method':<8} {'kept off':>10} {'kept on':>10} {'step off':>9} {'step on':>9} {'on/off':>7}")
    for r in rows:
        print(f"{r['model']:<18} {r['method']:<8} {r['kept_off_mib']:>8.1f}Mi {r['kept_on_mib']:>8.1f}Mi "
              f"{r['step_off_s']:>8.3f}s {r['step_on_s']:>8.3f}s {r['time_on_over_off']:>7.3f}")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
