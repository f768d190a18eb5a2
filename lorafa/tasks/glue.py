"""GLUE: the release TSVs (or the hub's nyu-mll/glue) as one uniform table, and the
metrics the paper's Table 2 reports.

Every loaded split has the columns `sentence1`, `sentence2` (pair tasks only) and
`label` (int64 class id in the hub's label order; float32 score for STS-B).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import datasets
import numpy as np

from lorafa.metrics import load_metric
from lorafa.tasks.common import load_local_or_hub, malformed, train_eval_split
from lorafa.tasks.registry import TaskSpec, check_split, get_task

__all__ = ["GLUE_TASKS", "load_glue", "tokenize_glue", "glue_metrics", "glue_compute_metrics",
           "mnli_average", "train_eval_split"]

GLUE_TASKS = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte")


@dataclass(frozen=True)
class _Release:
    """Where the text and label sit in the original GLUE TSV."""
    text: tuple[str, ...] | tuple[int, ...]  # header names, or indices when headerless
    label: str | int
    header: bool = True


_RELEASE = {
    # CoLA's train/dev have no header: source, label, original label, sentence.
    "cola": _Release(text=(3,), label=1, header=False),
    "sst2": _Release(text=("sentence",), label="label"),
    "mrpc": _Release(text=("#1 String", "#2 String"), label="Quality"),
    "qqp": _Release(text=("question1", "question2"), label="is_duplicate"),
    "stsb": _Release(text=("sentence1", "sentence2"), label="score"),
    "mnli": _Release(text=("sentence1", "sentence2"), label="gold_label"),
    "qnli": _Release(text=("question", "sentence"), label="label"),
    "rte": _Release(text=("sentence1", "sentence2"), label="label"),
}

_HUB_TEXT = {
    "cola": ("sentence",), "sst2": ("sentence",), "mrpc": ("sentence1", "sentence2"),
    "qqp": ("question1", "question2"), "stsb": ("sentence1", "sentence2"),
    "mnli": ("premise", "hypothesis"), "qnli": ("question", "sentence"),
    "rte": ("sentence1", "sentence2"),
}


def _short(name: str) -> str:
    short = name.removeprefix("glue/")
    if short not in GLUE_TASKS:
        raise ValueError(f"name: unknown GLUE task {name!r}; available: {', '.join(GLUE_TASKS)}")
    return short


def _features(spec: TaskSpec, pair: bool) -> datasets.Features:
    cols = {"sentence1": datasets.Value("string")}
    if pair:
        cols["sentence2"] = datasets.Value("string")
    cols["label"] = datasets.Value("float32" if spec.family == "regression" else "int64")
    return datasets.Features(cols)


def _parse_label(spec: TaskSpec, raw: str, path: Path, lineno: int) -> int | float:
    if spec.family == "regression":
        try:
            return float(raw)
        except ValueError:
            raise malformed(path, lineno, f"score {raw!r} is not a number") from None
    if raw in spec.label_names:  # NLI files spell labels out; the hub numbers them
        return spec.label_names.index(raw)
    if raw.isdigit() and int(raw) < spec.num_labels:
        return int(raw)
    raise malformed(path, lineno, f"label {raw!r} not in 0..{spec.num_labels - 1} "
                                  f"or {list(spec.label_names)}")


def _read_release_tsv(spec: TaskSpec, path: Path) -> datasets.Dataset:
    fmt = _RELEASE[_short(spec.name)]
    # GLUE TSVs are not CSV-quoted (MRPC has unbalanced quotes inside sentences), so
    # fields are split on tabs only; utf-8-sig drops MRPC's byte-order mark.
    with open(path, encoding="utf-8-sig", newline="\n") as f:
        lines = [line.rstrip("\r\n") for line in f]
    start = 1 if fmt.header else 0
    if fmt.header:
        if not lines:
            raise malformed(path, 1, "empty file, expected a header")
        header = lines[0].split("\t")
        missing = [c for c in (*fmt.text, fmt.label) if c not in header]
        if missing:
            raise malformed(path, 1, f"header lacks {missing}; has {header}")
        text_idx = [header.index(c) for c in fmt.text]
        label_idx = header.index(fmt.label)
        width = len(header)
    else:
        text_idx, label_idx = list(fmt.text), fmt.label
        width = max(*text_idx, label_idx) + 1
    texts: list[list[str]] = [[] for _ in text_idx]
    labels: list[int | float] = []
    for lineno, line in enumerate(lines[start:], start=start + 1):
        if not line:
            continue
        fields = line.split("\t")
        if (fmt.header and len(fields) != width) or len(fields) < width:
            raise malformed(path, lineno, f"{len(fields)} tab-separated fields, expected {width}")
        for column, i in zip(texts, text_idx):
            column.append(fields[i])
        labels.append(_parse_label(spec, fields[label_idx], path, lineno))
    data = {"sentence1": texts[0], **({"sentence2": texts[1]} if len(texts) > 1 else {}),
            "label": labels}
    return datasets.Dataset.from_dict(data, features=_features(spec, len(texts) > 1))


def _from_hub(spec: TaskSpec, ds: datasets.Dataset) -> datasets.Dataset:
    text = _HUB_TEXT[_short(spec.name)]
    ds = ds.select_columns([*text, "label"])
    ds = ds.rename_columns({c: f"sentence{i + 1}" for i, c in enumerate(text)})
    return ds.cast(_features(spec, len(text) > 1))


def load_glue(name: str, split: str, data_dir: str | Path | None = None) -> datasets.Dataset:
    """One labelled GLUE split: "train" or "validation" (MNLI: "validation_matched" /
    "validation_mismatched"), from data_dir/glue/<TASK>/ if the release file is there,
    else from the hub (nyu-mll/glue)."""
    spec = get_task(f"glue/{_short(name)}")
    check_split(spec, split)
    return load_local_or_hub(spec, split, data_dir,
                             read_local=lambda path: _read_release_tsv(spec, path),
                             from_hub=lambda ds: _from_hub(spec, ds))


def tokenize_glue(dataset: datasets.Dataset, tokenizer, max_length: int = 128,
                  padding: bool | str = False) -> datasets.Dataset:
    """input_ids / attention_mask (/ token_type_ids) and `labels`; the text columns are
    dropped so a padding collator sees model inputs only. Padding is left to the
    collator by default (dynamic padding); the paper's sequence length is 128."""
    pair = "sentence2" in dataset.column_names

    def encode(batch):
        texts = (batch["sentence1"], batch["sentence2"]) if pair else (batch["sentence1"],)
        out = tokenizer(*texts, truncation=True, max_length=max_length, padding=padding)
        out["labels"] = batch["label"]
        return out

    return dataset.map(encode, batched=True, remove_columns=dataset.column_names,
                       desc="tokenize GLUE")


