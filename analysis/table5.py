"""Table 5 (peak memory per model x method) from table5 records, beside the paper's values.

Two views of the same records, one module:

    build_table5(records)               every record, mean over repeats per model x method x rank:
                                        tables/table5.{csv,md} (python -m analysis.tables)
    configured_rows(records, cells)     the latest record of each configured cell
                                        (conf/memory/experiment/table5.yaml), with its activations and
                                        status, simulated OOM peaks included: the memory report,
                                        memory/table5_simulated.{csv,md} (experiments/memory.py --report)

Memory in GB of 2**30 bytes (analysis.common.GIB); the paper's values as printed.
"""

from __future__ import annotations

import pandas as pd

from analysis import paper_values as P
from analysis.cells import fmt_ours, row_keys, table_cell, tidy_frame
from analysis.common import (
    GIB, clean, fmt, latest, markdown, method_label, missing_reason, ratio, record_dicts, runs_of, summary,
)
from analysis.names import model_label, paper_model
from lorafa.memory.report import gib

METHODS = ("full_ft", "lora", "lora_fa")
RECOMPUTE_SUFFIX = " + sel. recomp."  # rows with selective recomputation (not in the paper)


def paper_cell(paper_label: str, method: str) -> dict:
    """The paper's rank, GB and "OOM" note for one cell (None, None, "" where it has no such cell)."""
    paper_r, paper_gb = P.TABLE5.get((paper_label, method), (None, None))
    oom = (paper_label, method) in P.TABLE5 and paper_gb is None
    return {"paper_r": paper_r, "paper_gb": paper_gb, "paper_note": "OOM" if oom else ""}


# ---- every record: the analysis table ---------------------------------------------------------

def recomputes(options) -> bool:
    """Whether a memory record ran with selective recomputation (lorafa.recompute)."""
    return bool(isinstance(options, dict) and options.get("selective_recompute"))


def build_table5(records: pd.DataFrame) -> pd.DataFrame:
    """One row per model x method x rank x selective recomputation: mean ± std of the ok runs'
    peaks, beside the paper (whose rows are without recomputation)."""
    runs = runs_of(records, "table5")
    runs = runs.assign(selective_recompute=runs["options"].map(recomputes))
    rows = []
    for model, pm, method in row_keys(runs, list(P.TABLE5)):
        mine_all = runs[(runs["model"] == model) & (runs["method"] == method)]
        for recompute in sorted(set(mine_all["selective_recompute"])) or [False]:
            rows += _table5_rows(model, pm, method, mine_all[mine_all["selective_recompute"] == recompute], recompute)
    return tidy_frame(rows)


def _table5_rows(model, pm, method, mine, recompute: bool) -> list[dict]:
    paper = paper_cell(pm, method) if not recompute else {"paper_r": None, "paper_gb": None, "paper_note": ""}
    rows = []
    ranks = list(dict.fromkeys(clean(r) for r in mine["r"])) or [paper["paper_r"]]
    for r in ranks:
        at_r = mine[mine["r"].map(clean) == r] if r is not None else mine[mine["r"].map(clean).isna()]
        ok = at_r[at_r["status"] == "ok"]
        peaks = [p / GIB for p in ok["peak_memory_bytes"].map(clean).dropna()]
        mean, std = summary(peaks)
        sources = ",".join(sorted(set(ok["memory_source"].map(clean).dropna())))
        batch = list(dict.fromkeys(at_r["batch_size"].map(clean).dropna()))
        row = table_cell({"model": model, "paper_model": pm, "method": method, "column": "Mem (GB)"},
                         mean, std, len(peaks) or None, {"r": r}, paper["paper_gb"],
                         note="" if peaks else missing_reason(at_r))
        row.update(batch_size=batch[0] if len(batch) == 1 else None, memory_source=sources,
                   paper_r=paper["paper_r"], paper_batch_size=P.TABLE5_BATCH.get(pm),
                   paper_note=paper["paper_note"], selective_recompute=recompute)
        row.pop("lr")
        rows.append(row)
    return rows


def table5_markdown(df: pd.DataFrame) -> str:
    """build_table5's frame in the paper's layout."""
    header = ["Model", "Method", "Rank", "Batch", "Mem (GB)", "Source", "Paper rank", "Paper Mem (GB)", "Delta"]
    body = [[r["model"], method_label(r["method"]) + (RECOMPUTE_SUFFIX if r.get("selective_recompute") else ""),
             fmt(r["r"], 0), fmt(r["batch_size"], 0), fmt_ours(r, 2),
             r["memory_source"], fmt(r["paper_r"], 0) or "-", r["paper_note"] or fmt(r["paper"], 2),
             fmt(r["delta"], 2)] for _, r in df.iterrows()]
    return markdown(header, body)


