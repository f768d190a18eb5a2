"""The values Figures 2-6 plot, from run records: one frame per figure, no drawing.

    fig3_data(records)   # -> one row per (model, method): GB per memory segment, ...

Each figN_data takes the records DataFrame and returns the plotted values as a DataFrame
(figure-wide text such as the subtitle in frame.attrs), or raises NoRecords saying what is
missing; analysis.figures draws the frame. See analysis/__init__.py for the record conventions.
"""

from __future__ import annotations

import statistics

import numpy as np
import pandas as pd

from analysis import paper_values as P
from analysis.common import GIB, best_setting, clean, method_key, runs_of
from analysis.names import is_paper_model, metric_label, task_label, task_value

SEGMENTS = ("weights", "gradients", "optimizer_states", "activations", "other")
ACTIVATION_METHODS = ("lora", "lora_fa", "lora_fa_corrected")  # Figure 3's right panel, relative to LoRA
CONVERGENCE_METHODS = ("full_ft", "lora", "lora_fa")  # Figure 4 from Table 2's runs


class NoRecords(Exception):
    """A figure has no usable records; the message says which."""


def _records(records, experiment) -> pd.DataFrame:
    runs = runs_of(records, experiment)
    if runs.empty:
        raise NoRecords(f"no records with experiment={experiment!r}")
    return runs


def optimisation(options) -> str:
    """A short label for the memory optimisations in a record's options."""
    o = options if isinstance(options, dict) else {}
    parts = []
    attn = o.get("attn_implementation")
    if attn and attn != "eager":
        parts.append("FlashAttention" if "flash" in str(attn) else f"attn={attn}")
    if o.get("quantization"):
        q = str(o["quantization"])
        parts.append(f"QLoRA ({q})" if q in ("nf4", "fp4") else f"{q} weights")
    if (clean(o.get("zero_shards")) or 1) > 1:
        parts.append(f"ZeRO-3 x{o['zero_shards']}")
    if o.get("gradient_checkpointing"):
        parts.append("recompute")
    if o.get("selective_recompute"):
        parts.append("selective recomputation")
    return " + ".join(parts) or "none"


def _subtitle(runs: pd.DataFrame) -> str:
    models = ", ".join(sorted(set(runs["model"].dropna())))
    sources = ", ".join(sorted(set(runs["memory_source"].map(clean).dropna())))
    return f"{models}" + (f"; memory: {sources}" if sources else "")


# ---- memory against x (Figures 2 and 5) -------------------------------------------------------

def memory_points(runs: pd.DataFrame, x: pd.Series, experiment: str) -> pd.DataFrame:
    """Peak memory per (method, opt, x): gb (mean over repeats) and oom.

    A simulated point above the GPU's capacity has a value (status oom): it stays on its line,
    marked (oom true). A real out-of-memory error has none: gb NaN, a cross at the top.
    """
    df = pd.DataFrame({"method": runs["method"], "opt": runs["options"].map(optimisation), "x": x,
                       "gb": runs["peak_memory_bytes"].map(clean).astype(float) / GIB,
                       "status": runs["status"]})
    df = df[df["x"].notna()]
    valued = df[df["status"].isin(["ok", "oom"]) & df["gb"].notna()]
    ok = valued.groupby(["method", "opt", "x"], as_index=False).agg(
        gb=("gb", "mean"), oom=("status", lambda s: bool((s == "oom").any())))
    crashed = df[(df["status"] == "oom") & df["gb"].isna()][["method", "opt", "x"]].drop_duplicates()
    parts = [f for f in (ok, crashed.assign(gb=np.nan, oom=True)) if not f.empty]
    if not parts:
        raise NoRecords(f"no {experiment} records with peak_memory_bytes or status oom")
    return pd.concat(parts, ignore_index=True)


def lora_gap(points: pd.DataFrame) -> pd.Series:
    """x -> LoRA's peak minus LoRA-FA's (GB), at the points without memory optimisations."""
    base = points[(points["opt"] == "none") & points["gb"].notna()].pivot_table(
        index="x", columns="method", values="gb")
    if not {"lora", "lora_fa"} <= set(base.columns):
        return pd.Series(dtype=float)
    return (base["lora"] - base["lora_fa"]).dropna()


