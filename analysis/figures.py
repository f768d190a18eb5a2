"""Figures 2-6 from run records, with the paper's stated values marked.

    python -m analysis.figures --scale mini [--only fig3] [--root DIR]

Each builder takes the records DataFrame and returns a matplotlib Figure, or raises
NoRecords saying what is missing. See analysis/__init__.py for the record conventions.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from analysis import paper_values as P  # noqa: E402
from analysis.common import (  # noqa: E402
    GIB, best_setting, clean, fmt_lr, load, method_key, method_label, runs_of, scale_dir,
)
from analysis.names import is_paper_model, metric_label, task_label, task_value  # noqa: E402

COLORS = {"full_ft": "tab:gray", "prompt_tuning": "tab:brown", "lora_qv": "tab:purple",
          "lora": "tab:blue", "lora_fa": "tab:orange", "lora_fa_corrected": "tab:green"}
SEGMENTS = {"weights": "tab:blue", "gradients": "tab:orange", "optimizer_states": "tab:green",
            "activations": "tab:red", "other": "tab:gray"}


class NoRecords(Exception):
    """A figure has no usable records; the message says which."""


def _records(records, experiment) -> pd.DataFrame:
    runs = runs_of(records, experiment)
    if runs.empty:
        raise NoRecords(f"no records with experiment={experiment!r}")
    return runs


def color(method: str) -> str:
    return COLORS.get(method, "black")


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
    return " + ".join(parts) or "none"


def _paper_scale(runs: pd.DataFrame) -> bool:
    """Whether the runs are of the paper's own models (so the paper's GB values are comparable)."""
    return all(is_paper_model(m) for m in runs["model"])


def _memory_points(runs: pd.DataFrame, x: pd.Series) -> pd.DataFrame:
    """x, GB (mean over repeats), oom flag per (method, optimisation, x)."""
    df = pd.DataFrame({"method": runs["method"], "opt": runs["options"].map(optimisation), "x": x,
                       "gb": runs["peak_memory_bytes"].map(clean).astype(float) / GIB,
                       "status": runs["status"]})
    df = df[df["x"].notna()]
    # A simulated point above the GPU's capacity has a value (status oom): it stays on its line,
    # marked; a real out-of-memory error has none and is drawn as a cross at the top.
    valued = df[df["status"].isin(["ok", "oom"]) & df["gb"].notna()]
    ok = valued.groupby(["method", "opt", "x"], as_index=False).agg(gb=("gb", "mean"), over=("status", lambda s: (s == "oom").any()))
    oom = df[(df["status"] == "oom") & df["gb"].isna()][["method", "opt", "x"]].drop_duplicates()
    return ok, oom


def _series_label(method, opt):
    return method_label(method) + ("" if opt == "none" else f" + {opt}")


def _log2_x(ax):
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))


def _opts(ok, oom) -> list[str]:
    return sorted(set(ok["opt"]) | set(oom["opt"]), key=lambda o: (o != "none", o))


def _memory_lines(ax, runs, x, xlabel, logx=False, only_opt=None):
    """Peak memory against x, a line per (method, optimisation); OOM points as crosses at the top."""
    ok, oom = _memory_points(runs, x)
    if ok.empty and oom.empty:
        raise NoRecords("no records with peak_memory_bytes or status oom")
    opts = _opts(ok, oom)
    if only_opt is not None:
        ok, oom = ok[ok["opt"] == only_opt], oom[oom["opt"] == only_opt]
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D", "v", "P"]
    for (method, opt), g in sorted(ok.groupby(["method", "opt"]),
                                   key=lambda kv: (opts.index(kv[0][1]), method_key(kv[0][0]))):
        g = g.sort_values("x")
        i = 0 if only_opt is not None else opts.index(opt)
        ax.plot(g["x"], g["gb"], color=color(method), linestyle=styles[i % 4], marker=markers[i % 6],
                label=method_label(method) if only_opt is not None else _series_label(method, opt))
        over = g[g["over"]]
        ax.plot(over["x"], over["gb"], marker="x", markersize=11, markeredgewidth=2, color="black", linestyle="none")
    if ok["over"].any():
        ax.plot([], [], "kx", markersize=9, markeredgewidth=2, linestyle="none", label="above the GPU's memory (OOM)")
    for _, row in oom.iterrows():
        ax.plot(row["x"], 0.97, transform=ax.get_xaxis_transform(), marker="x", markersize=10,
                color=color(row["method"]), linestyle="none", clip_on=False)
    if not oom.empty:
        ax.plot([], [], "kx", linestyle="none", label="out of memory (at top)")
    if logx:
        _log2_x(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("peak memory (GB)")
    top = max(ok["gb"].max() if not ok.empty else 0, ax.get_ylim()[1])
    ax.set_ylim(0, top * 1.1 or 1)
    ax.grid(alpha=0.3)
    return ok


def _subtitle(runs: pd.DataFrame) -> str:
    models = ", ".join(sorted(set(runs["model"].dropna())))
    sources = ", ".join(sorted(set(runs["memory_source"].map(clean).dropna())))
    return f"{models}" + (f"; memory: {sources}" if sources else "")


# ---- Figure 2 ------------------------------------------------------------------------------

def build_fig2a(records: pd.DataFrame):
    runs = _records(records, "fig2a")
    x = runs["batch_size"].map(clean)
    opts = _opts(*_memory_points(runs, x))
    if not opts:
        raise NoRecords("no fig2a records with peak_memory_bytes or status oom")
    fig, axes = plt.subplots(1, len(opts), figsize=(4 * len(opts), 4.2), sharey=True, squeeze=False)
    for ax, opt in zip(axes[0], opts):
        _memory_lines(ax, runs, x, "batch size", logx=True, only_opt=opt)
        ax.set_title("no optimisation" if opt == "none" else opt, fontsize=10)
        ax.legend(fontsize=8, loc="upper left")
    for ax in axes[0][1:]:
        ax.set_ylabel("")
    fig.suptitle(f"Fig. 2a: peak memory of LoRA and LoRA-FA under memory optimisations ({_subtitle(runs)})",
                 fontsize=10)
    fig.tight_layout()
    return fig


def build_fig2b(records: pd.DataFrame):
    runs = _records(records, "fig2b")
    layers = runs["options"].map(lambda o: clean(o.get("num_adapted_layers")) if isinstance(o, dict) else None)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    _memory_lines(ax, runs, layers, "number of adapted linear layers")
    if _paper_scale(runs):
        ax.axhline(P.FIG2B["gpu_gb"], color="black", linestyle="--", linewidth=1,
                   label=f"paper's GPU limit ({P.FIG2B['gpu_gb']} GB A100)")
    ax.set_title(f"Fig. 2b: memory vs adapted layers ({_subtitle(runs)})\n"
                 f"paper: {P.FIG2B['claim']}", fontsize=9)
    ax.legend(fontsize=8)
    return fig


def build_fig2c(records: pd.DataFrame):
    runs = _records(records, "fig2c")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ok = _memory_lines(ax, runs, runs["r"].map(clean), "rank r", logx=True)
    base = ok[ok["opt"] == "none"].pivot_table(index="x", columns="method", values="gb")
    text = f"paper (LLaMA-7B): LoRA above LoRA-FA by {P.FIG2C['mean_gap_gb']:g} GB on average"
    if {"lora", "lora_fa"} <= set(base.columns):
        gap = (base["lora"] - base["lora_fa"]).dropna()
        if not gap.empty:
            text = f"mean gap LoRA − LoRA-FA: ours {gap.mean():.2f} GB\n" + text
    ax.text(0.02, 0.04, text, transform=ax.transAxes, fontsize=8,
            bbox=dict(facecolor="white", alpha=0.8, edgecolor="0.7"))
    ax.set_title(f"Fig. 2c: memory vs rank ({_subtitle(runs)})", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    return fig


# ---- Figure 3 ------------------------------------------------------------------------------

def build_fig3(records: pd.DataFrame):
    runs = _records(records, "fig3")
    runs = runs[runs["memory_breakdown"].map(lambda b: isinstance(b, dict) and bool(b))]
    if runs.empty:
        raise NoRecords("no fig3 records with memory_breakdown")
    bars = {}  # (model, method) -> mean GB per segment
    for (model, method), g in runs.groupby(["model", "method"], sort=False):
        bars[(model, method)] = {s: statistics.fmean((b.get(s) or 0) / GIB for b in g["memory_breakdown"])
                                 for s in SEGMENTS}
    keys = sorted(bars, key=lambda k: (k[0], method_key(k[1])))
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 1.2 + 0.8 * len(keys)),
                                  gridspec_kw={"width_ratios": [2.2, 1]})
    labels = [f"{method_label(me)}\n{mo}" for mo, me in keys]
    for i, key in enumerate(keys):
        total, left = sum(bars[key].values()), 0.0
        for s, c in SEGMENTS.items():
            w = bars[key][s]
            ax.barh(i, w, left=left, color=c, label=s.replace("_", " ") if i == 0 else None)
            if total and w / total > 0.07:
                ax.text(left + w / 2, i, f"{w:.3g}\n{100 * w / total:.0f}%", ha="center", va="center",
                        fontsize=7, color="white")
            left += w
        ax.text(left, i, f" {total:.3g} GB", va="center", fontsize=8)
    ax.set_xlim(0, 1.12 * max(sum(b.values()) for b in bars.values()) or 1)
    ax.set_yticks(range(len(keys)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("memory (GB)")
    ax.set_title(f"Fig. 3: runtime memory breakdown ({_subtitle(runs)})", fontsize=10)
    ax.legend(fontsize=8, ncol=5, loc="lower center", bbox_to_anchor=(0.5, 1.08), frameon=False)

    # activations relative to LoRA: scale-free, so ours compares with the paper's at any model size
    methods = [m for m in ("lora", "lora_fa", "lora_fa_corrected") if any(k[1] == m for k in keys)]
    paper = P.FIG3["activations_gb"]
    width = 0.38
    for j, method in enumerate(methods):
        for model in dict.fromkeys(k[0] for k in keys):
            if (model, "lora") in bars and (model, method) in bars and bars[(model, "lora")]["activations"]:
                ours = bars[(model, method)]["activations"]
                rel = ours / bars[(model, "lora")]["activations"]
                ax2.bar(j - width / 2, rel, width, color=color(method))
                ax2.text(j - width / 2, rel, f"{ours:.3g} GB", ha="center", va="bottom", fontsize=7)
                break
        if method in paper:
            rel = paper[method] / paper["lora"]
            ax2.bar(j + width / 2, rel, width, color=color(method), hatch="//", alpha=0.45, edgecolor="black")
            ax2.text(j + width / 2, rel, f"{paper[method]} GB", ha="center", va="bottom", fontsize=7)
    handles = [Patch(facecolor="0.5", label="ours"),
               Patch(facecolor="0.5", hatch="//", alpha=0.45, edgecolor="black",
                     label="paper (LLaMA2-7B, b=16, s=1024, r=64)")]
    ax2.set_xticks(range(len(methods)), [method_label(m) for m in methods], fontsize=8)
    ax2.set_ylabel("activation memory / LoRA's")
    ax2.set_ylim(0, 1.15)
    ax2.set_title("Activations relative to LoRA", fontsize=10)
    ax2.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), frameon=False)
    fig.tight_layout()
    return fig


# ---- Figure 4 ------------------------------------------------------------------------------

def _history_value(entry: dict, value) -> float | None:
    flat = {**entry, **(entry.get("metrics") or {})}
    flat.update({k[5:]: v for k, v in flat.items() if isinstance(k, str) and k.startswith("eval_")})
    return value(flat)


def build_fig4(records: pd.DataFrame):
    # Figure 4's own sweep if it ran; else Table 2's CoLA and SST-2 runs, when they logged
    # periodic evaluations (the mini scale does, to avoid training the same runs twice).
    runs = runs_of(records, "fig4")
    if runs.empty:
        runs = runs_of(records, "table2")
        runs = runs[runs["task"].isin(P.FIG4["tasks"]) & runs["method"].isin(["full_ft", "lora", "lora_fa"])]
    runs = runs[runs["eval_history"].map(lambda h: isinstance(h, list) and len(h) > 1)]
    if runs.empty:
        raise NoRecords("no fig4 (or table2 CoLA/SST-2) records with an evaluation history")
    tasks = sorted(set(runs["task"]), key=lambda t: (t not in P.FIG4["tasks"], t))
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.3), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        name, value = metric_label(task), task_value(task)
        at = runs[runs["task"] == task]
        for (model, method), g in sorted(at.groupby(["model", "method"]), key=lambda kv: method_key(kv[0][1])):
            best = best_setting(g, value)  # the lr the final metric selects, as the tables do
            chosen = best.runs if best else g.to_dict("records")
            curves = [pd.Series({e["step"]: _history_value(e, value) for e in r["eval_history"] if "step" in e},
                                dtype=float).dropna() for r in chosen]
            table = pd.concat(curves, axis=1).sort_index()
            mean = table.mean(axis=1)
            lr = f", lr {fmt_lr(best.key['lr'])}" if best and best.key.get("lr") else ""
            ax.plot(mean.index, mean.values, marker="o", markersize=3, color=color(method),
                    label=f"{method_label(method)} ({model}{lr}, {table.shape[1]} seed(s))")
            if table.shape[1] > 1:
                ax.fill_between(mean.index, table.min(axis=1), table.max(axis=1), color=color(method), alpha=0.15)
        ax.set_xlabel("training step")
        ax.set_ylabel(f"eval {name} (%)")
        ax.set_title(f"{task}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Fig. 4: convergence (mean over seeds, band = min-max); paper: LoRA-FA converges like "
                 "LoRA and Full-FT after ~10 steps", fontsize=9)
    fig.tight_layout()
    return fig


# ---- Figure 5 ------------------------------------------------------------------------------

def build_fig5(records: pd.DataFrame):
    runs = _records(records, "fig5")
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(16, 4.5))
    ok = _memory_lines(a1, runs, runs["batch_size"].map(clean), "batch size", logx=True)
    a1.set_title("peak memory", fontsize=10)
    a1.legend(fontsize=8)

    tput = runs[runs["status"] == "ok"].copy()
    num = {c: pd.to_numeric(tput[c], errors="coerce") for c in ("batch_size", "seq_len", "step_time_s", "tokens_per_s")}
    tput["tps"] = num["tokens_per_s"].fillna(num["batch_size"] * num["seq_len"] / num["step_time_s"])
    tput["opt"] = tput["options"].map(optimisation)
    tput = tput[tput["tps"].notna()]
    for (method, opt), g in sorted(tput.groupby(["method", "opt"]), key=lambda kv: (kv[0][1] != "none", method_key(kv[0][0]))):
        g = g.groupby("batch_size")["tps"].mean()
        a2.plot(g.index, g.values, marker="o", color=color(method), linestyle="-" if opt == "none" else "--",
                label=_series_label(method, opt))
    _log2_x(a2)
    a2.set_xlabel("batch size")
    a2.set_ylabel("throughput (tokens/s)")
    a2.set_title("speed", fontsize=10)
    a2.grid(alpha=0.3)
    if not tput.empty:
        a2.legend(fontsize=8)
    else:  # the simulator measures memory only; speed needs the cuda backend
        a2.text(0.5, 0.5, "no step times in these records\n(memory simulated; speed needs backend=cuda)",
                transform=a2.transAxes, ha="center", va="center", fontsize=9, color="dimgray")

    base = ok[ok["opt"] == "none"].pivot_table(index="x", columns="method", values="gb")
    lo, hi = P.FIG5["gap_gb"]
    if {"lora", "lora_fa"} <= set(base.columns):
        gap = (base["lora"] - base["lora_fa"]).dropna()
        a3.plot(gap.index, gap.values, marker="o", color=color("lora_fa"), label="ours: LoRA − LoRA-FA")
    if _paper_scale(runs):
        a3.axhspan(lo, hi, color="0.6", alpha=0.3, label=f"paper: {lo:g}-{hi:g} GB (LLaMA2-7B, batch 1-32)")
    else:
        a3.text(0.02, 0.95, f"paper (LLaMA2-7B, s=1024, r=64): {lo:g}-{hi:g} GB;\nnot comparable with these models",
                transform=a3.transAxes, va="top", fontsize=8)
    _log2_x(a3)
    a3.set_xlabel("batch size")
    a3.set_ylabel("memory saved by LoRA-FA (GB)")
    a3.set_title("peak memory gap", fontsize=10)
    a3.set_ylim(bottom=0)
    a3.grid(alpha=0.3)
    a3.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Fig. 5: memory and speed against batch size ({_subtitle(runs)})", fontsize=10)
    fig.tight_layout()
    return fig


# ---- Figure 6 ------------------------------------------------------------------------------

def build_fig6(records: pd.DataFrame):
    runs = _records(records, "fig6")
    runs = runs[runs["r"].notna() & runs["lr"].notna()]
    if runs.empty:
        raise NoRecords("no fig6 records with r and lr")
    value = task_value(next(iter(runs["task"].dropna()), P.FIG6["task"]))
    ranks = sorted(set(int(clean(r)) for r in runs["r"]))
    lrs = sorted(set(float(clean(x)) for x in runs["lr"]))
    methods = sorted(set(runs["method"]), key=method_key)
    grids, marks = {}, {}
    for method in methods:
        grid = np.full((len(ranks), len(lrs)), np.nan)
        mark = {}
        for (r, lr), g in runs[runs["method"] == method].groupby(["r", "lr"]):
            i, j = ranks.index(int(r)), lrs.index(float(lr))
            vals = [v for v in (value(m) for m in g[g["status"] == "ok"]["metrics"]) if v is not None]
            if vals and not {"diverged", "oom"} & set(g["status"]):
                grid[i, j] = statistics.fmean(vals)
            else:
                mark[(i, j)] = "div" if "diverged" in set(g["status"]) else (
                    "oom" if "oom" in set(g["status"]) else "fail")
        grids[method], marks[method] = grid, mark
    finite = np.concatenate([g[np.isfinite(g)] for g in grids.values()])
    vmin, vmax = (finite.min(), finite.max()) if finite.size else (0, 100)
    fig, axes = plt.subplots(1, len(methods), figsize=(1.2 + 0.75 * len(lrs) * len(methods) + 1.5,
                                                       1.9 + 0.5 * len(ranks)), squeeze=False,
                             layout="constrained")
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.85")
    for ax, method in zip(axes[0], methods):
        grid = grids[method]
        im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", origin="lower")
        for i in range(len(ranks)):
            for j in range(len(lrs)):
                text = f"{grid[i, j]:.1f}" if np.isfinite(grid[i, j]) else marks[method].get((i, j), "")
                shade = (grid[i, j] - vmin) / (vmax - vmin) if np.isfinite(grid[i, j]) and vmax > vmin else 1
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if shade < 0.6 else "black")
        ax.set_xticks(range(len(lrs)), [fmt_lr(x) for x in lrs], rotation=45, fontsize=8)
        ax.set_yticks(range(len(ranks)), ranks, fontsize=8)
        ax.set_xlabel("learning rate")
        if ax is axes[0][0]:
            ax.set_ylabel("rank r")
        ax.set_title(method_label(method), fontsize=10)
    tasks = ", ".join(task_label(t) for t in dict.fromkeys(runs["task"].dropna()))
    fig.colorbar(im, ax=axes[0].tolist(), label=f"{tasks} accuracy (%)")
    paper_task = "" if set(runs["task"]) <= {P.FIG6["task"]} else f"; the paper's is {task_label(P.FIG6['task'])}"
    fig.suptitle(f"Fig. 6: rank x learning rate on {tasks} ({', '.join(sorted(set(runs['model'])))}{paper_task})\n"
                 "grey = not run, div = diverged", fontsize=9)
    return fig


# ---- files and CLI --------------------------------------------------------------------------

FIGURES = {"fig2a": build_fig2a, "fig2b": build_fig2b, "fig2c": build_fig2c, "fig3": build_fig3,
           "fig4": build_fig4, "fig5": build_fig5, "fig6": build_fig6}


def write(name: str, records: pd.DataFrame, out_dir: Path) -> Path:
    """Build one figure and save out_dir/<name>.png; raises NoRecords."""
    fig = FIGURES[name](records)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.png"
    try:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="mini", help="results/<scale>/ to read and write (default mini)")
    parser.add_argument("--only", choices=sorted(FIGURES), action="append", help="build only these figures")
    parser.add_argument("--root", help="results root (default $LORAFA_RESULTS_DIR or results/)")
    args = parser.parse_args(argv)
    base = scale_dir(args.scale, args.root)
    records = load(args.scale, args.root)
    print(f"{len(records)} run record(s) in {base / 'runs.jsonl'}")
    for name in args.only or FIGURES:
        try:
            print(f"{name}: -> {write(name, records, base / 'figures')}")
        except NoRecords as e:
            print(f"{name}: missing ({e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
