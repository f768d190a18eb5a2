"""Table 5's memory points measured on one CUDA GPU, beside the simulator and the paper.

    python benchmarks/gpu_check.py                          # one CUDA GPU, a few minutes (make gpu-check)
    python benchmarks/gpu_check.py --points 'llama-7b/*'    # a subset: fnmatch patterns on the point names
    python benchmarks/gpu_check.py --rehearse --out /tmp/gc # every code path on a CPU, tiny shapes

Why: every paper-scale memory number this project reports comes from the fake-tensor simulator
(lorafa.memory.simulate). This is the one short run that checks it against a real allocator.
Each point is a lorafa.memory.point.MemoryPoint at conf/memory's Table 5 setting (the
experiment's per-model cell over conf/memory/config.yaml's defaults: dropout 0, alpha 4r, bf16
adapters on all linear layers): RoBERTa-base and T5-base (Full-FT, LoRA, LoRA-FA) and LLaMA-7B
(LoRA, LoRA-FA, each with and without selective recomputation), random weights.

measured: lorafa.memory.measure.measure with backend "cuda" (cuda_step: max_memory_allocated
around the second of two steps); simulated: the very same point with backend "simulate". An
out-of-memory error is a result (status "oom"): everything is freed and the next point runs.
Points that would start after --budget-s seconds are "skipped". Writes <out>/gpu_check.csv and
gpu_check.md (default results/gpu/; rewritten after every point, so a run cut short keeps what
it measured), with the device, torch, transformers and git commit on every row, and prints a table.

--rehearse runs the same code on the CPU: each point cut as lorafa.dryrun.rehearsal_point cuts
it (batch <= 2, sequence <= 64, LLaMA at 2 layers), measured by cuda_step's CPU accounting
(about 4 minutes on 2 cores). Its numbers check the script, not the simulator (default output:
results/gpu/rehearsal/).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import fnmatch
import gc
import os
import shlex
import sys
import time
import traceback
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from analysis import paper_values as P
from lorafa.memory.measure import measure
from lorafa.memory.point import MemoryPoint
from lorafa.paths import REPO_ROOT, results_dir
from lorafa.provenance import device_name, git_commit, git_dirty, package_versions, utc_now
from lorafa.validation import fail

CONF = REPO_ROOT / "conf" / "memory"
GIB = 2**30
LEAK_BYTES = 256 * 2**20  # left allocated after a point's cleanup: more than cuBLAS's workspace
# The point settings conf/memory/config.yaml gives every Table 5 point (table5.yaml sets the rest).
DEFAULT_KEYS = ("dropout", "alpha", "adapter_dtype", "target_modules", "gradient_checkpointing")
# (model, method, selective recomputation), in the order they run. LLaMA-7B last, and its point
# that fits (LoRA-FA with recomputation: 61 GiB simulated) first, before any OOM has run; the
# other three are simulated at 81, 85 and 105 GiB, above an 80 GB GPU: expected "oom".
POINT_KEYS = ([(m, method, False) for m in ("roberta-base", "t5-base") for method in ("full_ft", "lora", "lora_fa")]
              + [("llama-7b", method, recompute) for recompute in (True, False) for method in ("lora_fa", "lora")])
COLUMNS = ("point", "model", "method", "selective_recompute", "batch_size", "seq_len", "target_len", "r", "alpha",
           "dropout", "attn", "status", "measured_bytes", "simulated_bytes", "measured_over_simulated",
           "measured_gib", "simulated_gib", "paper_gb", "measured_gib_over_paper", "simulated_predicts",
           "measured_activation_bytes", "simulated_activation_bytes", "memory_source", "step_time_s",
           "measure_s", "simulate_s", "left_allocated_bytes", "note",
           "mode", "device", "torch", "transformers", "git_commit")  # the last five: provenance, on every row


# ---- the points ------------------------------------------------------------------------------

def table5_setting(model: str) -> dict:
    """conf/memory's Table 5 cell of `model` over the config's defaults: read from the YAML the
    simulated Table 5 is made from, so that the two always describe the same step."""
    base = OmegaConf.to_container(OmegaConf.load(CONF / "config.yaml"))
    cells = OmegaConf.to_container(OmegaConf.load(CONF / "experiment" / "table5.yaml"))["per_model"]
    if model not in cells:
        fail("model", model, ", ".join(cells))
    return {**{k: base[k] for k in DEFAULT_KEYS}, **cells[model]}


def point_name(model: str, method: str, recompute: bool) -> str:
    return f"{model}/{method}" + ("+recompute" if recompute else "")


def paper_points() -> list[tuple[str, MemoryPoint]]:
    """(name, point) of every point the check runs, at the paper's setting, backend simulate.
    capacity_gb None: the status comes from the device itself, not from an assumed 80 GB."""
    return [(point_name(model, method, rc),
             MemoryPoint(model=model, method=method, selective_recompute=rc, capacity_gb=None,
                         experiment="gpu_check", **table5_setting(model)))
            for model, method, rc in POINT_KEYS]


def select(points: list, patterns: list[str] | None) -> list:
    """The points whose name matches any of `patterns` (fnmatch), in the check's order."""
    if not patterns:
        return points
    names = [name for name, _ in points]
    for pattern in patterns:
        if not fnmatch.filter(names, pattern):
            fail("points", pattern, "fnmatch patterns of " + ", ".join(names))
    return [(name, p) for name, p in points if any(fnmatch.fnmatch(name, pat) for pat in patterns)]


