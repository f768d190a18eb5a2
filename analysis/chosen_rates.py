"""Table 2's learning rate per cell at small scale, chosen from the grids' records.

    python -m analysis.chosen_rates [--scale small] [--root DIR] [--update]

The rule, as the paper tunes Table 2: for each task and method run at two rates or more, the rate
whose seed-0 run scores best on the dev split (analysis.common.best_setting: seed 0 where every
rate has it). Prints the `chosen_lr` block of conf/experiment/small/table2.yaml, which `make small`
trains at (--update writes it there); tests/test_experiment_configs.py checks that the committed block agrees with
results/small. Also writes the grids' evidence, each cell's score at every rate with the chosen
one in bold, to results/<scale>/tables/table2_rates.{csv,md}.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path

import pandas as pd

from analysis.common import (
    best_setting, clean, fmt, fmt_lr, fmt_pm, load, markdown, method_key, method_label, runs_of, scale_dir,
    settings,
)
from analysis.names import metric_label, task_label, task_value
from lorafa.paths import REPO_ROOT

CONFIG = REPO_ROOT / "conf" / "experiment" / "small" / "table2.yaml"

GRID_COLUMNS = ["task", "method", "lr", "seed0", "mean", "std", "n_seeds", "heldout_mean", "chosen"]


def chosen_rates(records: pd.DataFrame, experiment: str = "table2") -> dict[str, dict[str, float]]:
    """{task: {method: rate}} for the cells whose ok runs cover at least two rates."""
    grid = rate_grid(records, experiment)
    out: dict[str, dict[str, float]] = {}
    for row in grid[grid["chosen"]].to_dict("records") if len(grid) else []:
        out.setdefault(row["task"], {})[row["method"]] = row["lr"]
    return out


def rate_grid(records: pd.DataFrame, experiment: str = "table2") -> pd.DataFrame:
    """One row per (task, method, rate) of the cells run at two rates or more: the seed-0 score
    (what the rule compares), the mean and std over the rate's seeds, the mean over its seeds other
    than 0 (held out from the choice), and whether it was chosen."""
    runs = runs_of(records, experiment) if len(records) else records
    rows = []
    if not runs.empty:
        for (task, method), cell in runs.groupby(["task", "method"], sort=True):
            if cell.loc[cell["status"] == "ok", "lr"].nunique() < 2:
                continue
            value = task_value(task)
            best = best_setting(cell, value)
            for s in settings(cell, value):
                if s.key["lr"] is None or not s.values:
                    continue
                first = s.first_seed
                others = [v for r, v in zip(s.runs, s.values) if clean(r.get("seed")) not in (0, None)]
                rows.append({"task": task, "method": method, "lr": clean(s.key["lr"]),
                             "seed0": first[1] if first and first[0] == 0 else None,
                             "mean": s.mean, "std": s.std, "n_seeds": len(s.values),
                             "heldout_mean": statistics.fmean(others) if others else None,
                             "chosen": best is not None and s.key == best.key and s.eligible})
    df = pd.DataFrame(rows, columns=GRID_COLUMNS)
    if df.empty:
        return df
    df["_m"] = df["method"].map(method_key)
    return df.sort_values(["task", "_m", "lr"]).drop(columns="_m").reset_index(drop=True)


def yaml_block(rates: dict[str, dict[str, float]]) -> str:
    if not rates:
        return "chosen_lr: {}\n"
    lines = ["chosen_lr:"]
    for task, methods in rates.items():
        cells = ", ".join(f"{m}: {fmt_lr(lr)}" for m, lr in sorted(methods.items(), key=lambda kv: method_key(kv[0])))
        lines.append(f"  {task}: {{{cells}}}")
    return "\n".join(lines) + "\n"


def update_config(block: str, path: Path = CONFIG) -> bool:
    """Replace the config's chosen_lr block (the key and its indented lines) by `block`; whether
    the file changed."""
    text = path.read_text()
    new, n = re.subn(r"^chosen_lr:.*\n(?:  .*\n)*", lambda _: block, text, count=1, flags=re.M)
    if n != 1:
        raise ValueError(f"{path}: no top-level chosen_lr block to replace")
    path.write_text(new)
    return new != text


def grid_markdown(grid: pd.DataFrame) -> str:
    """One row per task, one column per method: its score at each of its rates, in the order the
    header gives (seed 0; "-" where a rate was not run), the chosen one in bold."""
    out = ["# Table 2's learning-rate grids (dev split, x100; seed 0 decides, the chosen rate in bold)", ""]
    if grid.empty:
        return "\n".join(out + ["No cell has been run at two rates yet (make small-grids).", ""])
    methods = sorted(grid["method"].unique(), key=method_key)
    rates = {m: sorted(grid.loc[grid["method"] == m, "lr"].unique()) for m in methods}
    header = ["task"] + [f"{method_label(m)} ({' / '.join(fmt_lr(lr) for lr in rates[m])})" for m in methods]
    body = []
    for task, g in grid.groupby("task", sort=False):
        row = [f"{task_label(task)} ({metric_label(task)})"]
        for m in methods:
            by_lr = {r["lr"]: r for r in g[g["method"] == m].to_dict("records")}
            row.append(" / ".join(_score(by_lr.get(lr)) for lr in rates[m]) if by_lr else "")
        body.append(row)
    seeds = grid[grid["chosen"] & (grid["n_seeds"] > 1)]
    note = ""
    if len(seeds):
        note = "\nThe chosen rates' mean ± std over their seeds: " + "; ".join(
            f"{task_label(r['task'])} {method_label(r['method'])} {fmt_pm(r['mean'], r['std'])} ({r['n_seeds']})"
            for r in seeds.to_dict("records")) + ".\n"
    return "\n".join(out) + "\n" + markdown(header, body) + note + heldout_markdown(grid)


def heldout_markdown(grid: pd.DataFrame) -> str:
    """The chosen rates' mean over seeds 1 and up, per method and task, and over the tasks.

    Seed 0 chose each rate, so the best of several seed-0 runs flatters every chosen cell (most
    where the grid is widest); the seeds that had no say in the choice measure the chosen rate
    without that bias."""
    chosen = grid[grid["chosen"] & grid["heldout_mean"].notna()]
    if chosen.empty:
        return ""
    tasks = list(dict.fromkeys(chosen["task"]))
    methods = sorted(chosen["method"].unique(), key=method_key)
    body = []
    for m in methods:
        by_task = {r["task"]: r["heldout_mean"] for r in chosen[chosen["method"] == m].to_dict("records")}
        cells = [fmt(by_task.get(t)) if t in by_task else "-" for t in tasks]
        mean = fmt(statistics.fmean(by_task.values())) if len(by_task) == len(tasks) else "-"
        body.append([method_label(m)] + cells + [mean])
    header = ["method"] + [task_label(t) for t in tasks] + [f"mean of {len(tasks)}"]
    return ("\n## Held out from the choice: the chosen rates' mean over seeds 1 and up\n\n"
            "Seed 0 chose each rate, so the best of a cell's seed-0 runs flatters it; these seeds had no say.\n\n"
            + markdown(header, body))


def _score(r: dict | None) -> str:
    if r is None:
        return "-"
    text = fmt(r["seed0"] if r["seed0"] is not None else r["mean"])
    return f"**{text}**" if r["chosen"] else text


def write_grid(grid: pd.DataFrame, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    csv, md = out_dir / "table2_rates.csv", out_dir / "table2_rates.md"
    grid.to_csv(csv, index=False)
    md.write_text(grid_markdown(grid))
    return csv, md


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", default="small")
    ap.add_argument("--root", help="results root (default $LORAFA_RESULTS_DIR or results/)")
    ap.add_argument("--update", action="store_true", help=f"write the block into {CONFIG.relative_to(REPO_ROOT)}")
    args = ap.parse_args(argv)
    records = load(args.scale, args.root)
    block = yaml_block(chosen_rates(records))
    print(block, end="")
    if args.update:
        changed = update_config(block)
        print(f"{CONFIG.relative_to(REPO_ROOT)}: {'updated' if changed else 'already up to date'}", file=sys.stderr)
    csv, md = write_grid(rate_grid(records), scale_dir(args.scale, args.root) / "tables")
    print(f"wrote {csv} and {md.name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
