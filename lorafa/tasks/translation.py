"""WMT16 English->Romanian for T5: aligned plain-text files (or the hub's wmt/wmt16
ro-en), T5's task prefix, and the BLEU / ROUGE-L of the paper's Table 3.

Loaded splits have the columns `source` (English) and `target` (Romanian).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import datasets
import numpy as np

from lorafa.metrics import load_metric
from lorafa.tasks.common import load_local_or_hub, malformed
from lorafa.tasks.registry import check_split, get_task

__all__ = ["T5_PREFIX", "load_wmt16", "tokenize_translation", "translation_metrics",
           "translation_compute_metrics"]

T5_PREFIX = "translate English to Romanian: "
_SRC, _TGT = "en", "ro"
_FEATURES = datasets.Features({"source": datasets.Value("string"),
                               "target": datasets.Value("string")})


def _read_lines(path: Path) -> list[str]:
    # newline="\n": a stray \r inside a sentence must not split it and misalign the pair.
    with open(path, encoding="utf-8", newline="\n") as f:
        return [line.rstrip("\r\n") for line in f]


def _read_parallel(stem: Path) -> datasets.Dataset:
    src_path, tgt_path = stem.with_name(f"{stem.name}.{_SRC}"), stem.with_name(f"{stem.name}.{_TGT}")
    src, tgt = _read_lines(src_path), _read_lines(tgt_path)
    if len(src) != len(tgt):
        short = src_path if len(src) < len(tgt) else tgt_path
        raise malformed(short, min(len(src), len(tgt)) + 1,
                        f"parallel files not aligned: {src_path} has {len(src)} lines, "
                        f"{tgt_path} has {len(tgt)}")
    return datasets.Dataset.from_dict({"source": src, "target": tgt}, features=_FEATURES)


def _both_exist(stem: Path) -> bool:
    return all(stem.with_name(f"{stem.name}.{lang}").is_file() for lang in (_SRC, _TGT))


def _from_hub(ds: datasets.Dataset) -> datasets.Dataset:
    return ds.map(lambda ex: {"source": ex["translation"][_SRC], "target": ex["translation"][_TGT]},
                  remove_columns=ds.column_names, features=_FEATURES, desc="wmt16 columns")


def load_wmt16(split: str, data_dir: str | Path | None = None) -> datasets.Dataset:
    """"train" (locally: the first 10k Europarl lines), "validation" (newsdev2016) or
    "test" (newstest2016, hub only unless data_dir/wmt16_en_ro/newstest2016.{en,ro} exist)."""
    spec = get_task("wmt16_en_ro")
    check_split(spec, split)
    return load_local_or_hub(spec, split, data_dir, read_local=_read_parallel,
                             from_hub=_from_hub, exists=_both_exist)


def tokenize_translation(dataset: datasets.Dataset, tokenizer, max_source_length: int = 128,
                         max_target_length: int = 128, prefix: str = T5_PREFIX,
                         ) -> datasets.Dataset:
    """input_ids / attention_mask of prefix + English, `labels` of the Romanian side.

    Labels are left unpadded: DataCollatorForSeq2Seq pads them with -100 so padding
    never counts in the loss.
    """
    def encode(batch):
        out = tokenizer([prefix + s for s in batch["source"]], max_length=max_source_length,
                        truncation=True)
        out["labels"] = tokenizer(text_target=batch["target"], max_length=max_target_length,
                                  truncation=True)["input_ids"]
        return out

    return dataset.map(encode, batched=True, remove_columns=dataset.column_names,
                       desc="tokenize WMT16")


def translation_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU (sacrebleu defaults: 13a tokenisation, exp smoothing) and the mean
    ROUGE-L F1 x100 (rouge-score without stemming, the `evaluate` package's default),
    computed by the `translation` evaluate module (lorafa/metrics/translation) on the
    stripped strings.

    rouge-score's tokenizer keeps only [a-z0-9], so Romanian diacritics split words;
    that is kept for comparability with numbers computed the usual way.
    """
    if len(predictions) != len(references):
        raise ValueError(f"predictions: {len(predictions)} strings for {len(references)} references")
    if not predictions:
        raise ValueError("predictions: empty")
    return load_metric("translation").compute(predictions=list(predictions),
                                              references=list(references))


def translation_compute_metrics(tokenizer) -> Callable:
    """A `compute_metrics` for Seq2SeqTrainer(predict_with_generate=True): decodes the
    generated ids and the labels (-100 restored to pad) before scoring."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def compute(eval_pred) -> dict[str, float]:
        preds = eval_pred.predictions
        preds = preds[0] if isinstance(preds, tuple) else preds
        preds = np.where(preds < 0, pad, preds)
        labels = np.where(eval_pred.label_ids < 0, pad, eval_pred.label_ids)
        return translation_metrics(tokenizer.batch_decode(preds, skip_special_tokens=True),
                                   tokenizer.batch_decode(labels, skip_special_tokens=True))

    return compute


# ----------------------------------------------------------------------------- the run's view

def load(name: str, split: str, data_dir: str | Path | None = None) -> datasets.Dataset:
    return load_wmt16(split, data_dir)


def prepare(task, tokenizer, splits, data, eval_batch_size: int):
    """Translation: labels padded with -100, BLEU and ROUGE-L on generated text."""
    from transformers import DataCollatorForSeq2Seq

    from lorafa.tasks.data import PreparedTask

    tok = lambda ds: tokenize_translation(ds, tokenizer, data.max_length, data.max_target_length)  # noqa: E731
    return PreparedTask(train=tok(splits.train), evals={k: tok(v) for k, v in splits.evals.items()},
                        collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100),
                        compute_metrics=translation_compute_metrics(tokenizer), generates=True)