def _memory_figure(records, experiment: str, x) -> pd.DataFrame:
    runs = _records(records, experiment)
    points = memory_points(runs, x(runs), experiment)
    points.attrs.update(subtitle=_subtitle(runs), paper_scale=all(is_paper_model(m) for m in runs["model"]))
    return points


def fig2a_data(records: pd.DataFrame) -> pd.DataFrame:
    """Peak memory against batch size, a panel per optimisation (opt)."""
    return _memory_figure(records, "fig2a", lambda runs: runs["batch_size"].map(clean))


def fig2b_data(records: pd.DataFrame) -> pd.DataFrame:
    """Peak memory against the number of adapted layers."""
    def layers(runs):
        return runs["options"].map(lambda o: clean(o.get("num_adapted_layers")) if isinstance(o, dict) else None)
    return _memory_figure(records, "fig2b", layers)


def fig2c_data(records: pd.DataFrame) -> pd.DataFrame:
    """Peak memory against rank; attrs mean_gap_gb: LoRA minus LoRA-FA averaged over ranks."""
    points = _memory_figure(records, "fig2c", lambda runs: runs["r"].map(clean))
    gap = lora_gap(points)
    points.attrs["mean_gap_gb"] = None if gap.empty else float(gap.mean())
    return points


def fig5_data(records: pd.DataFrame) -> pd.DataFrame:
    """Three panels: memory (as Figure 2), speed (tokens/s, mean per batch size) and gap
    (LoRA minus LoRA-FA, GB), told apart by the panel column."""
    points = _memory_figure(records, "fig5", lambda runs: runs["batch_size"].map(clean))
    runs = _records(records, "fig5")
    tput = runs[runs["status"] == "ok"].copy()
    num = {c: pd.to_numeric(tput[c], errors="coerce") for c in ("batch_size", "seq_len", "step_time_s", "tokens_per_s")}
    tput["tps"] = num["tokens_per_s"].fillna(num["batch_size"] * num["seq_len"] / num["step_time_s"])
    tput["opt"] = tput["options"].map(optimisation)
    tput = tput[tput["tps"].notna()]
    speed = [pd.DataFrame({"panel": "speed", "method": method, "opt": opt, "x": g.index, "tokens_per_s": g.values})
             for (method, opt), g in sorted(tput.groupby(["method", "opt"]),
                                            key=lambda kv: (kv[0][1] != "none", method_key(kv[0][0])))
             for g in [g.groupby("batch_size")["tps"].mean()]]
    gap = lora_gap(points)
    gap = pd.DataFrame({"panel": "gap", "method": "lora - lora_fa", "opt": "none", "x": gap.index, "gb": gap.values})
    frames = [points.assign(panel="memory")] + speed + ([gap] if not gap.empty else [])
    out = pd.concat(frames, ignore_index=True).reindex(
        columns=["panel", "method", "opt", "x", "gb", "oom", "tokens_per_s"])
    out["oom"] = out["oom"].astype(object).where(out["oom"].notna(), False).astype(bool)
    out.attrs = dict(points.attrs)
    return out


# ---- Figure 3 ---------------------------------------------------------------------------------

def fig3_data(records: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, method, opt), sorted: GB per segment (mean over repeats), total, and
    activations_vs_lora (activations over the same model's LoRA without optimisations; NaN
    without one). opt: the memory optimisations (optimisation()), "none" for the paper's setting."""
    runs = _records(records, "fig3")
    runs = runs[runs["memory_breakdown"].map(lambda b: isinstance(b, dict) and bool(b))]
    if runs.empty:
        raise NoRecords("no fig3 records with memory_breakdown")
    runs = runs.assign(opt=runs["options"].map(optimisation))
    rows = [{"model": model, "method": method, "opt": opt,
             **{s: statistics.fmean((b.get(s) or 0) / GIB for b in g["memory_breakdown"]) for s in SEGMENTS}}
            for (model, method, opt), g in runs.groupby(["model", "method", "opt"], sort=False)]
    rows.sort(key=lambda row: (row["model"], row["opt"] != "none", row["opt"], method_key(row["method"])))
    lora = {row["model"]: row["activations"] for row in rows if row["method"] == "lora" and row["opt"] == "none"}
    for row in rows:
        row["total"] = sum(row[s] for s in SEGMENTS)
        row["activations_vs_lora"] = row["activations"] / lora[row["model"]] if lora.get(row["model"]) else np.nan
    frame = pd.DataFrame(rows)
    frame.attrs["subtitle"] = _subtitle(runs)
    return frame


