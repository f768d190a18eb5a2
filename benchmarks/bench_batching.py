"""How training batches are formed, and what it costs: step time and padded tokens per batching.

    python benchmarks/bench_batching.py                      # six GLUE tasks x LoRA, LoRA-FA x four batchings
    python benchmarks/bench_batching.py --tasks glue/mrpc --methods lora_fa --batchings grouped random

The same run of the small scale (its model, data, rate and batch of 16) trained for `steps`
optimizer steps under each batching, through the project's Trainer:

    grouped     transformers' length-grouped batches of 16 (the small scale's old default)
    random      random batches of 16, each padded to its longest example
    rebalance   random batches of 16 in 4 micro-batches of similar length (trainer.batch_rebalance)
    micro1      random batches of 16 in 16 micro-batches of one (no padding)

Only `grouped` changes which examples share a step; the other three train on the same random
batches with the same gradient (tests/test_pipeline.py), so between them only speed differs.
Reported: the median optimizer step (the first excluded) and the tokens fed per step, padding
included, beside the real ones. Writes results/bench/batching.csv and batching.md.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from tqdm import tqdm

from lorafa import training
from lorafa.paths import REPO_ROOT, results_dir
from lorafa.recipe import FinetuneRecipe
from lorafa.results import write_benchmark
from lorafa.spec import RunSpec

# conf/ uses these interpolations; experiments/run.py registers the same for its scripts
OmegaConf.register_new_resolver("mul", lambda a, b: a * b, replace=True)
OmegaConf.register_new_resolver("coalesce", lambda value, default: default if value is None else value, replace=True)

BATCHINGS = {  # trainer overrides; the optimizer batch is 16 in each
    "grouped": ["trainer.batch_size=16", "trainer.grad_accum=1", "trainer.group_by_length=true",
                "trainer.batch_rebalance=false"],
    "random": ["trainer.batch_size=16", "trainer.grad_accum=1", "trainer.group_by_length=false",
               "trainer.batch_rebalance=false"],
    "rebalance": ["trainer.batch_size=4", "trainer.grad_accum=4", "trainer.group_by_length=false",
                  "trainer.batch_rebalance=true"],
    "micro1": ["trainer.batch_size=1", "trainer.grad_accum=16", "trainer.group_by_length=false",
               "trainer.batch_rebalance=false"],
}


def spec_for(experiment: str, task: str, method: str, steps: int, overrides: list[str]) -> RunSpec:
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={experiment}", f"task={task}", f"method={method}",
                                           f"trainer.max_steps={steps}", "trainer.eval_steps=null", "logger=none",
                                           *overrides])
    return RunSpec.from_config(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))


def measure(spec, steps: int) -> dict:
    """Train `steps` optimizer steps; the median step and the tokens fed per step."""
    with tempfile.TemporaryDirectory() as work:
        recipe = FinetuneRecipe(spec, Path(work))
        recipe.setup_data()
        recipe.setup_model()
        trainer, monitors = training.build_trainer(recipe.model, recipe.tokenizer, spec.trainer, recipe.prepared,
                                                   work, "bench")
        fed = real = 0
        for i, batch in enumerate(trainer.get_train_dataloader()):
            if i >= steps * spec.trainer.grad_accum:
                break
            fed += batch["input_ids"].numel()
            real += int(batch["attention_mask"].sum())
        trainer.train()
    return {"step_s": round(monitors.timer.median(), 4), "tokens_fed_per_step": round(fed / steps, 1),
            "real_tokens_per_step": round(real / steps, 1)}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+",
                    default=["glue/sst2", "glue/cola", "glue/mrpc", "glue/stsb", "glue/qnli", "glue/rte"])
    ap.add_argument("--methods", nargs="+", default=["lora", "lora_fa"])
    ap.add_argument("--experiment", default="small/table2")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batchings", nargs="+", default=list(BATCHINGS), choices=list(BATCHINGS))
    ap.add_argument("--extra", nargs="*", default=[], help="more Hydra overrides (tests: a tiny model)")
    ap.add_argument("--out", type=Path, default=results_dir() / "bench" / "batching.csv")
    args = ap.parse_args(argv)

    rows = []
    grid = [(t, m, b) for t in args.tasks for m in args.methods for b in args.batchings]
    for task, method, batching in tqdm(grid, desc="batching benchmark", unit="point"):
        spec = spec_for(args.experiment, task, method, args.steps, BATCHINGS[batching] + args.extra)
        rows.append({"task": task, "batching": batching, "method": method, "model": spec.model.name,
                     "steps": args.steps, **measure(spec, args.steps)})
    for row in rows:
        base = [r for r in rows if (r["task"], r["method"], r["batching"]) == (row["task"], row["method"], "random")]
        row["step_vs_random"] = round(row["step_s"] / base[0]["step_s"], 3) if base else None
    write_benchmark(rows, args.out, markdown(rows))
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [f"{rows[0]['model']}, optimizer batch 16, {rows[0]['steps']} steps "
             "(python benchmarks/bench_batching.py)", "",
             "| task | method | batching | s/step | / random | tokens fed/step | real tokens/step |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "" if r["step_vs_random"] is None else f"{r['step_vs_random']:.2f}"
        lines.append(f"| {r['task']} | {r['method']} | {r['batching']} | {r['step_s']:.3f} | {ratio} "
                     f"| {r['tokens_fed_per_step']:,.0f} | {r['real_tokens_per_step']:,.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