# ---- the configured cells: the memory report --------------------------------------------------

def configured_rows(records, cells: dict[str, dict], methods=METHODS, experiment: str = "table5",
                    selective_recompute: bool = False) -> list[dict]:
    """Ours (the latest record of each configured cell) beside the paper's, one row per model x method.

    cells: model -> {batch_size, seq_len, r, attn_implementation}, as in
    conf/memory/experiment/table5.yaml's per_model. Full-FT rows have no rank. With
    selective_recompute, the same cells with selective recomputation (no paper values).
    """
    recs = [r for r in record_dicts(records) if r.get("experiment") == experiment
            and recomputes(r.get("options")) == selective_recompute]
    rows = []
    for model, cell in cells.items():
        for method in methods:
            r = None if method == "full_ft" else cell["r"]
            rec = latest([x for x in recs if (x.get("options") or {}).get("attn_implementation")
                          == cell["attn_implementation"]], model=model, method=method,
                         batch_size=cell["batch_size"], seq_len=cell["seq_len"], r=r)
            paper = paper_cell(paper_model(model), method) if not selective_recompute else \
                {"paper_r": None, "paper_gb": None, "paper_note": ""}
            peak = gib(rec.get("peak_memory_bytes")) if rec else None
            over_paper = ratio(peak, paper["paper_gb"])
            rows.append({
                "model": model_label(model), "method": method, "r": r, "batch_size": cell["batch_size"],
                "seq_len": cell["seq_len"], "attn_implementation": cell["attn_implementation"],
                "selective_recompute": selective_recompute, "peak_gib": None if peak is None else round(peak, 2),
                "activations_gib": None if rec is None else round(gib(rec.get("activation_bytes")) or 0, 2),
                "status": "not run" if rec is None else rec.get("status"),
                "memory_source": None if rec is None else rec.get("memory_source"),
                **paper,
                "ours_over_paper": None if over_paper is None else round(over_paper, 2),
            })
    return rows


def configured_frame(rows: list[dict]) -> pd.DataFrame:
    """configured_rows as the report's CSV frame (ranks as nullable integers)."""
    frame = pd.DataFrame(rows)
    for col in ("r", "paper_r"):
        frame[col] = frame[col].astype("Int64")
    return frame


def configured_markdown(rows: list[dict]) -> str:
    def gib(x):
        return fmt(x, 2, empty="-")
    body = [[r["model"], method_label(r["method"]) + (RECOMPUTE_SUFFIX if r.get("selective_recompute") else ""),
             "-" if r["r"] is None else r["r"],
             r["batch_size"], r["seq_len"], r["attn_implementation"],
             gib(r["peak_gib"]) + (" (OOM)" if r["status"] == "oom" else "") if r["peak_gib"] is not None
             else r["status"], gib(r["activations_gib"]),
             r["paper_note"] or gib(r["paper_gb"]), gib(r["ours_over_paper"])] for r in rows]
    return markdown(["Model", "Method", "r", "batch", "seq", "attention", "simulated peak (GiB)",
                     "of which activations (GiB)", "paper (GB)", "ours / paper"], body)


def ratio_markdown(rows: list[dict]) -> str:
    """LoRA-FA / LoRA and LoRA / Full-FT per model, ours and the paper's: comparable across setups."""
    body = []
    for model, recompute in dict.fromkeys((r["model"], bool(r.get("selective_recompute"))) for r in rows):
        cell = {r["method"]: r for r in rows if r["model"] == model and bool(r.get("selective_recompute")) == recompute}

        def of(a, b, key):
            return fmt(ratio((cell.get(a) or {}).get(key), (cell.get(b) or {}).get(key)), 2, empty="-")
        body.append([model + (RECOMPUTE_SUFFIX if recompute else ""), of("lora_fa", "lora", "peak_gib"), of("lora_fa", "lora", "paper_gb"),
                     of("lora", "full_ft", "peak_gib"), of("lora", "full_ft", "paper_gb")])
    return markdown(["Model", "LoRA-FA / LoRA, ours", "LoRA-FA / LoRA, paper", "LoRA / Full-FT, ours",
                     "LoRA / Full-FT, paper"], body)