def device_point(point: MemoryPoint, rehearse: bool) -> tuple[MemoryPoint, list[str]]:
    """The point as the meter runs it: backend cuda, or its CPU rehearsal (and what changed)."""
    if rehearse:
        from lorafa.dryrun import rehearsal_point

        rehearsal, notes = rehearsal_point(point)
        return dataclasses.replace(rehearsal, capacity_gb=None), notes
    return dataclasses.replace(point, backend="cuda"), []


# ---- one point -------------------------------------------------------------------------------

def is_oom(err: BaseException) -> bool:
    """torch's OutOfMemoryError, or a library's allocation failure that says the same."""
    return isinstance(err, torch.cuda.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and "out of memory" in str(err).lower())


def free_device() -> int:
    """Release what a point left: the model and its step live only in measure()'s frames, gone
    once the exception (whose traceback holds them) is dropped; gc.collect breaks their cycles,
    then the allocator's cache goes back to the device. Returns the bytes still allocated."""
    gc.collect()
    if not torch.cuda.is_available():
        return 0
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


def measure_on_device(point: MemoryPoint) -> dict:
    """One measured step; an OOM (or any failure) becomes the row's status, never an abort."""
    start = time.perf_counter()
    try:
        res = measure(point)
        out = {"status": "ok", "measured_bytes": res.peak_bytes, "step_time_s": res.step_time_s,
               "measured_activation_bytes": res.activation_bytes, "memory_source": res.memory_source}
    except Exception as err:  # noqa: BLE001 - a device check records each point's failure and goes on
        oom = is_oom(err)
        if not oom:
            traceback.print_exc()
        out = {"status": "oom" if oom else "failed",
               "note": f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:200]}"}
    # here, after the except clause: its exception, and with it the model, has been released.
    # What stays allocated (cuBLAS's workspace, tens of MiB; more would be a leak) is kept too.
    out["left_allocated_bytes"] = free_device()
    return {**out, "measure_s": round(time.perf_counter() - start, 2)}


def simulate(point: MemoryPoint) -> dict:
    """The simulator's figure for the same point (fake tensors, on the CPU). A failure is noted
    and the run goes on: the device's measurements are the scarce part of this check."""
    start = time.perf_counter()
    try:
        res = measure(dataclasses.replace(point, backend="simulate"))
        out = {"simulated_bytes": res.peak_bytes, "simulated_activation_bytes": res.activation_bytes}
    except Exception as err:  # noqa: BLE001
        traceback.print_exc()
        out = {"simulate_error": f"simulation failed: {type(err).__name__}: {err}"[:200]}
    return {**out, "simulate_s": round(time.perf_counter() - start, 2)}


def describe(name: str, point: MemoryPoint) -> dict:
    adapters = point.method != "full_ft"
    return {"point": name, "model": point.model.name, "method": point.method,
            "selective_recompute": point.selective_recompute, "batch_size": point.batch_size,
            "seq_len": point.seq_len, "target_len": point.target_len, "r": point.r if adapters else None,
            "alpha": point.lora_alpha if adapters else None, "dropout": point.dropout,
            "attn": point.attn_implementation}


def paper_gb(point: MemoryPoint) -> float | None:
    """The paper's Table 5 value for this model x method (its rows are without recomputation)."""
    if point.selective_recompute:
        return None
    return P.TABLE5.get((point.model.label, point.method), (None, None))[1]


