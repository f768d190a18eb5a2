"""What tables and figures call models and tasks, and which metric they print, taken from where
the project defines them rather than restated here.

    model_label("tiny-roberta")   -> "tiny-RoBERTa"     conf/model/<name>.yaml's label
    paper_model("tiny-roberta")   -> "RoBERTa-base"     via conf/scale/*.yaml's stands_in_for
    config_name("RoBERTa-base")   -> "roberta-base"
    task_label("glue/sst2")       -> "SST-2"            lorafa.tasks.registry
    task_value("glue/cola")       -> metrics -> mcc x 100, the paper's number

analysis/ reads conf/ as plain YAML; the library (lorafa/) never sees these files.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping

import yaml

from analysis.common import mean_of, metric
from lorafa.paths import REPO_ROOT
from lorafa.tasks.registry import TASKS, get_task

CONF = REPO_ROOT / "conf"
METRIC_LABELS = {"mcc": "MCC", "pearson": "Pearson"}  # axis names; other metrics keep their own


def _yaml(path: Path) -> dict:
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping, got {type(data).__name__}")
    return data


@lru_cache(maxsize=None)
def model_labels() -> Mapping[str, str]:
    """Config name -> label, for every conf/model/<name>.yaml (the name where it has no label)."""
    labels = {}
    for path in sorted((CONF / "model").glob("*.yaml")):
        cfg = _yaml(path)
        labels[cfg.get("name") or path.stem] = cfg.get("label") or path.stem
    return MappingProxyType(labels)


@lru_cache(maxsize=None)
def stands_in_for() -> Mapping[str, str]:
    """Stand-in -> the paper model whose rows it is compared with, from every conf/scale/*.yaml.

    Merged over the scales: a model stands in for the same paper model whichever scale's records
    it appears in. mini.yaml is a `_global_` package (the key sits under `scale:`); paper.yaml a
    plain group file; both are read.
    """
    merged: dict[str, str] = {}
    for path in sorted((CONF / "scale").glob("*.yaml")):
        cfg = _yaml(path)
        section = cfg["scale"] if isinstance(cfg.get("scale"), dict) else cfg
        for stand_in, model in (section.get("stands_in_for") or {}).items():
            if model not in model_labels():
                raise ValueError(f"stands_in_for: {path.name} maps {stand_in!r} to {model!r}; "
                                 f"allowed: {', '.join(model_labels())}")
            if merged.setdefault(stand_in, model) != model:
                raise ValueError(f"stands_in_for: {stand_in!r} stands in for both {merged[stand_in]!r} "
                                 f"and {model!r} ({path.name})")
    return MappingProxyType(merged)


def model_label(model: str) -> str:
    return model_labels().get(model, str(model))


def paper_model(model: str) -> str:
    """The label of the paper model a record's model is compared with ("" for a model without a config)."""
    return model_labels().get(stands_in_for().get(model, model), "")


def is_paper_model(model: str) -> bool:
    """One of the paper's own models (so the paper's absolute numbers are comparable)."""
    return model in model_labels() and model not in stands_in_for()


def config_name(paper_label: str) -> str:
    """The config name of the paper model with this label: "RoBERTa-base" -> "roberta-base"."""
    for name, label in model_labels().items():
        if label == paper_label and name not in stands_in_for():
            return name
    own = [label for name, label in model_labels().items() if name not in stands_in_for()]
    raise ValueError(f"paper model: no conf/model config has label {paper_label!r}; allowed: {', '.join(own)}")


def task_label(task) -> str:
    spec = TASKS.get(task) if task is not None else None
    return (spec.label or spec.name) if spec else ("" if task is None else str(task))


def task_value(task: str) -> Callable[[dict], float | None]:
    """The task's primary metric as the paper prints it (x TaskSpec.table_scale).

    A task evaluated on several validation sets (MNLI: validation_matched/_mismatched) stores
    the metric once per set, suffixed as lorafa.experiment names them; the paper reports their
    mean, and a record with the plain metric only is read as that mean.
    """
    spec = get_task(task)
    name, factor = spec.primary_metric, spec.table_scale
    suffixes = [s.rsplit("_", 1)[-1] for s in spec.eval_splits if s.startswith("validation_")]
    if len(suffixes) > 1:
        return mean_of(tuple(f"{name}_{s}" for s in suffixes), factor, fallback=name)
    return metric(name, factor)


def metric_label(task: str) -> str:
    """How an axis names the task's primary metric: "MCC", "Pearson", "accuracy"."""
    name = get_task(task).primary_metric
    return METRIC_LABELS.get(name, name)
