"""`make dry-run`: every paper experiment rehearsed on this machine, through the Hydra launcher.

    python experiments/dry_run.py                      # every paper experiment (make dry-run)
    python experiments/dry_run.py --only table3 fig6   # some of them

For each experiment of conf/experiment/ (the paper scale), one `experiments/run.py -m
experiment=NAME dry_run=true logger=wandb` sweep, with every sweep parameter that does not
change the code path (learning rate, seed, alpha, rank) cut to its first value: so each
distinct model x task x method point (x A's initialisation in Table 6) runs once, with
random weights of the real architecture, one optimizer step and a handful of evaluations.
Then each memory sweep of conf/memory/experiment/ as `experiments/memory.py -m
experiment=NAME backend=cuda dry_run=true`: the GPU meter's step, on the CPU, once per model x
method x optimisation (batch sizes, ranks and adapted-layer counts cut to their first value;
nf4 and ZeRO-3 are simulated only, so they have no GPU step to rehearse). lorafa/dryrun.py
says what changes. Records go to results/dry-run/ (never read by the analysis); each sweep's
output to results/dry-run/logs/NAME.log. Ends with a table: point, status, seconds, written
to results/dry-run/summary.csv (the wall time and the machine to timing.json); exits 1 if a
point failed for any reason other than data that is unavailable offline.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

from demo import cpu_model, sweep_jobs  # experiments/ is on the path of its own scripts

ROOT = Path(__file__).resolve().parent.parent

TRAINING = ("table2", "table2_large", "table3", "table3_base", "table3_large", "table4_base", "table4",
            "table6", "table7", "fig4", "fig6")
MEMORY = ("table5", "fig2a", "fig2b", "fig2c", "fig3", "fig5")
EXPERIMENTS = TRAINING + MEMORY
# Sweep keys whose values take different code; the others are cut to their first value.
CODE_PATH_KEYS = {"training": ("task", "method", "model", "init_a"),
                  "memory": ("model", "method", "optimisation", "selective_recompute", "dropout")}
SIMULATED_ONLY = ("qlora", "zero3")  # memory optimisations the GPU meter does not take
UNAVAILABLE = "data unavailable offline"


def kind(experiment: str) -> str:
    return "memory" if experiment in MEMORY else "training"


def _jobs(experiment: str) -> list[list[str]]:
    """The sweep's jobs, without the optimisations that have no GPU step to rehearse."""
    conf = ROOT / "conf" / ("memory" if kind(experiment) == "memory" else "")
    return [job for job in sweep_jobs(conf, experiment)
            if not any(o in (f"optimisation={s}" for s in SIMULATED_ONLY) for o in job)]


def reduced_overrides(experiment: str) -> list[str]:
    """`key=values` for each sweep key of the experiment: the code-path keys keep their values
    (less the simulated-only optimisations), the others their first; on the command line they
    replace the config's sweep lists (Hydra's basic sweeper)."""
    values: dict[str, list[str]] = {}
    for job in _jobs(experiment):
        for override in job[1:]:
            key, _, value = override.partition("=")
            values.setdefault(key, [])
            if value not in values[key]:
                values[key].append(value)
    keep = CODE_PATH_KEYS[kind(experiment)]
    return [f"{k}={','.join(v) if k in keep else v[0]}" for k, v in values.items()]


def distinct_points(experiment: str) -> int:
    keep = CODE_PATH_KEYS[kind(experiment)]
    return len({tuple(o for o in job[1:] if o.partition("=")[0] in keep) for job in _jobs(experiment)})


