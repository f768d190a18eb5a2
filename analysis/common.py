"""Shared by tables and figures: names, record selection, best-setting choice, formatting."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from lorafa.memory.report import GIB  # memory is reported in GB of 2**30 bytes, as CUDA reports usually are
from lorafa.paths import results_dir
from lorafa.results import load_records
from lorafa.results import plain as clean  # NaN -> None, numpy -> Python

SETTING_KEYS = ("r", "alpha", "lr", "init_a")

METHOD_ORDER = ("full_ft", "prompt_tuning", "lora_qv", "lora", "lora_fa", "lora_fa_corrected", "base")
METHOD_LABELS = {"full_ft": "Full-FT", "prompt_tuning": "PT", "lora_qv": "LoRA-qv", "lora": "LoRA",
                 "lora_fa": "LoRA-FA", "lora_fa_corrected": "LoRA-FA (corrected)", "base": "base model",
                 "peft_lora": "PEFT LoRA", "peft_lora_frozen_a": "PEFT LoRA, A frozen"}


def scale_dir(scale: str, root: str | Path | None = None) -> Path:
    return Path(root) / scale if root is not None else results_dir() / scale


def load(scale: str, root: str | Path | None = None) -> pd.DataFrame:
    """The records of results/<scale>/runs.jsonl (empty frame if there are none), without
    dry runs (make dry-run), wherever they were written."""
    records = load_records(scale_dir(scale, root))
    dry = [isinstance(c, dict) and bool(c.get("dry_run")) for c in records["config"]]
    return records[[not d for d in dry]].reset_index(drop=True) if any(dry) else records


def record_dicts(records) -> list[dict]:
    """Records (RunRecords, dicts or load_records' frame) as plain dicts; whole-number floats of
    integer fields (a frame's NaN-able columns) back to int."""
    if isinstance(records, pd.DataFrame):
        rows = [{k: clean(v) if not isinstance(v, (dict, list)) else v for k, v in row.items()}
                for row in records.to_dict("records")]
    else:
        rows = [r.to_dict() if hasattr(r, "to_dict") else dict(r) for r in records]
    for row in rows:
        for k in ("r", "batch_size", "seq_len"):
            if isinstance(row.get(k), float) and row[k].is_integer():
                row[k] = int(row[k])
    return rows


def latest(records: list[dict], **equal) -> dict | None:
    """The last of the records whose fields equal these values (a rerun supersedes), or None."""
    hits = [r for r in records if all(r.get(k) == v for k, v in equal.items())]
    return hits[-1] if hits else None


def ratio(x, y) -> float | None:
    return None if x is None or not y else x / y


def runs_of(records: pd.DataFrame, experiment: str, **equal: Any) -> pd.DataFrame:
    """Records of one experiment, optionally filtered by field equality."""
    mask = records["experiment"] == experiment
    for name, value in equal.items():
        mask &= records[name] == value
    return records[mask]


def method_key(method: str) -> tuple:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def method_label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


# ---- metric values --------------------------------------------------------------------

def metric(name: str, factor: float = 1.0) -> Callable[[dict], float | None]:
    """metrics dict -> metrics[name] * factor, or None when absent or not finite."""
    def value(metrics):
        v = (metrics or {}).get(name) if isinstance(metrics, dict) else None
        if v is None or isinstance(v, bool) or not math.isfinite(float(v)):
            return None
        return float(v) * factor
    value.metric_name = name
    return value


def mean_of(names: tuple[str, ...], factor: float = 1.0, fallback: str | None = None):
    """Mean of several metrics (all required), e.g. MNLI matched/mismatched accuracy."""
    parts = [metric(n, factor) for n in names]
    alt = metric(fallback, factor) if fallback else None

    def value(metrics):
        vals = [p(metrics) for p in parts]
        if all(v is not None for v in vals):
            return sum(vals) / len(vals)
        return alt(metrics) if alt else None
    value.metric_name = "+".join(names)
    return value


# ---- best setting -----------------------------------------------------------------------

@dataclass
class Setting:
    """The runs of one hyper-parameter setting within a table cell."""
    key: dict[str, Any]
    values: list[float]
    statuses: list[str]
    runs: list[dict] = field(default_factory=list)  # ok runs with a value, one per seed

    @property
    def eligible(self) -> bool:
        return bool(self.values) and not ({"diverged", "oom"} & set(self.statuses))

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    @property
    def first_seed(self) -> tuple[Any, float] | None:
        """(the lowest seed, its value), or None where a run has no seed."""
        seeds = [clean(r.get("seed")) for r in self.runs]
        if not seeds or None in seeds:
            return None
        i = seeds.index(min(seeds))
        return seeds[i], self.values[i]


def settings(runs: pd.DataFrame, value: Callable, keys=SETTING_KEYS) -> list[Setting]:
    """Group runs by setting; within one, the last ok run per seed gives a value."""
    groups: dict[tuple, list[dict]] = {}
    for row in runs.to_dict("records"):
        groups.setdefault(tuple(clean(row.get(k)) for k in keys), []).append(row)
    out = []
    for key, rows in groups.items():
        per_seed: dict[Any, dict] = {}
        for i, row in enumerate(rows):
            if row["status"] == "ok" and value(row.get("metrics")) is not None:
                seed = clean(row.get("seed"))
                per_seed[seed if seed is not None else ("run", i)] = row
        chosen = list(per_seed.values())
        out.append(Setting(dict(zip(keys, key)), [value(r["metrics"]) for r in chosen],
                           [r["status"] for r in rows], chosen))
    return out


def best_setting(runs: pd.DataFrame, value: Callable, keys=SETTING_KEYS) -> Setting | None:
    """The eligible setting that scores highest (the first such on ties), or None.

    Settings are compared on their first seed (the lowest, seed 0 of a grid) where every
    candidate has that seed, else on their means; the cell then reports the chosen setting's
    mean and std over all its seeds. A grid runs every rate at seed 0 and the chosen rate at
    more seeds: comparing means would set one lucky seed against the mean of three.
    """
    candidates = [s for s in settings(runs, value, keys) if s.eligible]
    if not candidates:
        return None
    firsts = [s.first_seed for s in candidates]
    if all(f is not None for f in firsts) and len({f[0] for f in firsts}) == 1:
        return max(candidates, key=lambda s: s.first_seed[1])
    return max(candidates, key=lambda s: s.mean)


def missing_reason(runs: pd.DataFrame, value: Callable | None = None) -> str:
    """Why a cell has no value: not run, oom, diverged, a failed run's error, or metric missing."""
    if runs.empty:
        return "not run"
    statuses = set(runs["status"])
    if "oom" in statuses:
        return "oom"
    if "diverged" in statuses:
        return "diverged"
    failed = runs[runs["status"] == "failed"]
    if not failed.empty:
        errors = [str(e).strip().splitlines()[0] for e in failed["error"] if clean(e) and str(e).strip()]
        return errors[-1][:80] if errors else "failed"
    name = getattr(value, "metric_name", "metric")
    return f"metric missing: {name}"


def summary(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


# ---- formatting -------------------------------------------------------------------------

def rnd(x, digits: int = 4):
    x = clean(x)
    return None if x is None else round(float(x), digits)


def fmt(x, digits: int = 1, empty: str = "") -> str:
    x = clean(x)
    return empty if x is None else f"{x:.{digits}f}"


def fmt_pm(mean, std, digits: int = 1) -> str:
    if clean(mean) is None:
        return ""
    return fmt(mean, digits) + (f" ± {fmt(std, digits)}" if clean(std) is not None else "")


def fmt_lr(lr) -> str:
    """5e-4, 1.5e-4 (the paper's style)."""
    lr = clean(lr)
    if lr is None:
        return ""
    mantissa, exponent = f"{float(lr):.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def fmt_range(lrs) -> str:
    """{1e-5, ..., 9e-5} for three or more values, else the values listed."""
    lrs = sorted(set(lrs))
    if not lrs:
        return ""
    if len(lrs) >= 3:
        return "{" + f"{fmt_lr(lrs[0])}, ..., {fmt_lr(lrs[-1])}" + "}"
    return "{" + ", ".join(fmt_lr(x) for x in lrs) + "}"


def markdown(header: list[str], rows: list[list[str]]) -> str:
    def esc(cell):
        return str(cell).replace("|", "\\|")
    lines = ["| " + " | ".join(map(esc, header)) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def cli_records(argv: list[str] | None, description: str, names, what: str) -> tuple[list[str], Path, pd.DataFrame, bool]:
    """The shared command line of analysis.tables and analysis.figures: (the names to build,
    results/<scale>/, its records, whether the names were asked for with --only)."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--scale", default="mini", help="results/<scale>/ to read and write (default mini)")
    parser.add_argument("--only", choices=sorted(names), action="append", help=f"build only these {what}")
    parser.add_argument("--root", help="results root (default $LORAFA_RESULTS_DIR or results/)")
    args = parser.parse_args(argv)
    base = scale_dir(args.scale, args.root)
    records = load(args.scale, args.root)
    print(f"{len(records)} run record(s) in {base / 'runs.jsonl'}")
    return list(args.only or names), base, records, args.only is not None
