"""Length-grouped batches against random ones: the same small-scale runs, paired (issue 23).

    python -m analysis.grouping                       # results/small-grouped against results/small
    python -m analysis.grouping --grouped small-grouped --scale small --root DIR

Until issue 23 the small scale trained on transformers' length-grouped batches
(trainer.group_by_length); those records are kept in results/small-grouped/. The small scale now
trains on random batches. A pair is two ok records whose configurations are equal but for
trainer.group_by_length, so the rows compare one seed of one setting under the two batchings;
"seed std" is the spread of the random-batch runs of the same setting over their seeds, where
there are several, to read the difference against; where that setting has one seed, the spread of
the same task and method at the rate that has seeds (Table 2's chosen rate), with that rate shown. Wall times are the records' own, from
different days, and the random-batch ones ran two at a time on one thread each (WORKERS=2) where
the grouped ones ran alone on two: their ratio is shown only where both sides ran on the same
number of threads. Speed is measured in one run by benchmarks/bench_batching.py: its step-time
ratio (random / grouped, same task and method) stands beside each pair where
results/bench/batching.csv has it.

Writes results/<scale>/tables/grouping.csv and grouping.md.
"""

from __future__ import annotations

import argparse
import copy
import re
import statistics
import sys
from pathlib import Path

import pandas as pd

from analysis import paper_values as P
from analysis.common import clean, fmt, fmt_lr, load, markdown, method_key, method_label, scale_dir
from analysis.names import metric_label, task_label, task_value
from lorafa.paths import results_dir
from lorafa.results import config_hash

BENCH = "bench/batching.csv"  # under the results root

# The adapter field each sensitivity experiment varies, shown so its pairs read apart.
VARIED = {"table6": "init_a", "table7": "alpha", "fig6": "r"}
EXPERIMENT_ORDER = ("table2", "table6", "table7", "fig6")  # the paper's order


def pair_key(config: dict) -> str:
    """The hash of a run's configuration without its batching's grouping flag."""
    c = copy.deepcopy(config)
    c.get("trainer", {}).pop("group_by_length", None)
    return config_hash(c)


def varied_value(record: dict):
    """The value of what sets a run apart within its experiment (Table 6's init of A, Table 7's
    alpha, Figure 6's rank), or None where the experiment varies only method and rate."""
    key = VARIED.get(record.get("experiment"))
    adapter = (record["config"].get("method") or {}).get("adapter") or {}
    return None if key is None else adapter.get(key)


def setting_label(record: dict) -> str:
    value = varied_value(record)
    if value is None:
        return ""
    key = VARIED[record["experiment"]]
    return P.INIT_LABELS.get(value, value) if key == "init_a" else f"{key} {value}"


def _grouped(config) -> bool:
    return isinstance(config, dict) and bool(config.get("trainer", {}).get("group_by_length"))


def _ok(records: pd.DataFrame) -> list[dict]:
    rows = records[records["status"] == "ok"].to_dict("records") if len(records) else []
    return [r for r in rows if isinstance(r.get("config"), dict)]


def threads(record: dict) -> int | None:
    """The torch threads a run trained on, from its device string (cpu:2cores,1threads@vm)."""
    m = re.search(r"(\d+)threads", str(record.get("device") or ""))
    return int(m.group(1)) if m else None


def bench_ratios(bench: pd.DataFrame | None) -> dict[tuple[str, str], float]:
    """{(task, method): median step random / grouped} from bench_batching's CSV."""
    if bench is None or bench.empty:
        return {}
    step = bench.set_index(["task", "method", "batching"])["step_s"]
    return {(t, m): step[(t, m, "random")] / step[(t, m, "grouped")]
            for t, m in {(t, m) for t, m, _ in step.index}
            if (t, m, "random") in step.index and (t, m, "grouped") in step.index}