def run_sweep(experiment: str, root: Path, log: Path) -> float:
    """One experiment's dry sweep in its own process (as a user runs it); its wall time."""
    if kind(experiment) == "memory":
        cmd = [sys.executable, str(ROOT / "experiments" / "memory.py"), "-m", f"experiment={experiment}",
               "backend=cuda", "dry_run=true", f"results_dir={root}"]
    else:
        cmd = [sys.executable, str(ROOT / "experiments" / "run.py"), "-m", f"experiment={experiment}",
               "dry_run=true", "logger=wandb", f"results_dir={root}"]
    cmd += [*reduced_overrides(experiment), f"hydra.sweep.dir={root / 'multirun' / experiment}"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline", WANDB_SILENT="true")
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with log.open("w") as out:
        out.write(" ".join(cmd) + "\n")
        out.flush()
        subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    return time.perf_counter() - t0


def summary_rows(root: Path, experiments) -> list[dict]:
    """One row per dry-run record of these experiments: the point, its status and seconds."""
    from lorafa.results import load_records

    frame = load_records(root)
    rows = []
    for rec in frame.to_dict("records"):
        if rec["experiment"] not in experiments:
            continue
        error = str(rec.get("error") or "")
        status = rec["status"] if rec["status"] != "failed" or not error.startswith(UNAVAILABLE) else UNAVAILABLE
        config = rec.get("config") or {}
        if rec["experiment"] in MEMORY:
            opts = rec.get("options") or {}
            extras = [f"{k}={opts[k]}" for k in ("attn_implementation", "selective_recompute", "dropout")
                      if opts.get(k) not in (None, False, "eager", 0.0)]
            point = " ".join([rec["experiment"], rec["model"], rec["method"], "(memory)", *extras])
        else:
            point = f"{rec['experiment']} {rec['model']} {rec['task']} {rec['method']}"
            if rec["experiment"] == "table6":
                point += f" init_a={(config.get('method', {}).get('adapter') or {}).get('init_a')}"
        rows.append({"point": point, "status": status, "seconds": round(rec.get("wall_s") or 0, 1),
                     "error": "" if status in ("ok", UNAVAILABLE) else error.splitlines()[0][:160]})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=EXPERIMENTS, help="these experiments only")
    ap.add_argument("--results-dir", default=None, help="default: $LORAFA_RESULTS_DIR/dry-run or results/dry-run")
    ap.add_argument("--keep", action="store_true", help="keep earlier dry-run records (default: start afresh)")
    args = ap.parse_args(argv)
    from lorafa.paths import results_dir

    root = Path(args.results_dir) if args.results_dir else results_dir() / "dry-run"
    experiments = args.only or EXPERIMENTS
    if not args.keep:  # a rehearsal reruns everything: records of an older code path prove nothing
        for stale in ("runs", "runs.jsonl", "multirun", "logs", "wandb"):
            path = root / stale
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    total = sum(distinct_points(e) for e in experiments)
    print(f"[dry-run] {len(experiments)} experiments, {total} distinct points -> {root}")
    t0 = time.perf_counter()
    bar = tqdm(experiments, desc="dry run", unit="experiment")
    for experiment in bar:
        bar.set_postfix_str(f"{experiment} ({distinct_points(experiment)} points)")
        run_sweep(experiment, root, root / "logs" / f"{experiment}.log")
    wall = time.perf_counter() - t0
    names = {e.removesuffix("_large").removesuffix("_base") for e in experiments}
    rows = summary_rows(root, names)
    with (root / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["point", "status", "seconds", "error"])
        writer.writeheader()
        writer.writerows(rows)
    width = max([len(r["point"]) for r in rows] + [5])
    print(f"\n{'point':<{width}}  {'status':<24} {'seconds':>8}")
    for r in rows:
        print(f"{r['point']:<{width}}  {r['status']:<24} {r['seconds']:>8.1f}  {r['error']}")
    bad = [r for r in rows if r["status"] not in ("ok", UNAVAILABLE)]
    counts = {s: sum(r["status"] == s for r in rows) for s in dict.fromkeys(r["status"] for r in rows)}
    print(f"\n[dry-run] {len(rows)} of {total} points recorded: {counts}; wall {wall / 60:.1f} min; "
          f"-> {root / 'summary.csv'} (logs: {root / 'logs'})")
    timing = {"wall_s": round(wall, 1), "experiments": list(experiments), "points": total, **counts,
              "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": {"cpus": os.cpu_count(), "cpu": cpu_model(), "platform": platform.platform()}}
    (root / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")
    if len(rows) < total:
        print(f"[dry-run] {total - len(rows)} point(s) left no record: see the logs", file=sys.stderr)
    return 1 if bad or len(rows) < total else 0


if __name__ == "__main__":
    sys.exit(main())
