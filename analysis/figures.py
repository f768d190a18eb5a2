"""Figures 2-6 from run records, with the paper's stated values marked.

    python -m analysis.figures --scale mini [--only fig3] [--root DIR]

Each figure is a data step (analysis.figure_data.figN_data: records -> the plotted values as a
DataFrame, or NoRecords saying what is missing) and a drawing step here (draw_figN: that frame
-> a matplotlib Figure). See analysis/__init__.py for the record conventions.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from analysis import paper_values as P  # noqa: E402
from analysis.common import clean, cli_records, fmt_lr, method_key, method_label  # noqa: E402
from analysis.figure_data import (  # noqa: E402
    ACTIVATION_METHODS, SEGMENTS, NoRecords, fig2a_data, fig2b_data, fig2c_data, fig3_data, fig4_data,
    fig5_data, fig6_data,
)

COLORS = {"full_ft": "tab:gray", "prompt_tuning": "tab:brown", "lora_qv": "tab:purple",
          "lora": "tab:blue", "lora_fa": "tab:orange", "lora_fa_corrected": "tab:green"}
SEGMENT_COLORS = dict(zip(SEGMENTS, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:gray")))


def color(method: str) -> str:
    return COLORS.get(method, "black")


def _series_label(method, opt):
    return method_label(method) + ("" if opt == "none" else f" + {opt}")


def _log2_x(ax):
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))


def _opts(points) -> list[str]:
    return sorted(set(points["opt"]), key=lambda o: (o != "none", o))


def _memory_lines(ax, points, xlabel, logx=False, only_opt=None):
    """Peak memory against x, a line per (method, optimisation); OOM points as crosses at the top."""
    opts = _opts(points)
    if only_opt is not None:
        points = points[points["opt"] == only_opt]
    ok, oom = points[points["gb"].notna()], points[points["gb"].isna()]
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D", "v", "P"]
    for (method, opt), g in sorted(ok.groupby(["method", "opt"]),
                                   key=lambda kv: (opts.index(kv[0][1]), method_key(kv[0][0]))):
        g = g.sort_values("x")
        i = 0 if only_opt is not None else opts.index(opt)
        ax.plot(g["x"], g["gb"], color=color(method), linestyle=styles[i % 4], marker=markers[i % 6],
                label=method_label(method) if only_opt is not None else _series_label(method, opt))
        over = g[g["oom"]]
        ax.plot(over["x"], over["gb"], marker="x", markersize=11, markeredgewidth=2, color="black", linestyle="none")
    if ok["oom"].any():
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


# ---- Figure 2 ------------------------------------------------------------------------------

def draw_fig2a(points: pd.DataFrame):
    opts = _opts(points)
    fig, axes = plt.subplots(1, len(opts), figsize=(4 * len(opts), 4.2), sharey=True, squeeze=False)
    for ax, opt in zip(axes[0], opts):
        _memory_lines(ax, points, "batch size", logx=True, only_opt=opt)
        ax.set_title("no optimisation" if opt == "none" else opt, fontsize=10)
        ax.legend(fontsize=8, loc="upper left")
    for ax in axes[0][1:]:
        ax.set_ylabel("")
    fig.suptitle("Fig. 2a: peak memory of LoRA and LoRA-FA under memory optimisations "
                 f"({points.attrs['subtitle']})", fontsize=10)
    fig.tight_layout()
    return fig


def draw_fig2b(points: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    _memory_lines(ax, points, "number of adapted linear layers")
    if points.attrs["paper_scale"]:
        ax.axhline(P.FIG2B["gpu_gb"], color="black", linestyle="--", linewidth=1,
                   label=f"paper's GPU limit ({P.FIG2B['gpu_gb']} GB A100)")
    ax.set_title(f"Fig. 2b: memory vs adapted layers ({points.attrs['subtitle']})\n"
                 f"paper: {P.FIG2B['claim']}", fontsize=9)
    ax.legend(fontsize=8)
    return fig


def draw_fig2c(points: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    _memory_lines(ax, points, "rank r", logx=True)
    text = f"paper (LLaMA-7B): LoRA above LoRA-FA by {P.FIG2C['mean_gap_gb']:g} GB on average"
    if points.attrs["mean_gap_gb"] is not None:
        text = f"mean gap LoRA − LoRA-FA: ours {points.attrs['mean_gap_gb']:.2f} GB\n" + text
    ax.text(0.02, 0.04, text, transform=ax.transAxes, fontsize=8,
            bbox=dict(facecolor="white", alpha=0.8, edgecolor="0.7"))
    ax.set_title(f"Fig. 2c: memory vs rank ({points.attrs['subtitle']})", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    return fig


# ---- Figure 3 ------------------------------------------------------------------------------

def _breakdown_bars(ax, bars: pd.DataFrame, subtitle: str):
    """A stacked bar per (model, method), segments labelled with GB and share where they fit."""
    for i, row in enumerate(bars.itertuples(index=False)):
        left = 0.0
        for s, c in SEGMENT_COLORS.items():
            w = getattr(row, s)
            ax.barh(i, w, left=left, color=c, label=s.replace("_", " ") if i == 0 else None)
            if row.total and w / row.total > 0.07:
                ax.text(left + w / 2, i, f"{w:.3g}\n{100 * w / row.total:.0f}%", ha="center", va="center",
                        fontsize=7, color="white")
            left += w
        ax.text(left, i, f" {row.total:.3g} GB", va="center", fontsize=8)
    ax.set_xlim(0, 1.12 * bars["total"].max() or 1)
    ax.set_yticks(range(len(bars)), [f"{method_label(me)}{'' if opt == 'none' else ' + ' + opt}\n{mo}"
                                     for mo, me, opt in zip(bars["model"], bars["method"], bars["opt"])], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("memory (GB)")
    ax.set_title(f"Fig. 3: runtime memory breakdown ({subtitle})", fontsize=10)
    ax.legend(fontsize=8, ncol=5, loc="lower center", bbox_to_anchor=(0.5, 1.08), frameon=False)


def _relative_activations(ax, bars: pd.DataFrame):
    """Activations relative to LoRA, ours (the first model with a LoRA bar) beside the paper's:
    scale-free, so ours compares with the paper's at any model size."""
    bars = bars[bars["opt"] == "none"]  # the paper's setting
    methods = [m for m in ACTIVATION_METHODS if m in set(bars["method"])]
    paper = P.FIG3["activations_gb"]
    width = 0.38
    for j, method in enumerate(methods):
        ours = bars[(bars["method"] == method) & bars["activations_vs_lora"].notna()]
        if not ours.empty:
            row = ours.iloc[0]
            ax.bar(j - width / 2, row["activations_vs_lora"], width, color=color(method))
            ax.text(j - width / 2, row["activations_vs_lora"], f"{row['activations']:.3g} GB", ha="center",
                    va="bottom", fontsize=7)
        if method in paper:
            rel = paper[method] / paper["lora"]
            ax.bar(j + width / 2, rel, width, color=color(method), hatch="//", alpha=0.45, edgecolor="black")
            ax.text(j + width / 2, rel, f"{paper[method]} GB", ha="center", va="bottom", fontsize=7)
    handles = [Patch(facecolor="0.5", label="ours"),
               Patch(facecolor="0.5", hatch="//", alpha=0.45, edgecolor="black",
                     label="paper (LLaMA2-7B, b=16, s=1024, r=64)")]
    ax.set_xticks(range(len(methods)), [method_label(m) for m in methods], fontsize=8)
    ax.set_ylabel("activation memory / LoRA's")
    ax.set_ylim(0, 1.15)
    ax.set_title("Activations relative to LoRA", fontsize=10)
    ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), frameon=False)


