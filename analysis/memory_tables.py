"""Memory records beyond Table 5: a summary row per record, and LoRA-FA / LoRA with adapter dropout
beside PEFT's frozen-A LoRA (experiments/memory.py --table and --report; Table 5 is analysis.table5).

Memory in GiB (2**30 bytes), as everywhere in analysis/.
"""

from __future__ import annotations

from analysis.common import fmt, latest, markdown, method_label, ratio, record_dicts
from lorafa.memory.report import gib, options_label
from lorafa.results import plain

DROPOUT_METHODS = ("lora", "lora_fa", "peft_lora", "peft_lora_frozen_a")
MEMORY_KINDS = (("peak", "peak"), ("act", "activations"))  # column infix, label


def _dash(x, digits: int = 2) -> str:  # the report writes "-" for a missing value
    return fmt(x, digits, empty="-")


def summary_markdown(records) -> str:
    """One row per record: the point, its peak and activations (GiB), status and source."""
    rows = []
    for r in record_dicts(records):
        step = plain(r.get("step_time_s"))
        rows.append([r.get("experiment"), r.get("model"), r.get("method"), r.get("batch_size"), r.get("seq_len"),
                     "-" if r.get("r") is None else r.get("r"), options_label(r.get("options"), r.get("method")),
                     _dash(gib(r.get("peak_memory_bytes"))), _dash(gib(r.get("activation_bytes"))),
                     r.get("status"), r.get("memory_source") or "-", "-" if step is None else f"{step:.3f}"])
    return markdown(["experiment", "model", "method", "batch", "seq", "r", "options", "peak GiB",
                     "activations GiB", "status", "source", "step s"], rows)


def _setting(rec: dict | None) -> str | None:
    if rec is None:
        return None
    options = rec.get("options") or {}
    return (f"{rec.get('model')}, batch {rec.get('batch_size')}, seq {rec.get('seq_len')}, r {rec.get('r')}, "
            f"attn={options.get('attn_implementation')}, adapters {options.get('adapter_dtype')}")


def dropout_ratio_rows(records, experiment: str = "llama_dropout", dropouts=(0.0, 0.1)) -> list[dict]:
    """Per dropout: peak and activation GiB of the four methods and the frozen-A/LoRA ratios."""
    recs = [r for r in record_dicts(records) if r.get("experiment") == experiment]
    rows = []
    for p in dropouts:
        found = {m: latest([x for x in recs if (x.get("options") or {}).get("dropout") == p], method=m)
                 for m in DROPOUT_METHODS}
        row = {"dropout": p}
        for m, rec in found.items():
            row[f"{m}_peak_gib"] = None if rec is None else gib(rec.get("peak_memory_bytes"))
            row[f"{m}_act_gib"] = None if rec is None else gib(rec.get("activation_bytes"))
        for kind, _ in MEMORY_KINDS:
            def of(a, b):
                return ratio(row[f"{a}_{kind}_gib"], row[f"{b}_{kind}_gib"])
            row[f"ours_fa_over_lora_{kind}"] = of("lora_fa", "lora")
            row[f"peft_frozen_over_peft_lora_{kind}"] = of("peft_lora_frozen_a", "peft_lora")
            row[f"peft_frozen_over_ours_lora_{kind}"] = of("peft_lora_frozen_a", "lora")
        row["setting"] = _setting(next((r for r in found.values() if r is not None), None))
        rows.append(row)
    return rows


def dropout_ratio_markdown(rows: list[dict]) -> str:
    ratios = [[f"{row['dropout']:g}", label] + [_dash(row[f"{name}_{kind}"], 3) for name in (
              "ours_fa_over_lora", "peft_frozen_over_peft_lora", "peft_frozen_over_ours_lora")]
              for row in rows for kind, label in MEMORY_KINDS]
    gibs = [[f"{row['dropout']:g}", label] + [_dash(row[f"{m}_{kind}_gib"]) for m in DROPOUT_METHODS]
            for row in rows for kind, label in MEMORY_KINDS]
    return ("### Ratios\n\n" + markdown(
        ["dropout", "memory", "ours: LoRA-FA / LoRA", "PEFT: frozen-A LoRA / LoRA", "PEFT frozen-A / our LoRA"], ratios)
        + "\n### GiB\n\n" + markdown(["dropout", "memory"] + [method_label(m) for m in DROPOUT_METHODS], gibs))
