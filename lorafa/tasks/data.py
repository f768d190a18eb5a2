"""What a run needs of its task: the data settings, the raw splits, and what the task's family
makes of them (tokenised splits, collator, metrics), so that a run never branches on families.

    splits = load_splits(task, data, seed, train=True)           # raw datasets (train=False: evaluation only)
    prepared = prepare_task(task, tokenizer, splits, data, eval_batch_size)

Each family module (glue, translation, instruct, mmlu) has `load(name, split, data_dir)` and
`prepare(task, tokenizer, splits, data, eval_batch_size) -> PreparedTask`; FAMILY_MODULES says
which module serves which family.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from lorafa.tasks.registry import HeldOut, TaskSpec
from lorafa.validation import require, require_int, require_type

FAMILY_MODULES = {"classification": "lorafa.tasks.glue", "regression": "lorafa.tasks.glue",
                  "seq2seq": "lorafa.tasks.translation", "instruction": "lorafa.tasks.instruct",
                  "mmlu": "lorafa.tasks.mmlu"}


@dataclass
class DataSpec:
    """The `data` config group.

    dir: the local data directory (null: $LORAFA_DATA_DIR, else ../shared/data, else the hub).
    max_length: tokens per example (translation: the source); the paper's sequence length.
    max_target_length: translation's target tokens.
    max_train_samples, max_eval_samples: a seeded subsample of each (null: all); of a task's own
        held-out set (instruction tasks), its first N rows, the same for every seed.
    train_split: null: the task's; e.g. "validation" trains on dev (QNLI offline).
    eval_splits: null: the task's evaluation splits (all of them; MNLI has two).
    eval_from_train: hold out N of the training rows as the evaluation set, drawn at the trainer's
        seed (QNLI offline). Instruction tasks hold out rows of their own (TaskSpec.held_out: 100,
        per source for flan_cot, at a fixed seed); N there resizes that set, 0 removes it.
    mmlu_subjects (null: all 57; []: no MMLU), mmlu_k (shots), mmlu_max_examples (per subject,
        null: all), mmlu_split: the MMLU evaluation after instruction tuning, or of a base model.
    cot_max_examples: held-out rows scored by generation (cot_accuracy; flan_cot), the first N of
        the held-out set, which alternates sources (null: all; 0: none); cot_max_new_tokens: its greedy
        generation's length limit.
    """

    dir: str | None = None
    max_length: int = 128
    max_target_length: int = 128
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    train_split: str | None = None
    eval_splits: list[str] | None = None
    eval_from_train: int | None = None
    mmlu_subjects: list[str] | None = None
    mmlu_k: int = 5
    mmlu_max_examples: int | None = None
    mmlu_split: str = "test"
    cot_max_examples: int | None = None
    cot_max_new_tokens: int = 128

    def __post_init__(self) -> None:
        require_type("data.dir", self.dir, (str, type(None)))
        require(self.dir is None or Path(self.dir).expanduser().is_dir(), "data.dir", self.dir,
                "null or an existing directory")
        for name in ("max_length", "max_target_length", "cot_max_new_tokens"):
            require_int(f"data.{name}", getattr(self, name))
        require_int("data.mmlu_k", self.mmlu_k, minimum=0)
        require_int("data.eval_from_train", self.eval_from_train, minimum=0, allow_none=True)
        for name in ("max_train_samples", "max_eval_samples", "mmlu_max_examples"):
            require_int(f"data.{name}", getattr(self, name), allow_none=True)
        require_int("data.cot_max_examples", self.cot_max_examples, minimum=0, allow_none=True)  # 0: no generation
        for name in ("train_split", "mmlu_split"):
            require_type(f"data.{name}", getattr(self, name), (str, type(None)))
        for name, empty in (("eval_splits", False), ("mmlu_subjects", True)):
            value = getattr(self, name)
            require(value is None or (isinstance(value, (list, tuple)) and (empty or len(value) > 0)
                                      and all(isinstance(v, str) and v for v in value)),
                    f"data.{name}", value, "null or a list of names" + ("" if empty else " (non-empty)"))

    @property
    def runs_mmlu(self) -> bool:
        return self.mmlu_subjects is None or len(self.mmlu_subjects) > 0

    def held_out(self, task: TaskSpec, seed: int) -> HeldOut | None:
        """The rule that carves the evaluation set out of the training rows, or None: the task's
        own (instruction tasks, a fixed seed), resized by eval_from_train; else eval_from_train
        rows at the trainer's seed (how the QNLI records were made)."""
        n = self.eval_from_train
        if task.held_out is not None:
            return task.held_out if n is None else (replace(task.held_out, n=n) if n else None)
        return HeldOut(n=n, seed=seed) if n else None

    def check_splits(self, task: TaskSpec) -> None:
        """Split names the task has (a typo would otherwise fail after the model is built)."""
        if task.family == "mmlu":
            return
        known = sorted(set(task.local_files) | set(task.hub_splits) | set(task.splits))
        for name, values in (("train_split", [self.train_split] if self.train_split else []),
                             ("eval_splits", self.eval_splits or [])):
            for value in values:
                require(value in known, f"data.{name}", value, f"a split of {task.name}: {', '.join(known)}")


