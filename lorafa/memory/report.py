"""How one memory point is reported on a line: GiB and what sets its options apart.

experiments/memory.py prints one such line per point; the tables built from memory records
(Table 5, the dropout ratio table, the per-record summary) are in analysis/.
"""

from __future__ import annotations

from lorafa.results import plain

GIB = 2**30  # the project's one memory unit; analysis/ prints it as the paper's "GB"


def gib(nbytes) -> float | None:
    nbytes = plain(nbytes)
    return None if nbytes is None else nbytes / GIB


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
    if o.get("selective_recompute"):
        parts.append("selective recomputation")
    if method != "full_ft" and o.get("num_adapted_layers") is not None:
        parts.append(f"layers={o['num_adapted_layers']}")
    if o.get("dropout"):
        parts.append(f"dropout={o['dropout']:g}")
    return ", ".join(parts)
