"""Does the number of torch threads change a result? The same run at 1 and 2 threads, compared.

    python benchmarks/check_threads.py                       # MRPC LoRA, lr 1e-3, seed 0 (small scale)
    python benchmarks/check_threads.py task=glue/sst2 method=lora_fa

`make small ... WORKERS=2` runs two one-thread jobs side by side where `WORKERS=1` runs one
two-thread job: faster on 2 cores, and only acceptable if a run's result does not depend on its
thread count beyond float rounding. Each thread count runs in its own results root under
--root (a finished record there is reused, so a rerun only compares), through experiments/run.py
as a suite job would. Writes results/bench/threads.{csv,md}: every metric at each thread count
and their largest relative difference.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from lorafa.paths import REPO_ROOT, results_dir
from lorafa.results import write_benchmark

DEFAULT_JOB = ["experiment=small/grids/table2", "task=glue/mrpc", "method=lora", "trainer.lr=0.001"]


def run_at(threads: int, job: list[str], root: Path) -> dict:
    """The job's record, trained at `threads` torch threads in its own results root."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               LORAFA_RESULTS_DIR=str(root / f"threads{threads}"), HF_HUB_OFFLINE="1", WANDB_MODE="offline")
    subprocess.run([sys.executable, str(REPO_ROOT / "experiments" / "run.py"), *job], env=env, check=True)
    records = sorted((root / f"threads{threads}").glob("*/runs/*/record.json"), key=os.path.getmtime)
    if not records:
        raise SystemExit(f"no record from the run at {threads} thread(s) under {root}")
    return json.loads(records[-1].read_text())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("job", nargs="*", help="Hydra overrides of the run (default: MRPC LoRA at lr 1e-3)")
    ap.add_argument("--root", type=Path, default=Path("/tmp/lorafa-threads"), help="where the two runs' results go")
    args = ap.parse_args(argv)
    job = args.job or DEFAULT_JOB
    one, two = (run_at(t, job, args.root) for t in (1, 2))
    if one["config_hash"] != two["config_hash"]:
        raise SystemExit("the two runs' configs differ: not the same run")
    metrics = [k for k, v in one["metrics"].items() if isinstance(v, float)]
    rows = [{"run_id": one["run_id"], "metric": k, "threads_1": one["metrics"][k], "threads_2": two["metrics"][k],
             "rel_diff": abs(one["metrics"][k] - two["metrics"][k]) / max(abs(two["metrics"][k]), 1e-12)}
            for k in metrics]
    table = (f"# {one['run_id']}: 1 against 2 torch threads\n\n| metric | 1 thread | 2 threads | relative difference |\n"
             "|---|---|---|---|\n" + "".join(f"| {r['metric']} | {r['threads_1']:.7g} | {r['threads_2']:.7g} | "
                                              f"{r['rel_diff']:.1e} |\n" for r in rows))
    write_benchmark(rows, results_dir() / "bench" / "threads.csv", table)


if __name__ == "__main__":
    main()