def compare(row: dict, paper: float | None, capacity: int | None) -> dict:
    """GiB, measured/simulated, measured GiB / the paper's GB (as results/paper/memory's table
    divides), and whether the simulator predicted an OOM on this device."""
    measured, simulated = row.get("measured_bytes"), row.get("simulated_bytes")
    out = {"measured_gib": None if measured is None else round(measured / GIB, 3),
           "simulated_gib": None if simulated is None else round(simulated / GIB, 3), "paper_gb": paper}
    if measured and simulated:
        out["measured_over_simulated"] = round(measured / simulated, 4)
    if measured and paper:
        out["measured_gib_over_paper"] = round(measured / GIB / paper, 3)
    if capacity and simulated:
        out["simulated_predicts"] = "oom" if simulated > capacity else "ok"
    return out


def check_point(name: str, point: MemoryPoint, *, rehearse: bool, capacity: int | None) -> tuple[dict, list[str]]:
    """One row: measured on the device (or rehearsed), simulated, and the paper's value."""
    run, notes = device_point(point, rehearse)
    row = {**describe(name, run), **measure_on_device(run)}
    simulated = simulate(run)
    if "simulate_error" in simulated:
        row["note"] = " ".join(filter(None, (row.get("note"), simulated.pop("simulate_error"))))
    row.update(simulated)
    row.update(compare(row, paper_gb(point), capacity))
    return row, notes


# ---- the run ---------------------------------------------------------------------------------

def run_points(points: list, *, rehearse: bool, budget_s: float, capacity: int | None,
               on_row=lambda rows, notes: None) -> tuple[list, list]:
    """Every point in turn, each printed (and handed to on_row) as it ends; the points that
    would start more than budget_s seconds after the first are skipped."""
    start, rows, notes = time.perf_counter(), [], []
    bar = tqdm(points, desc="gpu-check", unit="point", file=sys.stdout)
    for i, (name, point) in enumerate(bar, 1):
        elapsed = time.perf_counter() - start
        if elapsed > budget_s:
            rows.append({**describe(name, point), "status": "skipped",
                         "note": f"budget of {budget_s:g} s spent ({elapsed:.0f} s)"})
            bar.write(f"[gpu-check] {i}/{len(points)} {name}: skipped (budget {budget_s:g} s)")
            on_row(rows, notes)
            continue
        t0 = time.perf_counter()
        row, point_notes = check_point(name, point, rehearse=rehearse, capacity=capacity)
        rows.append(row)
        notes += [n for n in point_notes if n not in notes]
        bar.write(f"[gpu-check] {i}/{len(points)} {name}: {line(row)}, {time.perf_counter() - t0:.1f} s "
                  f"(measure {row['measure_s']:.1f} s, simulate {row['simulate_s']:.1f} s)")
        on_row(rows, notes)
    bar.close()
    return rows, notes


def line(row: dict) -> str:
    gib = lambda key: "-" if row.get(key) is None else f"{row[key]:.2f} GiB"  # noqa: E731
    ratio = f" (x{row['measured_over_simulated']:.3f})" if row.get("measured_over_simulated") else ""
    left = row.get("left_allocated_bytes") or 0
    leak = f", {left / GIB:.2f} GiB STILL ALLOCATED after it (a leak?)" if left > LEAK_BYTES else ""
    return f"{row['status']}, measured {gib('measured_gib')}, simulated {gib('simulated_gib')}{ratio}{leak}"


def provenance(rehearse: bool) -> dict:
    versions = package_versions()
    commit = git_commit()
    return {"mode": "rehearsal" if rehearse else "gpu", "device": device_name(), "torch": versions["torch"],
            "transformers": versions["transformers"],
            "git_commit": None if commit is None else commit + ("-dirty" if git_dirty() else "")}


def device_capacity(rehearse: bool) -> int | None:
    """The GPU's total memory (what the simulator's figure is held against); None on a CPU."""
    return None if rehearse or not torch.cuda.is_available() else torch.cuda.get_device_properties(0).total_memory


# ---- output ----------------------------------------------------------------------------------

