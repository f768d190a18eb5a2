"""The paper's tasks by config name: what family each belongs to, where its data lives,
and which metric its table reports.

Metric scale: classification/regression metrics are stored as sklearn/scipy return
them (fractions, or -1..1 for correlations); BLEU and ROUGE-L are stored on 0..100 as
sacrebleu reports BLEU and as the paper's Table 3 prints both; MMLU accuracy is a
fraction. `TaskSpec.table_scale` is the factor that turns a stored value into the
number the paper's tables print, so analysis never guesses. The instruction tasks'
held-out measures are not the paper's: heldout_loss is in nats per response token and
cot_accuracy a fraction (lorafa.tasks.instruct).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

FAMILIES = ("classification", "regression", "seq2seq", "instruction", "mmlu")


def _empty() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True)
class HeldOut:
    """A task's own held-out set: rows of its training split that are never trained on and
    score the run afterwards (instruction tasks have no evaluation split of their own).

    n rows are drawn, or n per distinct value of the column `by` (FLAN CoT: per source, so each
    source's score rests on as many rows), with the fixed `seed`: every method, training seed and
    the base model are scored on the same rows. Training rows whose `key` columns equal a held-out
    row's are dropped as well, so a duplicate in the file cannot leak a held-out example into
    training. data.eval_from_train overrides n (0: no held-out set).
    """

    n: int
    by: str | None = None
    seed: int = 0
    key: tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskSpec:
    name: str
    family: str
    metrics: tuple[str, ...]
    primary_metric: str
    table_scale: float
    hub_id: str | None  # None: local files only
    hub_config: str | None = None
    label: str = ""  # how the paper's tables and figures name the task ("SST-2", "WMT16 En-Ro")
    # split -> path relative to the data dir, in the original release layout.
    local_files: Mapping[str, str] = field(default_factory=_empty)
    # split -> the hub's name for it (identity where absent).
    hub_splits: Mapping[str, str] = field(default_factory=_empty)
    train_split: str = "train"
    eval_splits: tuple[str, ...] = ("validation",)
    num_labels: int | None = None
    label_names: tuple[str, ...] = ()
    # Instruction tasks are scored on another task (the paper: 5-shot MMLU).
    eval_task: str | None = None
    # Instruction tasks: rows of the training split held out for evaluation (heldout_loss, cot_accuracy).
    held_out: HeldOut | None = None
    notes: str = ""

    @property
    def splits(self) -> tuple[str, ...]:
        return (self.train_split, *self.eval_splits)

    def hub_split(self, split: str) -> str:
        return self.hub_splits.get(split, split)


def _glue(name, folder, metrics, primary, num_labels, label_names=(), family="classification",
          eval_splits=("validation",), local=None, hub_splits=None):
    files = local if local is not None else {"train": f"glue/{folder}/train.tsv",
                                             "validation": f"glue/{folder}/dev.tsv"}
    return TaskSpec(
        name=f"glue/{name}", family=family, metrics=metrics, primary_metric=primary,
        table_scale=100.0, hub_id="nyu-mll/glue", hub_config=name, label=folder,
        local_files=MappingProxyType(files), hub_splits=MappingProxyType(hub_splits or {}),
        eval_splits=eval_splits, num_labels=num_labels, label_names=tuple(label_names),
    )


_NLI2 = ("entailment", "not_entailment")
# 100 rows (a tenth of the offline Alpaca sample) scored by heldout_loss after training.
_INSTRUCTION_HELD_OUT = HeldOut(n=100, seed=0, key=("instruction", "input"))

_SPECS = [
    _glue("cola", "CoLA", ("mcc", "accuracy"), "mcc", 2, ("unacceptable", "acceptable")),
    _glue("sst2", "SST-2", ("accuracy",), "accuracy", 2, ("negative", "positive")),
    _glue("mrpc", "MRPC", ("accuracy", "f1"), "accuracy", 2, ("not_equivalent", "equivalent")),
    _glue("qqp", "QQP", ("accuracy", "f1"), "accuracy", 2, ("not_duplicate", "duplicate")),
    _glue("stsb", "STS-B", ("pearson", "spearman"), "pearson", 1, family="regression"),
    # The paper reports the mean of matched and mismatched accuracy (mnli_average).
    _glue("mnli", "MNLI", ("accuracy",), "accuracy", 3, ("entailment", "neutral", "contradiction"),
          eval_splits=("validation_matched", "validation_mismatched"),
          local={"train": "glue/MNLI/train.tsv",
                 "validation_matched": "glue/MNLI/dev_matched.tsv",
                 "validation_mismatched": "glue/MNLI/dev_mismatched.tsv"}),
    _glue("qnli", "QNLI", ("accuracy",), "accuracy", 2, _NLI2),
    _glue("rte", "RTE", ("accuracy",), "accuracy", 2, _NLI2),
    TaskSpec(
        name="wmt16_en_ro", family="seq2seq", metrics=("bleu", "rougeL"), primary_metric="bleu",
        table_scale=1.0, hub_id="wmt/wmt16", hub_config="ro-en", label="WMT16 En-Ro",
        # Local train is the first 10k Europarl lines (the full corpus is hub-only);
        # newstest2016 is hub-only, so "test" is never silently the dev set.
        local_files=MappingProxyType({
            "train": "wmt16_en_ro/europarl_sample",
            "validation": "wmt16_en_ro/newsdev2016",
            "test": "wmt16_en_ro/newstest2016",
        }),
        eval_splits=("validation", "test"),
    ),
    TaskSpec(
        name="alpaca", family="instruction", metrics=("mmlu_accuracy", "heldout_loss"),
        primary_metric="mmlu_accuracy", table_scale=100.0, hub_id="tatsu-lab/alpaca", label="Alpaca",
        local_files=MappingProxyType({"train": "alpaca/alpaca_en_demo.json"}),
        eval_splits=(), eval_task="mmlu", held_out=_INSTRUCTION_HELD_OUT,
    ),
    TaskSpec(
        name="flanv2", family="instruction", metrics=("mmlu_accuracy", "heldout_loss"),
        primary_metric="mmlu_accuracy", table_scale=100.0, label="FLAN v2",
        # Tulu v2's 50k FLAN v2 sample, the size the paper takes from Dettmers et al.
        hub_id="allenai/tulu-v2-sft-mixture", eval_splits=(), eval_task="mmlu",
        held_out=_INSTRUCTION_HELD_OUT,
        notes="rows with dataset == 'flan_v2' (50,000) of the Tulu v2 SFT mixture",
    ),
    TaskSpec(
        name="flan_cot", family="instruction", metrics=("mmlu_accuracy", "heldout_loss", "cot_accuracy"),
        primary_metric="mmlu_accuracy", table_scale=100.0, hub_id=None,
        label="FLAN v2 CoT source files (AQuA, QASC, StrategyQA)",
        # One folder: {aqua,qasc,strategyqa}_train.tsv, as google-research/FLAN releases them.
        local_files=MappingProxyType({"train": "flan_v2/cot_data"}),
        eval_splits=(), eval_task="mmlu",
        held_out=HeldOut(n=100, by="source", seed=0, key=("instruction", "input")),
        notes="FLAN v2 chain-of-thought source files (AQuA, QASC, StrategyQA), not the templated "
              "FLAN v2 mixture; local only; 100 rows of each source held out (cot_accuracy)",
    ),
    TaskSpec(
        name="mmlu", family="mmlu", metrics=("accuracy",), primary_metric="accuracy",
        table_scale=100.0, hub_id="cais/mmlu", label="MMLU",
        # One CSV per subject: mmlu/{dir}/{subject}_{dir}.csv
        local_files=MappingProxyType({"dev": "mmlu/dev", "validation": "mmlu/val",
                                      "test": "mmlu/test"}),
        train_split="dev", eval_splits=("validation", "test"),
    ),
]

TASKS: Mapping[str, TaskSpec] = MappingProxyType({s.name: s for s in _SPECS})


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"task: unknown name {name!r}; available: {', '.join(TASKS)}") from None


def check_split(spec: TaskSpec, split: str) -> None:
    if split not in spec.splits:
        raise ValueError(f"split: {spec.name} has no split {split!r}; "
                         f"available: {', '.join(spec.splits)}")
