"""Table cells: one row per cell of a paper table, ours beside the paper's, in the paper's row order."""

from __future__ import annotations

import pandas as pd

from analysis.common import clean, fmt_pm, method_key, rnd
from analysis.names import config_name, paper_model, stands_in_for

INT_COLUMNS = ("n_seeds", "r", "paper_r", "batch_size", "n_lrs_run")


def table_cell(ids: dict, ours=None, std=None, n=None, setting=None, paper=None, paper_std=None, note=""):
    """ids, ours (mean, std, n) for the setting chosen, the paper's value and the difference."""
    setting = setting or {}
    delta = ours - paper if clean(ours) is not None and clean(paper) is not None else None
    return {**ids, "ours": rnd(ours), "ours_std": rnd(std), "n_seeds": n,
            "lr": clean(setting.get("lr")), "r": clean(setting.get("r")),
            "paper": paper, "paper_std": paper_std, "delta": rnd(delta), "note": note}


def row_keys(runs: pd.DataFrame, paper_keys) -> list[tuple[str, str, str]]:
    """(model, paper model, method): the paper's rows first (filled by the record models that
    map to that paper model, else its config name), then methods and models only we ran."""
    present = list(dict.fromkeys(runs["model"].dropna()))
    paper_models = list(dict.fromkeys(pm for pm, _ in paper_keys))
    out = []
    for pm in paper_models:
        for model in [m for m in present if paper_model(m) == pm] or [config_name(pm)]:
            methods = [me for p, me in paper_keys if p == pm]
            extra = sorted(set(runs.loc[runs["model"] == model, "method"]) - set(methods), key=method_key)
            out += [(model, pm, me) for me in methods + extra]
    for model in present:
        if paper_model(model) not in paper_models:
            for me in sorted(set(runs.loc[runs["model"] == model, "method"]), key=method_key):
                out.append((model, paper_model(model), me))
    return out


def tidy_frame(rows: list[dict]) -> pd.DataFrame:
    """The cells as a frame; counts, ranks and batch sizes as nullable integers (no "8.0" in the CSV)."""
    df = pd.DataFrame(rows)
    for col in INT_COLUMNS:
        if col in df.columns:
            df[col] = df[col].astype("Int64")
    return df


def mapping_note(df: pd.DataFrame) -> str:
    pairs = sorted({(m, pm) for m, pm in zip(df["model"], df["paper_model"]) if pm and m in stands_in_for()})
    return "".join(f"Rows for {m} are compared with the paper's {pm} rows.\n" for m, pm in pairs)


def fmt_ours(row, digits) -> str:
    """Ours as mean ± std, or why it is empty (in italics)."""
    if clean(row["ours"]) is None:
        return f"_{row['note']}_" if row["note"] else ""
    text = fmt_pm(row["ours"], row["ours_std"], digits)
    return text + (f" ({row['note']})" if row["note"] else "")