def grouping_pairs(grouped: pd.DataFrame, random: pd.DataFrame, bench: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per pair (the last record of each side where a setting was rerun)."""
    steps = bench_ratios(bench)
    by_key = {pair_key(r["config"]): r for r in _ok(grouped) if _grouped(r["config"])}
    randoms = [r for r in _ok(random) if not _grouped(r["config"])]
    spread = _seed_spread(randoms)
    latest = {pair_key(r["config"]): r for r in randoms}
    rows = []
    for key, r in latest.items():
        g = by_key.get(key)
        if g is None:
            continue
        value = task_value(r["task"])
        on, off = value(g["metrics"]), value(r["metrics"])
        if on is None or off is None:
            continue
        value = varied_value(r)
        rows.append({"experiment": r["experiment"], "setting": setting_label(r), "task": r["task"],
                     "method": r["method"],
                     "_number": value if isinstance(value, (int, float)) else None,  # ranks, alphas sort as numbers
                     "lr": clean(r["lr"]), "seed": clean(r["seed"]), "metric": metric_label(r["task"]),
                     "grouped": on, "random": off, "delta": off - on,
                     **_spread_of(r, spread),
                     "wall_s_grouped": clean(g["wall_s"]), "wall_s_random": clean(r["wall_s"]),
                     "threads_grouped": threads(g), "threads_random": threads(r),
                     "bench_step_ratio": steps.get((r["task"], r["method"])),
                     "grouped_config_hash": g["config_hash"], "random_config_hash": r["config_hash"]})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    same = df["threads_grouped"] == df["threads_random"]
    df["wall_ratio"] = (df["wall_s_random"] / df["wall_s_grouped"]).where(same)
    df["_order"] = df["method"].map(method_key)
    df["_experiment"] = df["experiment"].map(lambda e: (EXPERIMENT_ORDER.index(e) if e in EXPERIMENT_ORDER
                                                        else len(EXPERIMENT_ORDER), e))
    df["_number"] = pd.to_numeric(df["_number"])
    keys = ["task", "_experiment", "_order", "_number", "setting", "lr", "seed"]
    return df.sort_values(keys).drop(columns=["_order", "_experiment", "_number"]).reset_index(drop=True)


def _setting(r: dict) -> str:
    """The setting of a run, seed left out."""
    c = copy.deepcopy(r["config"])
    c.get("trainer", {}).pop("seed", None)
    return config_hash(c)


def _cell(r: dict) -> tuple:
    return r["experiment"], r["task"], r["method"]


def _seed_spread(randoms: list[dict]) -> dict:
    """The std over seeds of each setting run at two seeds or more, keyed by setting, and by cell
    (experiment, task, method) -> (lr, std) of the cell's setting with the most seeds."""
    values: dict[str, dict] = {}
    cells: dict[str, tuple] = {}
    for r in randoms:
        v = task_value(r["task"])(r["metrics"])
        if v is not None:
            values.setdefault(_setting(r), {})[clean(r["seed"])] = v
            cells[_setting(r)] = (_cell(r), clean(r["lr"]))
    spread: dict = {k: statistics.stdev(v.values()) for k, v in values.items() if len(v) > 1}
    for k in sorted(spread, key=lambda k: len(values[k])):  # the most seeds last, so it wins
        cell, lr = cells[k]
        spread[cell] = (lr, spread[k])
    return spread


def _spread_of(r: dict, spread: dict) -> dict:
    if _setting(r) in spread:
        return {"seed_std": spread[_setting(r)], "seed_std_lr": clean(r["lr"])}
    lr, std = spread.get(_cell(r), (None, None))
    return {"seed_std": std, "seed_std_lr": lr}


def grouping_markdown(df: pd.DataFrame) -> str:
    if df.empty:
        return "No pairs yet: no setting has both a length-grouped and a random-batch record.\n"
    body = [[r.experiment + (f" ({r.setting})" if r.setting else ""), task_label(r.task), method_label(r.method), fmt_lr(r.lr), str(r.seed), r.metric,
             fmt(r.grouped), fmt(r.random), f"{r.delta:+.1f}", _std(r),
             _wall(r.wall_s_grouped, r.threads_grouped), _wall(r.wall_s_random, r.threads_random),
             fmt(r.wall_ratio, 2, empty="-"), fmt(r.bench_step_ratio, 2, empty="-")]
            for r in df.itertuples()]
    per_task = df.groupby("task", sort=False)["delta"].agg(["mean", "count"])
    summary = "; ".join(f"{task_label(t)} {row['mean']:+.1f} ({int(row['count'])})" for t, row in per_task.iterrows())
    return (markdown(["experiment", "task", "method", "lr", "seed", "metric", "grouped", "random", "random - grouped",
                      "seed std", "wall s grouped (threads)", "wall s random (threads)", "wall ratio",
                      "step random / grouped (bench)"], body)
            + f"\nMean of random - grouped per task (pairs): {summary}.\n"
            + "Wall ratio: only where both runs had the same number of threads; a wall time without a thread "
              "count is from a record made before records kept it (then one run at a time, on torch's default "
              "of one thread per core). Step ratio: benchmarks/bench_batching.py, both batchings in one run "
              "(results/bench/batching.md).\n")


def _std(r) -> str:
    if clean(r.seed_std) is None:
        return "-"
    return fmt(r.seed_std) + ("" if r.seed_std_lr == r.lr else f" (at {fmt_lr(r.seed_std_lr)})")


def _wall(seconds, n_threads) -> str:
    return f"{seconds:.0f}" + (f" ({n_threads})" if n_threads else "")


def read_bench(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.exists() else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", default="small", help="results/<scale>/: the random-batch runs, and where tables/ goes")
    ap.add_argument("--grouped", default="small-grouped", help="results/<grouped>/: the length-grouped runs")
    ap.add_argument("--root", help="results root (default $LORAFA_RESULTS_DIR or results/)")
    args = ap.parse_args(argv)
    root = Path(args.root) if args.root else results_dir()
    df = grouping_pairs(load(args.grouped, args.root), load(args.scale, args.root), read_bench(root / BENCH))
    out = scale_dir(args.scale, args.root) / "tables"
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "grouping.csv", index=False)
    text = grouping_markdown(df)
    (out / "grouping.md").write_text(text)
    print(text)
    print(f"wrote {out / 'grouping.csv'} and grouping.md ({len(df)} pairs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