@dataclass
class Splits:
    """A task's raw datasets: train (None: evaluation only) and {suffix: eval set}, where the
    suffix of a single eval set is "" (plain metric names) and several are told apart by it."""

    train: Any
    evals: dict[str, Any]


@dataclass
class PreparedTask:
    """What the trainer needs: tokenised train and eval sets, the collator, the Trainer's
    compute_metrics, a final evaluation outside the Trainer (MMLU), and whether evaluation
    generates text (Seq2SeqTrainer)."""

    train: Any
    evals: dict[str, Any]
    collator: Any = None
    compute_metrics: Callable | None = None
    final_eval: Callable[[Any], dict] | None = None
    generates: bool = False


def family_module(task: TaskSpec):
    return importlib.import_module(FAMILY_MODULES[task.family])


def _limit(dataset, n: int | None, seed: int):
    if n is None or n >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(n))


def load_splits(task: TaskSpec, data: DataSpec, seed: int, train: bool = True) -> Splits:
    """The raw splits a run trains and evaluates on, subsampled as configured (seeded).

    Rows held out for evaluation (data.held_out) are taken before max_train_samples subsamples
    the rest, so they are never trained on. train=False (method kind "none": the base model)
    gives the same evaluation sets and no training set.
    """
    if task.family == "mmlu":  # evaluation only: MMLU reads its own files
        return Splits(train=None, evals={})
    load = family_module(task).load
    rows = load(task.name, data.train_split or task.train_split, data.dir)
    rule = data.held_out(task, seed)
    if rule is not None:
        from lorafa.tasks.common import held_out_split

        rows, held = held_out_split(rows, rule)
        # A task's own held-out set is already in seeded random order: its prefix is the same for every run.
        limit = _head if task.held_out is not None else _limit
        evals = {"": limit(held, data.max_eval_samples, seed)}
    else:
        names = data.eval_splits or task.eval_splits
        evals = {(s.rsplit("_", 1)[-1] if len(names) > 1 else ""): _limit(load(task.name, s, data.dir),
                                                                          data.max_eval_samples, seed)
                 for s in names}
    return Splits(train=_limit(rows, data.max_train_samples, seed) if train else None, evals=evals)


def _head(dataset, n: int | None, seed: int):
    return dataset if n is None or n >= len(dataset) else dataset.select(range(n))


def prepare_task(task: TaskSpec, tokenizer, splits: Splits, data: DataSpec, eval_batch_size: int) -> PreparedTask:
    return family_module(task).prepare(task, tokenizer, splits, data, eval_batch_size)
