"""Tables 2-7 from run records, each with the paper's values beside ours.

    python -m analysis.tables --scale mini [--only table2] [--root DIR]

Each builder takes the records DataFrame (lorafa.results.load_records) and returns a
tidy frame, one row per table cell: ids, ours (mean over seeds of the best setting),
ours_std, n_seeds, the setting chosen, paper, paper_std, delta (ours - paper) and note
(why ours is empty). write() saves it as tables/<name>.csv and a Markdown rendering in
the paper's layout as tables/<name>.md. See analysis/__init__.py for the conventions.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import pandas as pd

from analysis import paper_values as P
from analysis.cells import fmt_ours, mapping_note, row_keys, table_cell, tidy_frame
from analysis.common import (
    best_setting, clean, fmt, fmt_lr, fmt_pm, fmt_range, markdown, method_key, method_label, metric,
    missing_reason, runs_of, settings, summary, cli_records,
)
from analysis.names import task_label, task_value
from analysis.table5 import build_table5, table5_markdown
from lorafa.tasks.registry import get_task

# the paper's Table 2 column -> our task
GLUE_TASKS = dict(zip(P.GLUE_COLUMNS, ("glue/mrpc", "glue/cola", "glue/qnli", "glue/rte", "glue/sst2",
                                       "glue/stsb", "glue/mnli", "glue/qqp")))
TPS = "# TPs (M)"
SENSITIVITY_TASK = "glue/mrpc"  # the task of the paper's Tables 6 and 7 and Figure 6
CONVERGE_TOL = 2.0  # Tables 6-7: an lr "converges" if its mean is within this many points of the row's best


def _best_cell(ids, runs, value, paper=None, paper_std=None):
    best = best_setting(runs, value)
    if best is None:
        return table_cell(ids, paper=paper, paper_std=paper_std, note=missing_reason(runs, value)), None
    return table_cell(ids, best.mean, best.std, len(best.values), best.key, paper, paper_std), best


def _tps_cell(ids, runs, paper):
    ok = runs[(runs["status"] == "ok")]["trainable_params"].map(clean).dropna()
    if ok.empty:
        return table_cell(ids, paper=paper, note=missing_reason(runs))
    return table_cell(ids, statistics.median(ok) / 1e6, paper=paper)


# ---- Table 2: GLUE ----------------------------------------------------------------------

def build_table2(records: pd.DataFrame) -> pd.DataFrame:
    runs = runs_of(records, "table2")
    rows = []
    for model, pm, method in row_keys(runs, list(P.TABLE2)):
        ids = {"model": model, "paper_model": pm, "method": method}
        mine = runs[(runs["model"] == model) & (runs["method"] == method)]
        paper = P.TABLE2.get((pm, method), {})
        rows.append(_tps_cell({**ids, "column": TPS}, mine, paper.get(TPS, (None,))[0]))
        tasks = []
        for column, task in GLUE_TASKS.items():
            cell, _ = _best_cell({**ids, "column": column}, mine[mine["task"] == task], task_value(task),
                                 *paper.get(column, (None, None)))
            rows.append(cell)
            tasks.append(cell)
        missing = [c["column"] for c in tasks if c["ours"] is None]
        stds = [c["ours_std"] for c in tasks]
        if missing:
            avg, avg_std = None, None
            note = "not run" if len(missing) == len(tasks) and all(c["note"] == "not run" for c in tasks) \
                else "incomplete: no " + ", ".join(missing) + _partial_mean([c for c in tasks if c["ours"] is not None])
        else:  # the mean of the task means, and (as the paper's numbers imply) of their stds
            avg = statistics.fmean(c["ours"] for c in tasks)
            avg_std = statistics.fmean(stds) if None not in stds else None
            note = ""
        pa, pa_std = paper.get("Avg.", (None, None))
        rows.append(table_cell({**ids, "column": "Avg."}, avg, avg_std, paper=pa, paper_std=pa_std, note=note))
    return tidy_frame(rows)


def _partial_mean(done: list[dict]) -> str:
    """The mean over the tasks that have a value, beside the paper's over the same tasks: what
    an offline scale without MNLI and QQP can compare."""
    if not done:
        return ""
    papers = [c["paper"] for c in done]
    paper = f" (paper {statistics.fmean(papers):.1f})" if None not in papers else ""
    return f"; mean of the other {len(done)}: {statistics.fmean(c['ours'] for c in done):.1f}{paper}"


# ---- Table 3: T5 on WMT16 En-Ro ------------------------------------------------------------

def build_table3(records: pd.DataFrame) -> pd.DataFrame:
    runs = runs_of(records, "table3")
    bleu, rouge = task_value("wmt16_en_ro"), metric("rougeL", get_task("wmt16_en_ro").table_scale)
    rows = []
    for model, pm, method in row_keys(runs, list(P.TABLE3)):
        ids = {"model": model, "paper_model": pm, "method": method}
        mine = runs[(runs["model"] == model) & (runs["method"] == method)]
        paper = P.TABLE3.get((pm, method), {})
        rows.append(_tps_cell({**ids, "column": TPS}, mine, paper.get(TPS)))
        cell, best = _best_cell({**ids, "column": "BLEU"}, mine, bleu, paper.get("BLEU"))
        rows.append(cell)
        # ROUGE-L of the setting that BLEU chose
        ids_r = {**ids, "column": "ROUGE-L"}
        if best is None:
            rows.append(table_cell(ids_r, paper=paper.get("ROUGE-L"), note=cell["note"]))
        else:
            vals = [v for v in (rouge(r["metrics"]) for r in best.runs) if v is not None]
            mean, std = summary(vals)
            rows.append(table_cell(ids_r, mean, std, len(vals) or None, best.key, paper.get("ROUGE-L"),
                              note="" if vals else "metric missing: rougeL"))
    return tidy_frame(rows)


# ---- Table 4: LLaMA, MMLU after instruction tuning -------------------------------------------

# Our dataset -> the paper's whose row stands beside it: the FLAN v2 CoT source files (offline)
# are compared with the paper's FLAN v2 mixture, under their own name.
PAPER_DATA = {"flan_cot": "flanv2"}
# Measures beside the paper's MMLU where records have them (lorafa.tasks.instruct): the held-out
# response loss (nats per token, lower is better) and chain-of-thought answer accuracy (x100).
HELDOUT, COT = "Held-out loss", "CoT acc."
P_DATA_LABEL = {"flanv2": "FLAN v2 (the templated mixture, 50k rows)"}
EXTRA_COLUMNS = ((HELDOUT, metric("heldout_loss"), min), (COT, metric("cot_accuracy", 100.0), max))


def _extra_cells(ids: dict, runs: pd.DataFrame, chosen) -> list[dict]:
    """The held-out measures of the setting MMLU chose (the paper's criterion), or of the best
    setting by the measure itself where MMLU was not run; none where no record has the measure."""
    cells = []
    for column, value, best in EXTRA_COLUMNS:
        if runs.empty or not any(value(m) is not None for m in runs["metrics"]):
            continue
        candidates = [s for s in settings(runs, value) if s.eligible]
        same = [s for s in candidates if chosen is not None and s.key == chosen.key]
        if not (same or candidates):
            cells.append(table_cell({**ids, "column": column}, note=missing_reason(runs, value)))
            continue
        pick = same[0] if same else best(candidates, key=lambda s: s.mean)
        cells.append(table_cell({**ids, "column": column}, pick.mean, pick.std, len(pick.values), pick.key))
    return cells


def _table4_rows(ids: dict, mine: pd.DataFrame, paper: dict, base_mmlu) -> list[dict]:
    """# TPs, MMLU, its gain over the base model and the held-out measures of one (data, method)."""
    mmlu = task_value("alpaca")  # every row is scored on the instruction tasks' MMLU metric
    cell, best = _best_cell({**ids, "column": "MMLU"}, mine, mmlu, paper.get("MMLU"))
    gain = cell["ours"] - base_mmlu if None not in (cell["ours"], base_mmlu) else None
    note = cell["note"] or ("" if gain is not None else "no base-model record with MMLU")
    return [_tps_cell({**ids, "column": TPS}, mine, paper.get(TPS)), cell,
            table_cell({**ids, "column": "Gain"}, gain, paper=paper.get("Gain"), note=note),
            *_extra_cells(ids, mine, best)]


def build_table4(records: pd.DataFrame) -> pd.DataFrame:
    """Per model: for each dataset, the base model's row (where it was scored on that dataset's
    held-out rows) and each method's; then the base model's MMLU row (task mmlu)."""
    runs = runs_of(records, "table4")
    mmlu = task_value("alpaca")
    rows = []
    for model, pm, _ in dict.fromkeys((m, pm, "") for m, pm, _ in row_keys(runs, [(k[0], k[2]) for k in P.TABLE4])):
        of_model = runs[runs["model"] == model]
        base_all = of_model[of_model["method"] == "base"]
        base, _ = _best_cell({"model": model, "paper_model": pm, "task": "mmlu", "method": "base", "column": "MMLU"},
                             base_all, mmlu, P.TABLE4_BASE_MMLU if pm == "LLaMA-7B" else None)
        tuned = of_model[of_model["task"] != "mmlu"]
        ours = list(dict.fromkeys(tuned["task"]))
        datasets = [d for d in dict.fromkeys([k[1] for k in P.TABLE4] + ours)
                    if not (d in PAPER_DATA.values() and d not in ours and
                            any(PAPER_DATA.get(o) == d for o in ours))]  # the paper's, unless ours replaces it
        for data in datasets:
            paper_data = PAPER_DATA.get(data, data)
            methods = [k[2] for k in P.TABLE4 if k[0] == pm and k[1] == paper_data]
            methods += sorted(set(tuned.loc[tuned["task"] == data, "method"]) - set(methods) - {"base"}, key=method_key)
            data_base = tuned[(tuned["task"] == data) & (tuned["method"] == "base")]
            if len(data_base):
                ids = {"model": model, "paper_model": pm, "task": data, "method": "base"}
                rows += [{**base, **ids}] + _extra_cells(ids, data_base, None)
            for method in methods:
                ids = {"model": model, "paper_model": pm, "task": data, "method": method}
                mine = tuned[(tuned["task"] == data) & (tuned["method"] == method)]
                rows += _table4_rows(ids, mine, P.TABLE4.get((pm, paper_data, method), {}), base["ours"])
        rows.append(base)
    return tidy_frame(rows)


# ---- Tables 6 and 7: A initialisation, alpha -------------------------------------------------

# lorafa.config.INITS names are canonical; a few other spellings are accepted
INIT_ALIASES = {"ones": "all_one", "all-one": "all_one", "normal": "std_normal", "gaussian": "std_normal",
                "kaiming": "kaiming_uniform"}


def _sensitivity(runs, key: str, paper: dict, paper_rows: list, norm) -> pd.DataFrame:
    """One row per value of `key` (init_a or alpha): best accuracy and the lrs that converge.

    The paper runs these on MRPC; a sweep on another task (the mini scale uses SST-2, where the
    tiny model moves off the majority class) keeps the paper's values beside it for reference but
    no delta, since the two accuracies are not comparable.
    """
    runs = runs.assign(**{key: runs[key].map(lambda v: norm(clean(v)))})
    rows = []
    for model, pm, method in row_keys(runs, [("RoBERTa-base", "lora_fa")]):
        mine = runs[(runs["model"] == model) & (runs["method"] == method)]
        tasks = list(dict.fromkeys(mine["task"].dropna())) or [SENSITIVITY_TASK]
        expected = paper_rows if method == "lora_fa" else []
        values = list(dict.fromkeys(expected + [v for v in mine[key] if v is not None]))
        for task in tasks:
            rows += _sensitivity_rows(mine[mine["task"] == task] if len(mine) else mine, key, values, paper,
                                      {"model": model, "paper_model": pm, "method": method, "task": task})
    return tidy_frame(rows)


def _sensitivity_rows(mine, key, values, paper, ids) -> list[dict]:
    rows = []
    for v in values:
        at = mine[mine[key] == v]
        p = paper.get(v) if ids["method"] == "lora_fa" and ids["paper_model"] == "RoBERTa-base" else None
        p_range, p_acc, p_std = (p + (None,))[:3] if p else (None, None, None)
        value = task_value(ids["task"])
        cell, best = _best_cell({**ids, key: v}, at, value, p_acc, p_std)
        if ids["task"] != SENSITIVITY_TASK:
            cell["delta"] = None
        floor = _no_skill(mine, ids["task"])
        good = [s.key["lr"] for s in settings(at, value)
                if best and s.eligible and s.mean >= best.mean - CONVERGE_TOL and s.key["lr"] is not None
                and (floor is None or s.mean > floor + CONVERGE_TOL)]
        cell.update(lr_range=fmt_range(good), n_lrs_run=at["lr"].map(clean).nunique() or None,
                    paper_lr_range=p_range or "")
        rows.append(cell)
    return rows


def _no_skill(runs: pd.DataFrame, task: str) -> float | None:
    """The score of a run that learned nothing, where the task's metric has one: the eval set's
    majority share for accuracy (recorded by lorafa.tasks.glue as majority_accuracy; the eval set
    is the task's, so any run of it may carry it), 0 for MCC and correlations."""
    spec = get_task(task)
    if spec.primary_metric in ("mcc", "pearson", "spearman"):
        return 0.0
    if spec.primary_metric != "accuracy" or runs.empty:
        return None
    shares = [m["majority_accuracy"] for m in runs["metrics"] if isinstance(m, dict) and "majority_accuracy" in m]
    return max(shares) * spec.table_scale if shares else None


def build_table6(records: pd.DataFrame) -> pd.DataFrame:
    return _sensitivity(runs_of(records, "table6"), "init_a", P.TABLE6, list(P.TABLE6),
                        lambda v: INIT_ALIASES.get(v, v))


def build_table7(records: pd.DataFrame) -> pd.DataFrame:
    def norm(a):
        return None if a is None else (int(a) if float(a).is_integer() else float(a))
    return _sensitivity(runs_of(records, "table7"), "alpha", P.TABLE7, list(P.TABLE7), norm)


# ---- Markdown ---------------------------------------------------------------------------------

def _wide(df: pd.DataFrame, ids: list[str], digits: int, order: tuple = ()) -> str:
    """One row per key of `ids`; columns in `order` first (where present), then as they appear."""
    seen = list(dict.fromkeys(df["column"]))
    columns = [c for c in order if c in seen] + [c for c in seen if c not in order]
    header = ["Model", *[i.capitalize() for i in ids if i not in ("model", "method")], "Method", "", *columns]
    body = []
    for key, g in df.groupby(ids, sort=False):
        key = dict(zip(ids, key))
        cells = {row["column"]: row for _, row in g.iterrows()}
        label = [key["model"], *[key[i] for i in ids if i not in ("model", "method")], method_label(key["method"])]
        digits_of = {TPS: 2, HELDOUT: 3}
        body.append(label + ["ours"] + [fmt_ours(cells[c], digits_of.get(c, digits)) if c in cells else ""
                                        for c in columns])
        body.append([""] * len(label) + ["paper"] + [
            fmt_pm(cells[c]["paper"], cells[c]["paper_std"], digits_of.get(c, digits)) if c in cells else ""
            for c in columns])
    return markdown(header, body)


def markdown_table(name: str, df: pd.DataFrame) -> str:
    title = {"table2": "Table 2: GLUE (metric x100; MNLI = mean of matched and mismatched accuracy)",
             "table3": "Table 3: WMT16 En-Ro (BLEU, ROUGE-L)",
             "table4": "Table 4: 5-shot MMLU accuracy after instruction tuning, and gain over the base model",
             "table5": "Table 5: peak memory (GB = 2^30 bytes)",
             "table6": "Table 6: LoRA-FA under different initialisations of A (accuracy)",
             "table7": "Table 7: LoRA-FA under different alpha (accuracy)"}[name]
    lines = f"# {title}\n\n" + mapping_note(df)
    lines += ("ours = mean ± sample std over repeated measurements; " if name == "table5" else
              "ours = mean ± sample std over seeds of the best setting per cell; ")
    lines += "an empty cell says why in italics.\n\n"
    if name in ("table2", "table3"):
        return lines + _wide(df, ["model", "method"], 1)
    if name == "table4":
        note = "".join(f"{t}: ours are {get_task(t).label or t}; the paper's row beside it is its {P_DATA_LABEL.get(p, p)}.\n"
                       for t, p in PAPER_DATA.items() if t in set(df["task"]))
        if {HELDOUT, COT} & set(df["column"]):
            note += ("Held-out loss: mean cross-entropy per response token on held-out rows of the dataset tuned on "
                     "(nats, lower is better); CoT acc.: greedy chain-of-thought answers to held-out questions, "
                     "scored by lorafa.tasks.cot's rule (x100). The paper reports neither.\n")
        return lines + (note + "\n" if note else "") + _wide(df, ["model", "task", "method"], 1,
                                                        order=(TPS, "MMLU", "Gain", HELDOUT, COT))
    if name == "table5":
        return lines + table5_markdown(df)
    key = "init_a" if name == "table6" else "alpha"
    label = (lambda v: P.INIT_LABELS.get(v, v)) if key == "init_a" else str
    header = ["Model", "Task", "Method", "Init of A" if key == "init_a" else "alpha", "Range of lr (ours)",
              "Best lr", "Accuracy (ours)", "Range of lr (paper)", "Accuracy (paper, MRPC)", "Delta"]
    body = [[r["model"], task_label(r["task"]), method_label(r["method"]), label(r[key]), r["lr_range"],
             fmt_lr(r["lr"]), fmt_ours(r, 2), r["paper_lr_range"], fmt_pm(r["paper"], r["paper_std"], 2),
             fmt(r["delta"], 2)] for _, r in df.iterrows()]
    note = (f"An lr converges when no seed diverged and its mean accuracy is within {CONVERGE_TOL:g} "
            f"points of the row's best and more than {CONVERGE_TOL:g} above the majority class (a run that "
            "learned nothing); a row with no such lr has an empty range.\n")
    other = sorted({task_label(t) for t in df["task"].dropna() if t != SENSITIVITY_TASK})
    if other:
        note += (f"The paper's column is MRPC; ours is {', '.join(other)} (at mini scale MRPC stays at its "
                 "majority class for every setting, so it cannot rank them), hence no delta.\n")
    note += "\n"
    return lines + note + markdown(header, body)


# ---- files and CLI ------------------------------------------------------------------------------

TABLES = {"table2": build_table2, "table3": build_table3, "table4": build_table4,
          "table5": build_table5, "table6": build_table6, "table7": build_table7}


def write(name: str, df: pd.DataFrame, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    csv, md = out_dir / f"{name}.csv", out_dir / f"{name}.md"
    df.to_csv(csv, index=False)
    md.write_text(markdown_table(name, df))
    return csv, md


def missing_summary(name: str, df: pd.DataFrame, examples: int = 3) -> list[str]:
    """One line per reason for the cells of ours that are empty."""
    empty = df[df["ours"].isna()]
    lines = []
    for note, g in empty.groupby("note", sort=False):
        cols = [c for c in ("model", "task", "method", "column", "init_a", "alpha") if c in g.columns]
        where = ["/".join(str(v) for v in row if clean(v) is not None) for row in g[cols].itertuples(index=False)]
        more = f" (+{len(where) - examples} more)" if len(where) > examples else ""
        lines.append(f"  {name}: {len(g)} cell(s) {note}: {'; '.join(where[:examples])}{more}")
    return lines


def has_experiment(records: pd.DataFrame, name: str) -> bool:
    """Whether any record belongs to the table's experiment (table4: also table4_base)."""
    return bool(len(records)) and records["experiment"].astype(str).str.startswith(name).any()


def main(argv: list[str] | None = None) -> int:
    names, base, records, chosen = cli_records(argv, __doc__.splitlines()[0], TABLES, "tables")
    for name in names:
        if not chosen and not has_experiment(records, name):  # e.g. Tables 3-5 at the small scale
            print(f"{name}: no {name} records in {base / 'runs'}: not built")
            continue
        df = TABLES[name](records)
        csv, md = write(name, df, base / "tables")
        filled = int(df["ours"].notna().sum())
        print(f"{name}: {filled}/{len(df)} cells filled -> {csv} , {md.name}")
        for line in missing_summary(name, df):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