def draw_fig3(bars: pd.DataFrame):
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 1.2 + 0.8 * len(bars)),
                                  gridspec_kw={"width_ratios": [2.2, 1]})
    _breakdown_bars(ax, bars, bars.attrs["subtitle"])
    _relative_activations(ax2, bars)
    fig.tight_layout()
    return fig


# ---- Figure 4 ------------------------------------------------------------------------------

def draw_fig4(curves: pd.DataFrame):
    tasks = list(dict.fromkeys(curves["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.3), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        at = curves[curves["task"] == task]
        for (model, method), g in at.groupby(["model", "method"], sort=False):
            lr, n = clean(g["lr"].iloc[0]), int(g["n_seeds"].iloc[0])
            lr = f", lr {fmt_lr(lr)}" if lr else ""
            ax.plot(g["step"], g["mean"].values, marker="o", markersize=3, color=color(method),
                    label=f"{method_label(method)} ({model}{lr}, {n} seed(s))")
            if n > 1:
                ax.fill_between(g["step"], g["low"].values, g["high"].values, color=color(method), alpha=0.15)
        ax.set_xlabel("training step")
        ax.set_ylabel(f"eval {at['metric'].iloc[0]} (%)")
        ax.set_title(f"{task}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Fig. 4: convergence (mean over seeds, band = min-max); paper: LoRA-FA converges like "
                 "LoRA and Full-FT after ~10 steps", fontsize=9)
    fig.tight_layout()
    return fig


# ---- Figure 5 ------------------------------------------------------------------------------

def _speed(ax, speed: pd.DataFrame):
    for (method, opt), g in speed.groupby(["method", "opt"], sort=False):
        ax.plot(g["x"].values, g["tokens_per_s"].values, marker="o", color=color(method),
                linestyle="-" if opt == "none" else "--", label=_series_label(method, opt))
    _log2_x(ax)
    ax.set_xlabel("batch size")
    ax.set_ylabel("throughput (tokens/s)")
    ax.set_title("speed", fontsize=10)
    ax.grid(alpha=0.3)
    if not speed.empty:
        ax.legend(fontsize=8)
    else:  # the simulator measures memory only; speed needs the cuda backend
        ax.text(0.5, 0.5, "no step times in these records\n(memory simulated; speed needs backend=cuda)",
                transform=ax.transAxes, ha="center", va="center", fontsize=9, color="dimgray")


def _gap(ax, gap: pd.DataFrame, paper_scale: bool):
    lo, hi = P.FIG5["gap_gb"]
    if not gap.empty:
        ax.plot(gap["x"].values, gap["gb"].values, marker="o", color=color("lora_fa"), label="ours: LoRA − LoRA-FA")
    if paper_scale:
        ax.axhspan(lo, hi, color="0.6", alpha=0.3, label=f"paper: {lo:g}-{hi:g} GB (LLaMA2-7B, batch 1-32)")
    else:
        ax.text(0.02, 0.95, f"paper (LLaMA2-7B, s=1024, r=64): {lo:g}-{hi:g} GB;\nnot comparable with these models",
                transform=ax.transAxes, va="top", fontsize=8)
    _log2_x(ax)
    ax.set_xlabel("batch size")
    ax.set_ylabel("memory saved by LoRA-FA (GB)")
    ax.set_title("peak memory gap", fontsize=10)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")


def draw_fig5(panels: pd.DataFrame):
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(16, 4.5))
    _memory_lines(a1, panels[panels["panel"] == "memory"], "batch size", logx=True)
    a1.set_title("peak memory", fontsize=10)
    a1.legend(fontsize=8)
    _speed(a2, panels[panels["panel"] == "speed"])
    _gap(a3, panels[panels["panel"] == "gap"], panels.attrs["paper_scale"])
    fig.suptitle(f"Fig. 5: memory and speed against batch size ({panels.attrs['subtitle']})", fontsize=10)
    fig.tight_layout()
    return fig


# ---- Figure 6 ------------------------------------------------------------------------------

def _grids(cells: pd.DataFrame, ranks: list, lrs: list) -> dict[str, tuple[np.ndarray, dict]]:
    """method -> (rank x lr array of values, NaN where none; {(i, j): mark})."""
    grids = {}
    for method, g in cells.groupby("method", sort=False):
        grid, marks = np.full((len(ranks), len(lrs)), np.nan), {}
        for row in g.itertuples(index=False):
            i, j = ranks.index(row.r), lrs.index(row.lr)
            grid[i, j] = row.value
            if row.mark:
                marks[(i, j)] = row.mark
        grids[method] = grid, marks
    return grids


def draw_fig6(cells: pd.DataFrame):
    ranks, lrs = sorted(set(cells["r"])), sorted(set(cells["lr"]))
    grids = _grids(cells, ranks, lrs)
    finite = cells["value"].dropna()
    vmin, vmax = (finite.min(), finite.max()) if len(finite) else (0, 100)
    fig, axes = plt.subplots(1, len(grids), figsize=(1.2 + 0.75 * len(lrs) * len(grids) + 1.5,
                                                     1.9 + 0.5 * len(ranks)), squeeze=False,
                             layout="constrained")
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.85")
    for ax, (method, (grid, marks)) in zip(axes[0], grids.items()):
        im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", origin="lower")
        for i in range(len(ranks)):
            for j in range(len(lrs)):
                text = f"{grid[i, j]:.1f}" if np.isfinite(grid[i, j]) else marks.get((i, j), "")
                shade = (grid[i, j] - vmin) / (vmax - vmin) if np.isfinite(grid[i, j]) and vmax > vmin else 1
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if shade < 0.6 else "black")
        ax.set_xticks(range(len(lrs)), [fmt_lr(x) for x in lrs], rotation=45, fontsize=8)
        ax.set_yticks(range(len(ranks)), ranks, fontsize=8)
        ax.set_xlabel("learning rate")
        if ax is axes[0][0]:
            ax.set_ylabel("rank r")
        ax.set_title(method_label(method), fontsize=10)
    a = cells.attrs
    fig.colorbar(im, ax=axes[0].tolist(), label=f"{a['tasks']} {a['metric']} (%)")
    fig.suptitle(f"Fig. 6: rank x learning rate on {a['tasks']} ({a['models']}{a['paper_task']})\n"
                 "grey = not run, div = diverged", fontsize=9)
    return fig


# ---- files and CLI --------------------------------------------------------------------------

# name -> (data step, drawing step)
FIGURES = {"fig2a": (fig2a_data, draw_fig2a), "fig2b": (fig2b_data, draw_fig2b), "fig2c": (fig2c_data, draw_fig2c),
           "fig3": (fig3_data, draw_fig3), "fig4": (fig4_data, draw_fig4), "fig5": (fig5_data, draw_fig5),
           "fig6": (fig6_data, draw_fig6)}


def build(name: str, records: pd.DataFrame):
    """The figure as a matplotlib Figure; raises NoRecords."""
    data, draw = FIGURES[name]
    return draw(data(records))


def write(name: str, records: pd.DataFrame, out_dir: Path) -> Path:
    """Build one figure and save out_dir/<name>.png; raises NoRecords."""
    fig = build(name, records)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.png"
    try:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    names, base, records, _ = cli_records(argv, __doc__.splitlines()[0], FIGURES, "figures")
    for name in names:
        try:
            print(f"{name}: -> {write(name, records, base / 'figures')}")
        except NoRecords as e:
            print(f"{name}: missing ({e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