def glue_metrics(name: str, predictions: Sequence | np.ndarray,
                 labels: Sequence | np.ndarray) -> dict[str, float]:
    """The task's metrics from class ids or logits (argmax taken) and gold labels,
    computed by the `glue` evaluate module (lorafa/metrics/glue).

    Values are as sklearn/scipy return them (fractions; MCC and correlations in -1..1);
    the paper's tables print them x100 (TaskSpec.table_scale).
    """
    short = _short(name)
    spec = get_task(f"glue/{short}")
    preds, gold = np.asarray(predictions), np.asarray(labels)
    if spec.family == "regression":
        preds = preds.reshape(len(preds), -1)[:, 0] if preds.ndim > 1 else preds
    elif preds.ndim == 2:
        preds = preds.argmax(axis=-1)
    if preds.shape != gold.shape:
        raise ValueError(f"predictions: shape {preds.shape} does not match labels {gold.shape}")
    return load_metric("glue", short).compute(predictions=preds, references=gold)


def glue_compute_metrics(name: str) -> Callable:
    """A `compute_metrics` for transformers' Trainer (takes an EvalPrediction): the task's metrics,
    and for classification majority_accuracy, the share of the eval set's most frequent label: what
    a run that learned nothing scores (analysis: Tables 6 and 7 count a rate as converging only
    above it)."""
    regression = get_task(f"glue/{_short(name)}").family == "regression"

    def compute(eval_pred) -> dict[str, float]:
        logits = eval_pred.predictions
        logits = logits[0] if isinstance(logits, tuple) else logits
        out = glue_metrics(name, logits, eval_pred.label_ids)
        gold = np.asarray(eval_pred.label_ids)
        if not regression and gold.size:
            out["majority_accuracy"] = float(np.bincount(gold.astype(np.int64).ravel()).max() / gold.size)
        return out
    return compute


def mnli_average(matched: Mapping[str, float],
                 mismatched: Mapping[str, float]) -> dict[str, float]:
    """MNLI as the paper reports it: each metric averaged over the matched and
    mismatched dev sets, with the two originals kept under _matched/_mismatched."""
    if set(matched) != set(mismatched):
        raise ValueError(f"mismatched: keys {sorted(mismatched)} differ from matched "
                         f"{sorted(matched)}")
    out = {}
    for key in matched:
        out[key] = (matched[key] + mismatched[key]) / 2
        out[f"{key}_matched"] = matched[key]
        out[f"{key}_mismatched"] = mismatched[key]
    return out


# ----------------------------------------------------------------------------- the run's view

def load(name: str, split: str, data_dir: str | Path | None = None) -> datasets.Dataset:
    return load_glue(name, split, data_dir)


def prepare(task: TaskSpec, tokenizer, splits, data, eval_batch_size: int):
    """Classification and regression: dynamic padding, the task's metrics in the Trainer."""
    from transformers import DataCollatorWithPadding

    from lorafa.tasks.data import PreparedTask

    tok = lambda ds: tokenize_glue(ds, tokenizer, data.max_length)  # noqa: E731
    return PreparedTask(train=tok(splits.train), evals={k: tok(v) for k, v in splits.evals.items()},
                        collator=DataCollatorWithPadding(tokenizer), compute_metrics=glue_compute_metrics(task.name))