# ---- Figure 4 ---------------------------------------------------------------------------------

def _history_value(entry: dict, value) -> float | None:
    flat = {**entry, **(entry.get("metrics") or {})}
    flat.update({k[5:]: v for k, v in flat.items() if isinstance(k, str) and k.startswith("eval_")})
    return value(flat)


def _curve(runs: pd.DataFrame, value) -> pd.DataFrame:
    """The runs of the best setting (all, if none is eligible): step -> mean, low, high over seeds."""
    best = best_setting(runs, value)  # the lr the final metric selects, as the tables do
    chosen = best.runs if best else runs.to_dict("records")
    curves = [pd.Series({e["step"]: _history_value(e, value) for e in r["eval_history"] if "step" in e},
                        dtype=float).dropna() for r in chosen]
    table = pd.concat(curves, axis=1).sort_index()
    return pd.DataFrame({"step": table.index, "mean": table.mean(axis=1).values, "low": table.min(axis=1).values,
                         "high": table.max(axis=1).values, "n_seeds": table.shape[1],
                         "lr": best.key.get("lr") if best else None})


def fig4_data(records: pd.DataFrame) -> pd.DataFrame:
    """Evaluation curves: one row per (task, model, method, step) with the mean, min and max over
    the seeds of the best setting, its lr and seed count, and the metric's name."""
    # Figure 4's own sweep if it ran; else Table 2's CoLA and SST-2 runs, when they logged
    # periodic evaluations (the mini scale does, to avoid training the same runs twice).
    runs = runs_of(records, "fig4")
    if runs.empty:
        runs = runs_of(records, "table2")
        runs = runs[runs["task"].isin(P.FIG4["tasks"]) & runs["method"].isin(CONVERGENCE_METHODS)]
    runs = runs[runs["eval_history"].map(lambda h: isinstance(h, list) and len(h) > 1)]
    if runs.empty:
        raise NoRecords("no fig4 (or table2 CoLA/SST-2) records with an evaluation history")
    frames = []
    for task in sorted(set(runs["task"]), key=lambda t: (t not in P.FIG4["tasks"], t)):
        at = runs[runs["task"] == task]
        for (model, method), g in sorted(at.groupby(["model", "method"]), key=lambda kv: method_key(kv[0][1])):
            frames.append(_curve(g, task_value(task)).assign(task=task, metric=metric_label(task),
                                                              model=model, method=method))
    return pd.concat(frames, ignore_index=True)[
        ["task", "metric", "model", "method", "lr", "n_seeds", "step", "mean", "low", "high"]]


# ---- Figure 6 ---------------------------------------------------------------------------------

def _grid_cell(g: pd.DataFrame, value) -> tuple[float, str]:
    """A cell's mean over its ok runs, or NaN and why: div(erged), oom, or fail(ed / no metric)."""
    statuses = set(g["status"])
    vals = [v for v in (value(m) for m in g[g["status"] == "ok"]["metrics"]) if v is not None]
    if vals and not {"diverged", "oom"} & statuses:
        return statistics.fmean(vals), ""
    return np.nan, "div" if "diverged" in statuses else ("oom" if "oom" in statuses else "fail")


def fig6_data(records: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, r, lr) that has runs: the mean of the task's metric, or a mark."""
    runs = _records(records, "fig6")
    runs = runs[runs["r"].notna() & runs["lr"].notna()]
    if runs.empty:
        raise NoRecords("no fig6 records with r and lr")
    task = next(iter(runs["task"].dropna()), P.FIG6["task"])
    value = task_value(task)
    rows = []
    for method in sorted(set(runs["method"]), key=method_key):
        for (r, lr), g in runs[runs["method"] == method].groupby(["r", "lr"]):
            mean, mark = _grid_cell(g, value)
            rows.append({"method": method, "r": int(r), "lr": float(lr), "value": mean, "mark": mark})
    frame = pd.DataFrame(rows)
    tasks = ", ".join(task_label(t) for t in dict.fromkeys(runs["task"].dropna()))
    frame.attrs.update(tasks=tasks, metric=metric_label(task), models=", ".join(sorted(set(runs["model"]))),
                       paper_task="" if set(runs["task"]) <= {P.FIG6["task"]}
                       else f"; the paper's is {task_label(P.FIG6['task'])}")
    return frame
