"""Memory records as tables: a run summary, Table 5 beside the paper, the dropout ratio table.

    print(summary_markdown(records))                      # any memory records
    rows = table5_rows(load_records(root), cells, paper)  # Table 5, ours beside the paper's
    rows = dropout_ratio_rows(load_records(root))         # LoRA-FA / LoRA, ours vs PEFT frozen A

Memory is in GiB (2**30 bytes), as analysis/ reports it; the paper's values are as printed.
Pure pandas: no torch, no Hydra.
"""

from __future__ import annotations


import pandas as pd

from lorafa.results import plain

GIB = 2**30
METHOD_LABELS = {"full_ft": "Full-FT", "lora": "LoRA", "lora_fa": "LoRA-FA", "peft_lora": "PEFT LoRA",
                 "peft_lora_frozen_a": "PEFT LoRA, A frozen"}




INT_FIELDS = ("r", "batch_size", "seq_len")


def _as_dicts(records) -> list[dict]:
    """Records (RunRecords, dicts or load_records' frame) as plain dicts; integer fields as int."""
    if isinstance(records, pd.DataFrame):
        rows = [{k: plain(v) if not isinstance(v, (dict, list)) else v for k, v in row.items()}
                for row in records.to_dict("records")]
    else:
        rows = [r.to_dict() if hasattr(r, "to_dict") else dict(r) for r in records]
    for row in rows:
        for k in INT_FIELDS:
            if isinstance(row.get(k), float) and row[k].is_integer():
                row[k] = int(row[k])
    return rows


def gib(nbytes) -> float | None:
    nbytes = plain(nbytes)
    return None if nbytes is None else nbytes / GIB


