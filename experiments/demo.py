"""`make demo`: the whole paper in miniature on a CPU, offline.

1. the tiny pretrained base models (committed; pretrained here only if missing),
2. every mini sweep of conf/experiment/mini/ (finished runs are skipped),
3. the paper-scale memory results by simulation (conf/memory/experiment/),
4. every table and figure into results/mini/, then a short summary.

Sweeps are expanded with Hydra's own sweeper logic and run in this one process, so a
rerun with everything finished takes seconds and one progress bar covers the whole demo.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the demo never reaches the hub

from hydra import compose, initialize_config_dir  # noqa: E402
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # noqa: E402
from hydra.core.override_parser.overrides_parser import OverridesParser  # noqa: E402
from tqdm import tqdm  # noqa: E402

TRAINING = ("table2", "table3", "table4_base", "table4", "table6", "table7", "fig4", "fig6")
MEMORY = ("table5", "fig2a", "fig2b", "fig2c", "fig3", "fig5")
BASE_MODELS = ("tiny-roberta", "tiny-t5", "tiny-llama")


def sweep_jobs(config_dir: Path, experiment: str) -> list[list[str]]:
    """The override lists of every job of an experiment's sweep, as Hydra's BasicSweeper expands them."""
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.get("params") or {}
    overrides = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    batches = BasicSweeper.split_arguments(overrides, None) if overrides else [[[]]]
    return [[f"experiment={experiment}", *job] for batch in batches for job in batch]


def compose_job(config_dir: Path, overrides: list[str]):
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return compose("config", overrides=overrides)


def ensure_base_models() -> None:
    missing = [m for m in BASE_MODELS if not (ROOT / "models" / m / "config.json").is_file()]
    if missing:
        print(f"[demo] pretraining missing base models {missing} (committed ones are reused)")
        for name in missing:
            subprocess.run([sys.executable, str(ROOT / "experiments" / "pretrain_tiny.py"), "--model", name],
                           check=True)


def run_training_sweeps(results_root: Path) -> dict:
    import run as run_cli

    from lorafa.experiment import run as run_one
    from lorafa.results import config_hash, find_finished

    conf = ROOT / "conf"
    jobs = [job for exp in TRAINING for job in sweep_jobs(conf, f"mini/{exp}")]
    counts = {"jobs": len(jobs), "trained": 0, "skipped": 0, "failed": 0}
    bar = tqdm(jobs, desc="mini sweeps", unit="run")
    for overrides in bar:
        spec = run_cli.to_spec(compose_job(conf, [*overrides, f"results_dir={results_root}"]))
        bar.set_postfix_str(f"{spec.experiment} {spec.task} {spec.method.name}")
        if find_finished(results_root, config_hash(spec.identity())):
            counts["skipped"] += 1
            continue
        try:
            run_one(spec)
            counts["trained"] += 1
        except Exception:  # noqa: BLE001 - one broken run must not stop the demo; its record says why
            counts["failed"] += 1
            tqdm.write(f"[demo] run failed: {' '.join(overrides)}\n{traceback.format_exc(limit=3)}")
    return counts


def run_memory_simulations(results_root: Path) -> None:
    env = dict(os.environ, LORAFA_RESULTS_DIR=str(results_root.parent))
    cmd = [sys.executable, str(ROOT / "experiments" / "memory.py"), "-m",
           f"experiment={','.join(MEMORY)}", "backend=simulate", f"results_dir={results_root}"]
    print("[demo] paper-scale memory by simulation:", " ".join(cmd[1:]))
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)


def build_outputs(scale: str) -> None:
    from analysis import figures, tables

    tables.main(["--scale", scale])
    figures.main(["--scale", scale])


def _headlines(results_root: Path) -> list[str]:
    """A few numbers worth seeing at once: Table 2's SST-2 and averages, Table 5's LLaMA-7B."""
    import pandas as pd

    lines = []
    t2 = results_root / "tables" / "table2.csv"
    if t2.is_file():
        df = pd.read_csv(t2)
        for column in ("SST-2", "Avg."):
            rows = df[(df["column"] == column) & df["ours"].notna()]
            cells = ", ".join(f"{r.method} {r.ours:.1f}" for r in rows.itertuples())
            lines.append(f"  Table 2 (tiny-roberta) {column}: {cells or 'no runs'}")
    t5 = results_root / "tables" / "table5.csv"
    if t5.is_file():
        df = pd.read_csv(t5)
        rows = df[df["model"].astype(str).str.startswith("llama")]
        show = lambda v, note: f"{v:.1f} GB" if pd.notna(v) else str(note)  # noqa: E731
        cells = ", ".join(f"{r.method} {show(r.ours, r.note)} (paper {show(r.paper, 'OOM')})" for r in rows.itertuples())
        lines.append(f"  Table 5 (simulated) LLaMA-7B: {cells}")
    return lines


def summary(results_root: Path, wall_s: float, counts: dict) -> dict:
    lines = [f"\n[demo] done in {wall_s / 60:.1f} min: {counts['trained']} runs trained, "
             f"{counts['skipped']} already finished, {counts['failed']} failed"]
    lines += _headlines(results_root)
    lines.append(f"  tables:  {results_root / 'tables'}")
    lines.append(f"  figures: {results_root / 'figures'}")
    print("\n".join(lines))
    timing = {"wall_s": round(wall_s, 1), "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
              **counts}
    (results_root / "demo_timing.json").write_text(json.dumps(timing, indent=2) + "\n")
    return timing


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-memory", action="store_true", help="leave out the memory simulations")
    args = ap.parse_args(argv)
    from lorafa.paths import results_dir

    root = results_dir() / "mini"
    t0 = time.perf_counter()
    ensure_base_models()
    counts = run_training_sweeps(root)
    if not args.skip_memory:
        run_memory_simulations(root)
    build_outputs("mini")
    summary(root, time.perf_counter() - t0, counts)


if __name__ == "__main__":
    main()
