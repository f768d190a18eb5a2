"""Unlabeled text for the tiny models' tokenizer and pretraining.

General text (WikiText-2, Tiny Shakespeare) plus the sentences of the tasks' training files
with their labels dropped: in-domain text, as domain-adaptive pretraining uses. Evaluation
splits are left out so the tiny models never see what they are scored on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from lorafa.paths import data_dir

# (task, split, text columns): the training side of every task the mini scale runs.
TASK_TEXT = (
    ("glue/sst2", "train", ("sentence1",)),
    ("glue/cola", "train", ("sentence1",)),
    ("glue/mrpc", "train", ("sentence1", "sentence2")),
    ("glue/rte", "train", ("sentence1", "sentence2")),
    ("glue/stsb", "train", ("sentence1", "sentence2")),
    ("wmt16_en_ro", "train", ("source", "target")),
    ("alpaca", "train", ("instruction", "input", "output")),
)
GENERAL_TEXT = ("text/wikitext-2/valid.txt", "text/wikitext-2/test.txt", "text/tinyshakespeare.txt")


def iter_general_text(root: Path | None = None) -> Iterator[str]:
    root = root or data_dir()
    for rel in GENERAL_TEXT:
        path = root / rel
        if not path.is_file():
            raise FileNotFoundError(f"pretraining text not found: {path} (set LORAFA_DATA_DIR)")
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                yield line.strip()


def iter_task_text(root: Path | None = None) -> Iterator[str]:
    from lorafa.tasks import load_split

    for task, split, columns in TASK_TEXT:
        dataset = load_split(task, split, root)
        for column in columns:
            for text in dataset[column]:
                if text and text.strip():
                    yield text.strip()


def iter_corpus(root: Path | None = None) -> Iterator[str]:
    yield from iter_general_text(root)
    yield from iter_task_text(root)
