"""Merge one scale's results into another's: what a suite timed fresh elsewhere adds.

    python experiments/merge_results.py results/fresh/small results/small

A suite's wall time means something only from an empty results root (LORAFA_RESULTS_DIR=<empty>
make small): there it reruns what another suite already finished here (Table 2's seed-0 cells are
grid runs). This copies the source's records whose configuration the destination lacks (record.json
and its runs.jsonl line, through lorafa.results.write_record), checks that the runs both hold agree
(same metrics: the run is deterministic on the same thread count), keeps the destination's records
of those, and appends the source's timing segments to the destination's timing.json, recomputing
its per-suite totals. Rerunning it adds nothing twice.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from demo import suite_wall  # experiments/ imports its scripts by bare name (pyproject's pythonpath)
from lorafa.results import load_records, read_record, write_record

TIMING = "timing.json"


def _metric_diff(a: dict, b: dict) -> float:
    """The largest absolute difference between two metrics dicts' shared numeric values."""
    diffs = [abs(a[k] - b[k]) for k in a.keys() & b.keys()
             if isinstance(a[k], (int, float)) and isinstance(b[k], (int, float))
             and math.isfinite(a[k]) and math.isfinite(b[k])]
    return max(diffs, default=0.0)


def merge_records(src: Path, dst: Path) -> dict:
    """Copy src's records that dst has no record of (by config hash); compare the others."""
    have = {r["config_hash"]: r for r in load_records(dst).to_dict("records")} if (dst / "runs.jsonl").exists() else {}
    copied, shared, worst = 0, 0, 0.0
    for row in load_records(src).to_dict("records"):
        record = read_record(src / "runs" / row["run_id"] / "record.json")
        mine = have.get(record.config_hash)
        if mine is None:
            write_record(record, dst)
            copied += 1
        elif record.status == "ok" and mine["status"] == "ok":
            shared += 1
            worst = max(worst, _metric_diff(record.metrics or {}, mine["metrics"] or {}))
    return {"copied": copied, "shared": shared, "max_metric_diff": worst}


def merge_timing(src: Path, dst: Path) -> int:
    """Append src's timing segments that dst lacks; recompute dst's suite totals."""
    if not (src / TIMING).is_file():
        return 0
    theirs = json.loads((src / TIMING).read_text()).get("runs", [])
    path = dst / TIMING
    kept = json.loads(path.read_text()) if path.is_file() else {}
    runs = kept.get("runs", [])
    seen = {(r.get("suite"), r.get("finished_at")) for r in runs}
    new = [r for r in theirs if (r.get("suite"), r.get("finished_at")) not in seen]
    kept["runs"] = runs + new
    suites = {r.get("suite") for r in kept["runs"] if r.get("suite")}
    kept["suites"] = {s: w for s in sorted(suites) if (w := suite_wall(kept["runs"], s))}
    path.write_text(json.dumps(kept, indent=1) + "\n")
    return len(new)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="a scale's results folder, e.g. results/fresh/small")
    ap.add_argument("dest", type=Path, help="the scale's results folder to add to, e.g. results/small")
    args = ap.parse_args(argv)
    if not (args.source / "runs.jsonl").is_file():
        ap.error(f"{args.source}: no runs.jsonl (is it a scale's folder, e.g. results/fresh/small?)")
    counts = merge_records(args.source, args.dest)
    segments = merge_timing(args.source, args.dest)
    print(f"{args.source} -> {args.dest}: {counts['copied']} records copied; {counts['shared']} runs both hold, "
          f"metrics differing by at most {counts['max_metric_diff']:.2g}; {segments} timing segments added")
    return 0


if __name__ == "__main__":
    sys.exit(main())
