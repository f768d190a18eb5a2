"""Table 2's learning rate per cell at small scale, chosen from the grids' records.

    python -m analysis.chosen_rates [--scale small] [--root DIR]

The rule, as the paper tunes Table 2: for each task and method run at two rates or more, the rate
whose seed-0 run scores best on the dev split (analysis.common.best_setting: seed 0 where every
rate has it). Prints the `chosen_lr` block of conf/experiment/small/table2.yaml, which `make small`
trains at; tests/test_experiment_configs.py checks that the committed block agrees with
results/small.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from analysis.common import best_setting, clean, fmt_lr, load, method_key, runs_of
from analysis.names import task_value


def chosen_rates(records: pd.DataFrame, experiment: str = "table2") -> dict[str, dict[str, float]]:
    """{task: {method: rate}} for the cells whose ok runs cover at least two rates."""
    runs = runs_of(records, experiment) if len(records) else records
    out: dict[str, dict[str, float]] = {}
    if runs.empty:
        return out
    for (task, method), cell in runs.groupby(["task", "method"], sort=True):
        if cell.loc[cell["status"] == "ok", "lr"].nunique() < 2:
            continue
        best = best_setting(cell, task_value(task))
        if best is not None:
            out.setdefault(task, {})[method] = clean(best.key["lr"])
    return {t: dict(sorted(m.items(), key=lambda kv: method_key(kv[0]))) for t, m in out.items()}


def yaml_block(rates: dict[str, dict[str, float]]) -> str:
    if not rates:
        return "chosen_lr: {}\n"
    lines = ["chosen_lr:"]
    for task, methods in rates.items():
        cells = ", ".join(f"{m}: {fmt_lr(lr)}" for m, lr in methods.items())
        lines.append(f"  {task}: {{{cells}}}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", default="small")
    ap.add_argument("--root", help="results root (default $LORAFA_RESULTS_DIR or results/)")
    args = ap.parse_args(argv)
    print(yaml_block(chosen_rates(load(args.scale, args.root))), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
