"""Tables 2-7 from run records, each with the paper's values beside ours.

    python -m analysis.tables --scale mini [--only table2] [--root DIR]

Each builder takes the records DataFrame (lorafa.results.load_records) and returns a
tidy frame, one row per table cell: ids, ours (mean over seeds of the best setting),
ours_std, n_seeds, the setting chosen, paper, paper_std, delta (ours - paper) and note
(why ours is empty). write() saves it as tables/<name>.csv and a Markdown rendering in
the paper's layout as tables/<name>.md. See analysis/__init__.py for the conventions.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import pandas as pd

from analysis import paper_values as P
from analysis.common import (
    GB, MODEL_TO_PAPER, PAPER_TO_MODEL, best_setting, clean, fmt, fmt_lr, fmt_pm, fmt_range,
    load, markdown, mean_of, task_label, method_key, method_label, metric, missing_reason, rnd, runs_of,
    scale_dir, settings, summary,
)

ACC = metric("accuracy", 100)
GLUE_TASKS = {
    "MRPC": ("glue/mrpc", ACC), "COLA": ("glue/cola", metric("mcc", 100)),
    "QNLI": ("glue/qnli", ACC), "RTE": ("glue/rte", ACC), "SST-2": ("glue/sst2", ACC),
    "STS-B": ("glue/stsb", metric("pearson", 100)),
    "MNLI": ("glue/mnli", mean_of(("accuracy_matched", "accuracy_mismatched"), 100, fallback="accuracy")),
    "QQP": ("glue/qqp", ACC),
}
TPS = "# TPs (M)"
SENSITIVITY_TASK = "glue/mrpc"  # the task of the paper's Tables 6 and 7 and Figure 6
CONVERGE_TOL = 2.0  # Tables 6-7: an lr "converges" if its mean is within this many points of the row's best
INT_COLUMNS = ("n_seeds", "r", "paper_r", "batch_size", "n_lrs_run")


def _cell(ids: dict, ours=None, std=None, n=None, setting=None, paper=None, paper_std=None, note=""):
    setting = setting or {}
    delta = ours - paper if clean(ours) is not None and clean(paper) is not None else None
    return {**ids, "ours": rnd(ours), "ours_std": rnd(std), "n_seeds": n,
            "lr": clean(setting.get("lr")), "r": clean(setting.get("r")),
            "paper": paper, "paper_std": paper_std, "delta": rnd(delta), "note": note}


def _best_cell(ids, runs, value, paper=None, paper_std=None):
    best = best_setting(runs, value)
    if best is None:
        return _cell(ids, paper=paper, paper_std=paper_std, note=missing_reason(runs, value)), None
    return _cell(ids, best.mean, best.std, len(best.values), best.key, paper, paper_std), best


def _tps_cell(ids, runs, paper):
    ok = runs[(runs["status"] == "ok")]["trainable_params"].map(clean).dropna()
    if ok.empty:
        return _cell(ids, paper=paper, note=missing_reason(runs))
    return _cell(ids, statistics.median(ok) / 1e6, paper=paper)


def _row_keys(runs: pd.DataFrame, paper_keys) -> list[tuple[str, str, str]]:
    """(model, paper model, method): the paper's rows first (filled by the record models that
    map to that paper model, else its config name), then methods and models only we ran."""
    present = list(dict.fromkeys(runs["model"].dropna()))
    paper_models = list(dict.fromkeys(pm for pm, _ in paper_keys))
    out = []
    for pm in paper_models:
        for model in [m for m in present if MODEL_TO_PAPER.get(m) == pm] or [PAPER_TO_MODEL[pm]]:
            methods = [me for p, me in paper_keys if p == pm]
            extra = sorted(set(runs.loc[runs["model"] == model, "method"]) - set(methods), key=method_key)
            out += [(model, pm, me) for me in methods + extra]
    for model in present:
        if MODEL_TO_PAPER.get(model) not in paper_models:
            for me in sorted(set(runs.loc[runs["model"] == model, "method"]), key=method_key):
                out.append((model, MODEL_TO_PAPER.get(model, ""), me))
    return out


def _frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    for col in INT_COLUMNS:
        if col in df.columns:
            df[col] = df[col].astype("Int64")
    return df


# ---- Table 2: GLUE ----------------------------------------------------------------------

def build_table2(records: pd.DataFrame) -> pd.DataFrame:
    runs = runs_of(records, "table2")
    rows = []
    for model, pm, method in _row_keys(runs, list(P.TABLE2)):
        ids = {"model": model, "paper_model": pm, "method": method}
        mine = runs[(runs["model"] == model) & (runs["method"] == method)]
        paper = P.TABLE2.get((pm, method), {})
        rows.append(_tps_cell({**ids, "column": TPS}, mine, paper.get(TPS, (None,))[0]))
        tasks = []
        for column, (task, value) in GLUE_TASKS.items():
            cell, _ = _best_cell({**ids, "column": column}, mine[mine["task"] == task], value,
                                 *paper.get(column, (None, None)))
            rows.append(cell)
            tasks.append(cell)
        missing = [c["column"] for c in tasks if c["ours"] is None]
        stds = [c["ours_std"] for c in tasks]
        if missing:
            avg, avg_std = None, None
            note = "not run" if len(missing) == len(tasks) and all(c["note"] == "not run" for c in tasks) \
                else "incomplete: no " + ", ".join(missing)
        else:  # the mean of the task means, and (as the paper's numbers imply) of their stds
            avg = statistics.fmean(c["ours"] for c in tasks)
            avg_std = statistics.fmean(stds) if None not in stds else None
            note = ""
        pa, pa_std = paper.get("Avg.", (None, None))
        rows.append(_cell({**ids, "column": "Avg."}, avg, avg_std, paper=pa, paper_std=pa_std, note=note))
    return _frame(rows)


# ---- Table 3: T5 on WMT16 En-Ro ------------------------------------------------------------

def build_table3(records: pd.DataFrame) -> pd.DataFrame:
    runs = runs_of(records, "table3")
    bleu, rouge = metric("bleu"), metric("rougeL")
    rows = []
    for model, pm, method in _row_keys(runs, list(P.TABLE3)):
        ids = {"model": model, "paper_model": pm, "method": method}
        mine = runs[(runs["model"] == model) & (runs["method"] == method)]
        paper = P.TABLE3.get((pm, method), {})
        rows.append(_tps_cell({**ids, "column": TPS}, mine, paper.get(TPS)))
        cell, best = _best_cell({**ids, "column": "BLEU"}, mine, bleu, paper.get("BLEU"))
        rows.append(cell)
        # ROUGE-L of the setting that BLEU chose
        ids_r = {**ids, "column": "ROUGE-L"}
        if best is None:
            rows.append(_cell(ids_r, paper=paper.get("ROUGE-L"), note=cell["note"]))
        else:
            vals = [v for v in (rouge(r["metrics"]) for r in best.runs) if v is not None]
            mean, std = summary(vals)
            rows.append(_cell(ids_r, mean, std, len(vals) or None, best.key, paper.get("ROUGE-L"),
                              note="" if vals else "metric missing: rougeL"))
    return _frame(rows)


# ---- Table 4: LLaMA, MMLU after instruction tuning -------------------------------------------

def build_table4(records: pd.DataFrame) -> pd.DataFrame:
    runs = runs_of(records, "table4")
    mmlu = metric("mmlu_accuracy", 100)
    tuned = runs[runs["task"] != "mmlu"]
    rows = []
    for model, pm, _ in dict.fromkeys((m, pm, "") for m, pm, _ in _row_keys(runs, [(k[0], k[2]) for k in P.TABLE4])):
        base_runs = runs[(runs["model"] == model) & (runs["task"] == "mmlu")]
        base, _ = _best_cell({"model": model, "paper_model": pm, "task": "mmlu", "method": "base",
                              "column": "MMLU"}, base_runs, mmlu, P.TABLE4_BASE_MMLU if pm == "LLaMA-7B" else None)
        mine_model = tuned[tuned["model"] == model]
        datasets = list(dict.fromkeys([k[1] for k in P.TABLE4] + list(mine_model["task"])))
        for data in datasets:
            methods = [k[2] for k in P.TABLE4 if k[0] == pm and k[1] == data]
            methods += sorted(set(mine_model.loc[mine_model["task"] == data, "method"]) - set(methods), key=method_key)
            for method in methods:
                ids = {"model": model, "paper_model": pm, "task": data, "method": method}
                mine = mine_model[(mine_model["task"] == data) & (mine_model["method"] == method)]
                paper = P.TABLE4.get((pm, data, method), {})
                rows.append(_tps_cell({**ids, "column": TPS}, mine, paper.get(TPS)))
                cell, _ = _best_cell({**ids, "column": "MMLU"}, mine, mmlu, paper.get("MMLU"))
                rows.append(cell)
                gain = cell["ours"] - base["ours"] if None not in (cell["ours"], base["ours"]) else None
                note = cell["note"] or ("" if gain is not None else "no base-model record (task mmlu)")
                rows.append(_cell({**ids, "column": "Gain"}, gain, paper=paper.get("Gain"), note=note))
        rows.append(base)
    return _frame(rows)


# ---- Table 5: peak memory -------------------------------------------------------------------

def build_table5(records: pd.DataFrame) -> pd.DataFrame:
    runs = runs_of(records, "table5")
    rows = []
    for model, pm, method in _row_keys(runs, list(P.TABLE5)):
        paper_r, paper_mem = P.TABLE5.get((pm, method), (None, None))
        mine = runs[(runs["model"] == model) & (runs["method"] == method)]
        ranks = list(dict.fromkeys(clean(r) for r in mine["r"])) or [paper_r]
        for r in ranks:
            at_r = mine[mine["r"].map(clean) == r] if r is not None else mine[mine["r"].map(clean).isna()]
            ok = at_r[at_r["status"] == "ok"]
            peaks = [p / GB for p in ok["peak_memory_bytes"].map(clean).dropna()]
            mean, std = summary(peaks)
            sources = ",".join(sorted(set(ok["memory_source"].map(clean).dropna())))
            batch = list(dict.fromkeys(at_r["batch_size"].map(clean).dropna()))
            row = _cell({"model": model, "paper_model": pm, "method": method, "column": "Mem (GB)"},
                        mean, std, len(peaks) or None, {"r": r}, paper_mem,
                        note="" if peaks else missing_reason(at_r))
            row.update(batch_size=batch[0] if len(batch) == 1 else None, memory_source=sources,
                       paper_r=paper_r, paper_batch_size=P.TABLE5_BATCH.get(pm),
                       paper_note="OOM" if (pm, method) in P.TABLE5 and paper_mem is None else "")
            row.pop("lr")
            rows.append(row)
    return _frame(rows)


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
    for model, pm, method in _row_keys(runs, [("RoBERTa-base", "lora_fa")]):
        mine = runs[(runs["model"] == model) & (runs["method"] == method)]
        tasks = list(dict.fromkeys(mine["task"].dropna())) or [SENSITIVITY_TASK]
        expected = paper_rows if method == "lora_fa" else []
        values = list(dict.fromkeys(expected + [v for v in mine[key] if v is not None]))
        for task in tasks:
            rows += _sensitivity_rows(mine[mine["task"] == task] if len(mine) else mine, key, values, paper,
                                      {"model": model, "paper_model": pm, "method": method, "task": task})
    return _frame(rows)


def _sensitivity_rows(mine, key, values, paper, ids) -> list[dict]:
    rows = []
    for v in values:
        at = mine[mine[key] == v]
        p = paper.get(v) if ids["method"] == "lora_fa" and ids["paper_model"] == "RoBERTa-base" else None
        p_range, p_acc, p_std = (p + (None,))[:3] if p else (None, None, None)
        cell, best = _best_cell({**ids, key: v}, at, ACC, p_acc, p_std)
        if ids["task"] != SENSITIVITY_TASK:
            cell["delta"] = None
        good = [s.key["lr"] for s in settings(at, ACC)
                if best and s.eligible and s.mean >= best.mean - CONVERGE_TOL and s.key["lr"] is not None]
        cell.update(lr_range=fmt_range(good), n_lrs_run=at["lr"].map(clean).nunique() or None,
                    paper_lr_range=p_range or "")
        rows.append(cell)
    return rows


def build_table6(records: pd.DataFrame) -> pd.DataFrame:
    return _sensitivity(runs_of(records, "table6"), "init_a", P.TABLE6, list(P.TABLE6),
                        lambda v: INIT_ALIASES.get(v, v))


def build_table7(records: pd.DataFrame) -> pd.DataFrame:
    def norm(a):
        return None if a is None else (int(a) if float(a).is_integer() else float(a))
    return _sensitivity(runs_of(records, "table7"), "alpha", P.TABLE7, list(P.TABLE7), norm)


# ---- Markdown ---------------------------------------------------------------------------------

def _mapping_note(df: pd.DataFrame) -> str:
    pairs = sorted({(m, pm) for m, pm in zip(df["model"], df["paper_model"]) if pm and PAPER_TO_MODEL.get(pm) != m})
    return "".join(f"Rows for {m} are compared with the paper's {pm} rows.\n" for m, pm in pairs)


def _ours(row, digits) -> str:
    if clean(row["ours"]) is None:
        return f"_{row['note']}_" if row["note"] else ""
    text = fmt_pm(row["ours"], row["ours_std"], digits)
    return text + (f" ({row['note']})" if row["note"] else "")


def _wide(df: pd.DataFrame, ids: list[str], digits: int) -> str:
    columns = list(dict.fromkeys(df["column"]))
    header = ["Model", *[i.capitalize() for i in ids if i not in ("model", "method")], "Method", "", *columns]
    body = []
    for key, g in df.groupby(ids, sort=False):
        key = dict(zip(ids, key))
        cells = {row["column"]: row for _, row in g.iterrows()}
        label = [key["model"], *[key[i] for i in ids if i not in ("model", "method")], method_label(key["method"])]
        digits_of = {TPS: 2}
        body.append(label + ["ours"] + [_ours(cells[c], digits_of.get(c, digits)) if c in cells else "" for c in columns])
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
    lines = f"# {title}\n\n" + _mapping_note(df)
    lines += ("ours = mean ± sample std over repeated measurements; " if name == "table5" else
              "ours = mean ± sample std over seeds of the best setting per cell; ")
    lines += "an empty cell says why in italics.\n\n"
    if name in ("table2", "table3"):
        return lines + _wide(df, ["model", "method"], 1)
    if name == "table4":
        return lines + _wide(df, ["model", "task", "method"], 1)
    if name == "table5":
        header = ["Model", "Method", "Rank", "Batch", "Mem (GB)", "Source", "Paper rank", "Paper Mem (GB)", "Delta"]
        body = [[r["model"], method_label(r["method"]), fmt(r["r"], 0), fmt(r["batch_size"], 0), _ours(r, 2),
                 r["memory_source"], fmt(r["paper_r"], 0) or "-", r["paper_note"] or fmt(r["paper"], 2),
                 fmt(r["delta"], 2)] for _, r in df.iterrows()]
        return lines + markdown(header, body)
    key = "init_a" if name == "table6" else "alpha"
    label = (lambda v: P.INIT_LABELS.get(v, v)) if key == "init_a" else str
    header = ["Model", "Task", "Method", "Init of A" if key == "init_a" else "alpha", "Range of lr (ours)",
              "Best lr", "Accuracy (ours)", "Range of lr (paper)", "Accuracy (paper, MRPC)", "Delta"]
    body = [[r["model"], task_label(r["task"]), method_label(r["method"]), label(r[key]), r["lr_range"],
             fmt_lr(r["lr"]), _ours(r, 2), r["paper_lr_range"], fmt_pm(r["paper"], r["paper_std"], 2),
             fmt(r["delta"], 2)] for _, r in df.iterrows()]
    note = (f"An lr converges when no seed diverged and its mean accuracy is within {CONVERGE_TOL:g} "
            "points of the row's best.\n")
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="mini", help="results/<scale>/ to read and write (default mini)")
    parser.add_argument("--only", choices=sorted(TABLES), action="append", help="build only these tables")
    parser.add_argument("--root", help="results root (default $LORAFA_RESULTS_DIR or results/)")
    args = parser.parse_args(argv)
    base = scale_dir(args.scale, args.root)
    records = load(args.scale, args.root)
    print(f"{len(records)} run record(s) in {base / 'runs.jsonl'}")
    for name in args.only or TABLES:
        df = TABLES[name](records)
        csv, md = write(name, df, base / "tables")
        filled = int(df["ours"].notna().sum())
        print(f"{name}: {filled}/{len(df)} cells filled -> {csv} , {md.name}")
        for line in missing_summary(name, df):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