def write_csv(rows: list[dict], meta: dict, path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({**{k: row.get(k) for k in COLUMNS if k not in meta}, **meta} for row in rows)


def cell(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def table(rows: list[dict]) -> str:
    head = ("point", "batch", "seq", "status", "measured GiB", "simulated GiB", "measured / simulated",
            "paper GB", "measured / paper", "step s", "point s")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        took = None if r.get("measure_s") is None else r["measure_s"] + r.get("simulate_s", 0)
        cells = (r["point"], r["batch_size"], r["seq_len"], r["status"], cell(r.get("measured_gib")),
                 cell(r.get("simulated_gib")), cell(r.get("measured_over_simulated"), 3), cell(r.get("paper_gb")),
                 cell(r.get("measured_gib_over_paper")), cell(r.get("step_time_s"), 3), cell(took, 1))
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines) + "\n"


def markdown(rows: list[dict], meta: dict, notes: list[str], argv: list[str], progress: str) -> str:
    rehearsal = meta["mode"] == "rehearsal"
    lines = [
        "# GPU check: Table 5's memory points measured, beside the simulator and the paper", "",
        f"`{shlex.join(['python', 'benchmarks/gpu_check.py', *argv])}` on {meta['device']}; "
        f"torch {meta['torch']}, transformers {meta['transformers']}, commit {meta['git_commit']}; "
        f"{utc_now()}; {progress}.", "",
        "measured: torch.cuda.max_memory_allocated around the second of two training steps (AdamW, bf16 weights "
        "and activations, fp32 master copies and moments; lorafa.memory.cuda.cuda_step). simulated: the very same "
        "MemoryPoint on fake tensors (lorafa.memory.simulate). Setting: conf/memory/experiment/table5.yaml over "
        "conf/memory/config.yaml (dropout 0, alpha 4r, all linear layers), random weights. GiB = 2^30 bytes; "
        "paper: its Table 5 as printed (GB), on rows without recomputation; measured / paper divides GiB by it, "
        "as results/paper/memory/table5_simulated.md does. oom: the step did not fit this device.", ""]
    if rehearsal:
        lines += ["**Rehearsal on the CPU (--rehearse): cut-down points, measured by CPU accounting. These numbers "
                  "check the script, not the simulator.**", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines) + "\n" + table(rows)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", nargs="+", metavar="PATTERN",
                    help="fnmatch patterns of the points to run, e.g. 'llama-7b/*' (default: all)")
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="skip the points that would start more than this many seconds after the first "
                         "(default 420)")
    ap.add_argument("--rehearse", action="store_true", help="run every code path on the CPU with tiny shapes")
    ap.add_argument("--out", default=None, help="output folder (default results/gpu, or results/gpu/rehearsal)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the architectures come from conf/model
    args = parse_args(argv)
    if not args.rehearse and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False): the measured column needs a GPU. "
              "Run `python benchmarks/gpu_check.py --rehearse` (make gpu-check ARGS=--rehearse) to rehearse "
              "it on this CPU.", file=sys.stderr)
        return 2
    try:
        points = select(paper_points(), args.points)
    except ValueError as err:
        print(f"gpu_check: {err}", file=sys.stderr)
        return 2
    start, meta = time.perf_counter(), provenance(args.rehearse)
    out = Path(args.out) if args.out else results_dir() / "gpu" / ("rehearsal" if args.rehearse else "")

    def save(rows: list, notes: list) -> None:
        """Both files, rewritten after every point: a run cut short keeps what it measured."""
        progress = f"{len(rows)} of {len(points)} points in {time.perf_counter() - start:.0f} s"
        out.mkdir(parents=True, exist_ok=True)
        write_csv(rows, meta, out / "gpu_check.csv")
        (out / "gpu_check.md").write_text(markdown(rows, meta, notes, argv, progress))

    print(f"[gpu-check] {len(points)} points on {meta['device']} ({meta['mode']}), budget {args.budget_s:g} s")
    rows, notes = run_points(points, rehearse=args.rehearse, budget_s=args.budget_s,
                             capacity=device_capacity(args.rehearse), on_row=save)
    save(rows, notes)
    wall_s = time.perf_counter() - start
    print("\n" + table(rows) + f"\n{wall_s:.1f} s in all -> {out / 'gpu_check.csv'}, {out / 'gpu_check.md'}")
    failed = [r["point"] for r in rows if r["status"] == "failed" or "simulation failed" in (r.get("note") or "")]
    if failed:
        print(f"[gpu-check] failed: {', '.join(failed)} (tracebacks above)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