def fmt(x, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def options_label(options: dict | None, method: str | None = None) -> str:
    """attention, quantization, ZeRO shards, adapted layers, dropout: what sets a point apart."""
    o = options if isinstance(options, dict) else {}
    parts = [f"attn={o.get('attn_implementation')}"] if o.get("attn_implementation") else []
    if o.get("quantization"):
        parts.append(str(o["quantization"]))
    if (o.get("zero_shards") or 1) > 1:
        parts.append(f"ZeRO-3 x{o['zero_shards']}")
    if o.get("gradient_checkpointing"):
        parts.append("checkpointing")
    if method != "full_ft" and o.get("num_adapted_layers") is not None:
        parts.append(f"layers={o['num_adapted_layers']}")
    if o.get("dropout"):
        parts.append(f"dropout={o['dropout']:g}")
    return ", ".join(parts)


def markdown(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def summary_markdown(records) -> str:
    """One row per record: the point, its peak and activations (GiB), status and source."""
    rows = []
    for r in _as_dicts(records):
        step = plain(r.get("step_time_s"))
        rows.append([r.get("experiment"), r.get("model"), r.get("method"), r.get("batch_size"), r.get("seq_len"),
                     "-" if r.get("r") is None else r.get("r"), options_label(r.get("options"), r.get("method")),
                     fmt(gib(r.get("peak_memory_bytes"))), fmt(gib(r.get("activation_bytes"))),
                     r.get("status"), r.get("memory_source") or "-", "-" if step is None else f"{step:.3f}"])
    return markdown(["experiment", "model", "method", "batch", "seq", "r", "options", "peak GiB",
                     "activations GiB", "status", "source", "step s"], rows)


def _latest(records: list[dict], **equal) -> dict | None:
    hits = [r for r in records if all(r.get(k) == v for k, v in equal.items())]
    return hits[-1] if hits else None


def table5_rows(records, cells: dict[str, dict], paper: dict, labels: dict[str, str],
                methods=("full_ft", "lora", "lora_fa"), experiment: str = "table5") -> list[dict]:
    """Table 5 cells: ours (the latest record of each configured cell) beside the paper's.

    cells: model -> {batch_size, seq_len, r, attn_implementation} (conf/memory/experiment/table5.yaml).
    paper: (paper model label, method) -> (r, GB or None for the paper's OOM). labels: model -> label.
    """
    recs = [r for r in _as_dicts(records) if r.get("experiment") == experiment]
    rows = []
    for model, cell in cells.items():
        label = labels.get(model, model)
        for method in methods:
            r = None if method == "full_ft" else cell["r"]
            rec = _latest([x for x in recs if (x.get("options") or {}).get("attn_implementation")
                           == cell["attn_implementation"]], model=model, method=method,
                          batch_size=cell["batch_size"], seq_len=cell["seq_len"], r=r)
            paper_r, paper_gb = paper.get((label, method), (None, None))
            peak = gib(rec.get("peak_memory_bytes")) if rec else None
            rows.append({
                "model": label, "method": method, "r": r, "batch_size": cell["batch_size"],
                "seq_len": cell["seq_len"], "attn_implementation": cell["attn_implementation"],
                "peak_gib": None if peak is None else round(peak, 2),
                "activations_gib": None if rec is None else round(gib(rec.get("activation_bytes")) or 0, 2),
                "status": "not run" if rec is None else rec.get("status"),
                "memory_source": None if rec is None else rec.get("memory_source"),
                "paper_r": paper_r, "paper_gb": paper_gb,
                "paper_note": "OOM" if (label, method) in paper and paper_gb is None else "",
                "ours_over_paper": None if peak is None or not paper_gb else round(peak / paper_gb, 2),
            })
    return rows


def table5_ratio_markdown(rows: list[dict]) -> str:
    """LoRA-FA / LoRA and LoRA / Full-FT per model, ours and the paper's: comparable across setups."""
    body = []
    for model in dict.fromkeys(r["model"] for r in rows):
        cell = {r["method"]: r for r in rows if r["model"] == model}

        def ratio(a, b, key):
            x, y = (cell.get(a) or {}).get(key), (cell.get(b) or {}).get(key)
            return None if x is None or not y else x / y
        body.append([model, fmt(ratio("lora_fa", "lora", "peak_gib")), fmt(ratio("lora_fa", "lora", "paper_gb")),
                     fmt(ratio("lora", "full_ft", "peak_gib")), fmt(ratio("lora", "full_ft", "paper_gb"))])
    return markdown(["Model", "LoRA-FA / LoRA, ours", "LoRA-FA / LoRA, paper", "LoRA / Full-FT, ours",
                     "LoRA / Full-FT, paper"], body)


def table5_markdown(rows: list[dict]) -> str:
    body = [[r["model"], METHOD_LABELS.get(r["method"], r["method"]), "-" if r["r"] is None else r["r"],
             r["batch_size"], r["seq_len"], r["attn_implementation"],
             fmt(r["peak_gib"]) + (" (OOM)" if r["status"] == "oom" else "") if r["peak_gib"] is not None
             else r["status"], fmt(r["activations_gib"]),
             r["paper_note"] or fmt(r["paper_gb"]), fmt(r["ours_over_paper"])] for r in rows]
    return markdown(["Model", "Method", "r", "batch", "seq", "attention", "simulated peak (GiB)",
                     "of which activations (GiB)", "paper (GB)", "ours / paper"], body)


DROPOUT_METHODS = ("lora", "lora_fa", "peft_lora", "peft_lora_frozen_a")


def dropout_ratio_rows(records, experiment: str = "llama_dropout", dropouts=(0.0, 0.1)) -> list[dict]:
    """Per dropout: peak and activation GiB of the four methods and the frozen-A/LoRA ratios."""
    recs = [r for r in _as_dicts(records) if r.get("experiment") == experiment]
    rows = []
    for p in dropouts:
        found = {m: _latest([x for x in recs if (x.get("options") or {}).get("dropout") == p], method=m)
                 for m in DROPOUT_METHODS}
        row = {"dropout": p}
        for m, rec in found.items():
            row[f"{m}_peak_gib"] = None if rec is None else gib(rec.get("peak_memory_bytes"))
            row[f"{m}_act_gib"] = None if rec is None else gib(rec.get("activation_bytes"))
        for kind in ("peak", "act"):
            def ratio(a, b):
                x, y = row[f"{a}_{kind}_gib"], row[f"{b}_{kind}_gib"]
                return None if x is None or not y else x / y
            row[f"ours_fa_over_lora_{kind}"] = ratio("lora_fa", "lora")
            row[f"peft_frozen_over_peft_lora_{kind}"] = ratio("peft_lora_frozen_a", "peft_lora")
            row[f"peft_frozen_over_ours_lora_{kind}"] = ratio("peft_lora_frozen_a", "lora")
        first = next((r for r in found.values() if r is not None), None)
        row["setting"] = None if first is None else (
            f"{first.get('model')}, batch {first.get('batch_size')}, seq {first.get('seq_len')}, r {first.get('r')}, "
            f"attn={(first.get('options') or {}).get('attn_implementation')}, "
            f"adapters {(first.get('options') or {}).get('adapter_dtype')}")
        rows.append(row)
    return rows


def dropout_ratio_markdown(rows: list[dict]) -> str:
    def r3(x):
        return fmt(x, 3)

    ratio = [[f"{row['dropout']:g}", kind_label,
              r3(row[f"ours_fa_over_lora_{kind}"]), r3(row[f"peft_frozen_over_peft_lora_{kind}"]),
              r3(row[f"peft_frozen_over_ours_lora_{kind}"])]
             for row in rows for kind, kind_label in (("peak", "peak"), ("act", "activations"))]
    gibs = [[f"{row['dropout']:g}", kind_label] + [fmt(row[f"{m}_{kind}_gib"]) for m in DROPOUT_METHODS]
            for row in rows for kind, kind_label in (("peak", "peak"), ("act", "activations"))]
    return ("### Ratios\n\n" + markdown(
        ["dropout", "memory", "ours: LoRA-FA / LoRA", "PEFT: frozen-A LoRA / LoRA", "PEFT frozen-A / our LoRA"], ratio)
        + "\n### GiB\n\n" + markdown(["dropout", "memory"] + [METHOD_LABELS[m] for m in DROPOUT_METHODS], gibs))
