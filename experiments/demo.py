"""`make demo` (--scale mini), `make small` (--scale small) and `make small-llm` (--scale small
--suite small-llm): a suite of a scale's sweeps on a CPU, offline.

1. mini: the tiny pretrained base models (committed; pretrained here only if missing),
2. every sweep of the scale's suite, conf/experiment/<scale>/ (finished runs are skipped),
3. mini: the paper-scale memory results by simulation (conf/memory/experiment/),
4. every table and figure into results/<scale>/, then a short summary; the wall time is kept
   in results/mini/demo_timing.json or results/small/timing.json.

Sweeps are expanded as Hydra's basic sweeper expands them (the same jobs in the same order)
and run in this one process, so a rerun with everything finished takes seconds and one
progress bar covers the whole demo.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import NamedTuple

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the demo never reaches the hub

# Each suite's sweeps (conf/experiment/<scale>/), in order; a suite is its scale's unless named
# otherwise. Figure 4's curves come from Table 2's periodic evaluations. small: Table 2 on MiniLM
# at each cell's chosen rate (small/table2's chosen_lr) with its seeds; small-grids: the rate grids
# it was chosen from, and Tables 6, 7 and Figure 6, which are grids; small-llm: Table 4 on
# SmolLM2-135M (the base model first); small-llm-seeds: its seeds 1 and 2 for LoRA and LoRA-FA on
# flan_cot, apart because with them the suite takes about 3.5 hours on 2 cores.
SUITES = {
    "mini": ("table2", "table3", "table4_base", "table4", "table6", "table7", "fig6"),
    "small": ("table2", "table2_seeds"),
    "small-llm": ("table4_base", "table4"),
    "small-llm-seeds": ("table4_seeds",),
    # the learning-rate grids behind Table 2's small-scale cells and Tables 6, 7 and Figure 6
    "small-grids": ("grids/table2", "grids/table2_full_ft", "grids/table6", "grids/table7", "grids/fig6"),
}
TIMING_FILES = {"mini": "demo_timing.json", "small": "timing.json"}
MEMORY = ("table5", "fig2a", "fig2b", "fig2c", "fig3", "fig5")
BASE_MODELS = ("tiny-roberta", "tiny-t5", "tiny-llama")


def sweep_jobs(config_dir: Path, experiment: str) -> list[list[str]]:
    """The override lists of every job of an experiment's sweep (``hydra.sweeper.params``).

    The jobs and their order are those of ``run.py -m experiment=...``: the cartesian product
    of the params in the order they are written, the last one varying fastest.
    """
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.get("params") or {}
    overrides = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    return [[f"experiment={experiment}", *job] for job in itertools.product(*map(_choices, overrides))]


def _choices(override: Override) -> list[str]:
    """``key=value`` for each value of a ``key=a,b,c`` sweep (one for a plain override)."""
    key = override.get_key_element()
    if not override.is_sweep_override():
        return [f"{key}={override.get_value_element_as_str()}"]
    if not override.is_discrete_sweep():
        raise ValueError(f"{key}: only discrete sweeps (a,b,c or range) expand here, as in Hydra's basic sweeper")
    return [f"{key}={value}" for value in override.sweep_string_iterator()]


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


def share_cores(background: subprocess.Popen | None) -> int:
    """Torch threads for the next run: one core left to the background simulation while it runs.

    Two processes each asking for every core oversubscribe the machine: on 2 cores a tiny run
    beside the simulator took 4x as long as alone, more than the two run one after the other.
    """
    import torch

    cores = os.cpu_count() or 1
    threads = max(1, cores - 1) if background is not None and background.poll() is None else cores
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def run_training_sweeps(results_root: Path, background: subprocess.Popen | None = None, scale: str = "mini",
                        counts: dict | None = None, suite: str | None = None, workers: int = 1) -> dict:
    """Every job of the scale's suite, in order; `counts` (jobs, trained, skipped: finished before
    it reached them, copied: another sweep's run, failed) is
    updated as they go, so that an interrupted suite still reports its part. workers > 1 runs
    the unfinished jobs in that many processes at once (run_in_workers)."""
    import run as run_cli

    from lorafa.recipe import EXIT_PREEMPTED
    from lorafa.recipe import run as run_one
    from lorafa.runner import RunInterrupted
    from lorafa.results import config_hash, find_finished

    conf = ROOT / "conf"
    jobs = [job for exp in SUITES[suite or scale] for job in sweep_jobs(conf, f"{scale}/{exp}")]
    counts = counts if counts is not None else {"trained": 0, "skipped": 0, "copied": 0, "failed": 0}
    counts["jobs"] = len(jobs)
    bar = tqdm(total=len(jobs), desc=f"{suite or scale} sweeps", unit="run")
    pending = []
    for overrides in jobs:
        spec = run_cli.to_spec(compose_job(conf, [*overrides, f"results_dir={results_root}"]))
        digest = config_hash(spec.config())
        if find_finished(results_root, digest):
            counts["skipped"] += 1
            bar.update(1)
            continue
        if workers > 1:
            config = {k: v for k, v in spec.config().items() if k != "experiment"}
            pending.append(Job(overrides, digest, spec.run_id(digest), config_hash(config)))
            continue
        bar.set_postfix_str(f"{spec.experiment} {spec.task} {spec.method.name}")
        try:
            share_cores(background)
            record = run_one(spec)
            # a configuration another sweep already ran is not trained again (lorafa.runner)
            outcome = "copied" if record.options.get("same_run_as") else "trained"
            counts[outcome] = counts.get(outcome, 0) + 1
        except RunInterrupted as stop:  # SIGTERM during a training: it checkpointed; the suite stops here
            raise SystemExit(EXIT_PREEMPTED) from stop
        except FileNotFoundError as err:  # MNLI and QQP: not in ../shared/data, no hub here
            counts["unavailable"] = counts.get("unavailable", 0) + 1
            tqdm.write(f"[demo] data unavailable offline: {spec.task} ({str(err).splitlines()[0][:120]})")
        except Exception:  # noqa: BLE001 - one broken run must not stop the demo; its record says why
            counts["failed"] += 1
            tqdm.write(f"[demo] run failed: {' '.join(overrides)}\n{traceback.format_exc(limit=3)}")
        bar.update(1)
    if pending:
        run_in_workers(pending, results_root, workers, counts, bar)
    bar.close()
    return counts


class Job(NamedTuple):
    """One unfinished job of a suite."""
    overrides: list[str]
    digest: str   # its config hash
    run_id: str
    same: str     # the hash of its config without the experiment's name (lorafa.results.find_same_run)


def run_in_workers(pending: list[Job], results_root: Path, workers: int, counts: dict, bar) -> None:
    """Each job as its own `experiments/run.py` process, `workers` at a time, each on
    cores // workers torch threads, its output in <results>/logs/<run_id>.log.

    Why processes: on 2 cores, two one-thread MiniLM runs side by side go 1.19x (MRPC) to 1.33x
    (SST-2) faster in all than one two-thread run (small matrices use two threads poorly), and a
    run's memory goes back to the OS with its process. Starting Python, torch and transformers
    costs seconds a run, so the mini demo's short runs stay in one process (workers=1).
    A SIGTERM to the suite reaches every running job, which checkpoints if it is training.
    """
    from lorafa.recipe import EXIT_PREEMPTED
    from lorafa.results import find_finished

    threads = str(max(1, (os.cpu_count() or 1) // workers))
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, PYTHONUNBUFFERED="1")
    logs = results_root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    queue, running = list(pending), {}
    try:
        while queue or running:
            while len(running) < workers:
                # a run another sweep shares (Table 6's default point is Table 7's) waits for it, to be copied
                busy = {j.same for j, _ in running.values()}
                job = next((j for j in queue if j.same not in busy), None)
                if job is None:
                    break
                queue.remove(job)
                log = open(logs / f"{job.run_id}.log", "w", encoding="utf-8")
                cmd = [sys.executable, str(ROOT / "experiments" / "run.py"), *job.overrides,
                       f"results_dir={results_root}", f"hydra.run.dir={logs / job.run_id}"]
                running[subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)] = (job, log)
            bar.set_postfix_str(", ".join(j.run_id.split("__s")[0] for j, _ in running.values()))
            time.sleep(0.5)
            for proc in [p for p in running if p.poll() is not None]:
                job, log = running.pop(proc)
                log.close()
                outcome = job_outcome(proc.returncode, find_finished(results_root, job.digest, statuses=STATUSES))
                if outcome == "interrupted":
                    raise SystemExit(EXIT_PREEMPTED)
                counts[outcome] = counts.get(outcome, 0) + 1
                if outcome in ("failed", "unavailable"):
                    tqdm.write(f"[demo] {outcome}: {' '.join(job.overrides)} (log: {logs / job.run_id}.log)")
                bar.update(1)
    except BaseException:
        for proc in running:  # each checkpoints (training) or stops; the rerun resumes them
            proc.send_signal(signal.SIGTERM)
        for proc, (_, log) in running.items():
            proc.wait()
            log.close()
        raise


STATUSES = ("ok", "diverged", "oom", "failed")


def job_outcome(returncode: int, record) -> str:
    """What a finished run.py process did: trained, copied (another sweep's run), unavailable
    (its data is not offline), failed, or interrupted (SIGTERM, checkpointed, no record)."""
    from lorafa.recipe import EXIT_PREEMPTED

    if returncode == EXIT_PREEMPTED:
        return "interrupted"
    if record is None:
        return "failed"  # no record at all: a config or start-up error (its log says which)
    if record.status == "failed":
        return "unavailable" if (record.error or "").startswith("data unavailable offline") else "failed"
    return "copied" if record.options.get("same_run_as") else "trained"


def start_memory_simulations(results_root: Path) -> tuple[subprocess.Popen, Path]:
    """The paper-scale memory sweeps, simulated in a second process beside the training.

    The simulator is single-threaded; while it runs the trainings get the other cores
    (share_cores), so the two side by side shorten the demo by minutes.
    """
    log = results_root / "memory_simulation.log"
    results_root.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(ROOT / "experiments" / "memory.py"), "-m", f"experiment={','.join(MEMORY)}",
           "backend=simulate", f"results_dir={results_root}"]
    print(f"[demo] paper-scale memory by simulation in the background: {' '.join(cmd[1:])} (log: {log})")
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT), log


def finish_memory_simulations(proc: subprocess.Popen, log: Path) -> None:
    with tqdm(desc="memory simulation (waiting)", bar_format="{desc}: {elapsed}") as bar:
        while proc.poll() is None:
            time.sleep(1)
            bar.update(0)
    if proc.returncode != 0:
        print(log.read_text()[-3000:])
        raise SystemExit(f"[demo] memory simulation failed (exit {proc.returncode}); see {log}")
    print(f"[demo] memory simulation done ({log})")


def build_outputs(scale: str) -> None:
    """Every table and figure, as `make tables figures` builds them (analysis/ is not installed)."""
    for module in ("analysis.tables", "analysis.figures"):
        subprocess.run([sys.executable, "-m", module, "--scale", scale], cwd=ROOT, check=True)


def _headlines(results_root: Path) -> list[str]:
    """A few numbers worth seeing at once: Table 2 per method, Table 5's LLaMA-7B."""
    import pandas as pd

    from lorafa.results import load_records

    lines = []
    t2 = results_root / "tables" / "table2.csv"
    if t2.is_file():
        df = pd.read_csv(t2)
        tasks = df[~df["column"].isin(["# TPs (M)", "Avg."]) & df["ours"].notna()]
        tasks = tasks[tasks["model"] == tasks["model"].iloc[0]] if len(tasks) else tasks  # the base-sized model
        model = tasks["model"].iloc[0] if len(tasks) else ""
        for column in ("SST-2",):
            rows = tasks[tasks["column"] == column]
            lines.append(f"  Table 2 ({model}) {column}: " + ", ".join(f"{r.method} {r.ours:.1f}" for r in rows.itertuples()))
        means = tasks.groupby("method")["ours"].agg(["mean", "count"])
        lines.append(f"  Table 2 ({model}) mean over the tasks run offline: "
                     + ", ".join(f"{m} {row['mean']:.1f} ({int(row['count'])} tasks)" for m, row in means.iterrows()))
    records = load_records(results_root)
    llama = records[(records["experiment"] == "table5") & (records["model"] == "llama-7b")]
    recompute = llama["options"].map(lambda o: bool((o or {}).get("selective_recompute")))
    for flag, label in ((False, "without recomputation"), (True, "with selective recomputation")):
        rows = llama[recompute == flag]
        if rows.empty:
            continue
        cells = ", ".join(f"{r.method} {r.peak_memory_bytes / 2**30:.1f} GiB{' (> 80 GB: OOM)' if r.status == 'oom' else ''}"
                          for r in rows.itertuples())
        lines.append(f"  Table 5 (simulated, batch 16, seq 1024) LLaMA-7B {label}: {cells}"
                     + ("; paper: OOM / 76.74 / 61.49 GB" if flag else ""))
    return lines


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def peak_rss_mib() -> dict:
    """Peak resident memory of this process (every run of the suite is in it) and of the largest
    child (the memory simulation), in MiB: how far the in-process runs let it grow."""
    import resource

    kib = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
           "peak_rss_child_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}  # Linux: KiB
    return {k: round(v / 1024, 1) for k, v in kib.items()}


def suite_wall(runs: list[dict], suite: str) -> dict:
    """A suite's wall time from its last fresh start (the segment that found none of its runs
    finished) through the segments that resumed it: what the suite took from an empty results root."""
    mine = [r for r in runs if r.get("suite") == suite]
    fresh = [i for i, r in enumerate(mine) if r.get("skipped") == 0 and r.get("trained", 0) > 0]
    if not fresh:
        return {}
    segments = mine[fresh[-1]:]
    done = [i for i, r in enumerate(segments) if not r.get("interrupted", False)]
    segments = segments[:done[0] + 1] if done else segments  # later reruns found it finished
    return {"wall_s": round(sum(r["wall_s"] for r in segments), 1), "segments": len(segments),
            "finished": not segments[-1].get("interrupted", False)}


def summary(results_root: Path, wall_s: float, counts: dict, scale: str = "mini", suite: str | None = None) -> dict:
    done = "stopped (rerun to go on) after" if counts.get("interrupted") else "done in"
    lines = [f"\n[demo] {done} {wall_s / 60:.1f} min: {counts['trained']} runs trained, "
             f"{counts['skipped']} already finished, {counts.get('copied', 0)} copied from another sweep's run, "
             f"{counts.get('unavailable', 0)} with data unavailable offline, "
             f"{counts['failed']} failed"]
    timing = {"wall_s": round(wall_s, 1), "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": {"cpus": os.cpu_count(), "cpu": cpu_model(), "platform": platform.platform(),
                          "python": platform.python_version()},
              **peak_rss_mib(),
              "suite": suite or scale, **counts}
    path = results_root / TIMING_FILES[scale]  # every run of the suite is kept: a fresh one and the reruns
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = json.loads(path.read_text()) if path.is_file() else {}  # notes beside "runs" (suite_wall_s) stay
    kept["runs"] = kept.get("runs", []) + [timing]
    total = suite_wall(kept["runs"], timing["suite"])
    if total:
        kept.setdefault("suites", {})[timing["suite"]] = total
        if total["segments"] > 1:
            lines.append(f"  from its fresh start: {total['wall_s'] / 60:.1f} min over {total['segments']} segments"
                         + ("" if total["finished"] else " so far"))
    path.write_text(json.dumps(kept, indent=2) + "\n")
    lines += _headlines(results_root)
    lines.append(f"  tables:  {results_root / 'tables'}")
    lines.append(f"  figures: {results_root / 'figures'}")
    print("\n".join(lines))
    return timing


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", choices=sorted(TIMING_FILES), default="mini", help="the scale (default mini)")
    ap.add_argument("--suite", choices=sorted(SUITES), default=None, help="which of its suites (default: the scale's)")
    ap.add_argument("--skip-memory", action="store_true", help="leave out the memory simulations (mini)")
    ap.add_argument("--workers", type=int, default=1, help="runs at once, each in its own process on cores/workers "
                    "threads (default 1: every run in this process)")
    args = ap.parse_args(argv)
    if args.workers < 1:
        ap.error(f"--workers {args.workers}: at least 1")
    suite = args.suite or args.scale
    if not suite.startswith(args.scale):
        ap.error(f"--suite {suite} is not a suite of --scale {args.scale}")
    from lorafa.paths import results_dir

    root = results_dir() / args.scale
    t0 = time.perf_counter()
    mini = args.scale == "mini"
    if mini:
        ensure_base_models()
    memory = start_memory_simulations(root) if mini and not args.skip_memory else None
    counts = {"jobs": 0, "trained": 0, "skipped": 0, "copied": 0, "failed": 0}
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # (a training run checkpoints on it first)
    try:
        counts = run_training_sweeps(root, memory[0] if memory else None, args.scale, counts, suite, args.workers)
    except (KeyboardInterrupt, SystemExit):
        # A long suite stopped part-way still says how long its part took: a fresh suite's wall
        # time is the sum over the invocations that finished it (finished runs are kept).
        summary(root, time.perf_counter() - t0, dict(counts, interrupted=True), args.scale, suite)
        raise
    if memory:
        finish_memory_simulations(*memory)
    build_outputs(args.scale)
    summary(root, time.perf_counter() - t0, counts, args.scale, suite)


if __name__ == "__main__":
    main()
