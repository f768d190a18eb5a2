"""A training run as plain, validated objects: what experiments/run.py makes of a Hydra config.

    spec = RunSpec(model=ModelSpec(...), task="glue/mrpc", method=MethodSpec(...),
                   trainer=TrainSettings(...), data=DataSpec(...))
    record = lorafa.recipe.run(spec)

Each part checks its own fields when it is made (lorafa.validation); RunSpec checks how they
fit together. So a bad value anywhere in a sweep fails before any model is built.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from lorafa.config import AdapterConfig
from lorafa.models import ModelSpec, check_compatible, check_local_weights_match
from lorafa.paths import REPO_ROOT
from lorafa.tasks import TaskSpec, get_task
from lorafa.tasks.data import DataSpec
from lorafa.training import TrainSettings
from lorafa.validation import require, require_choice, require_int, require_type

METHOD_KINDS = ("adapter", "full_ft", "prompt_tuning", "none")  # none: evaluate the base model only
EVALUATION_ONLY_FAMILIES = ("mmlu", "instruction")  # where kind "none" has something to evaluate
LOGGERS = ("none", "wandb")


# Fields added after records existed: left out of the hash at these defaults (RunSpec.config).
LATER_FIELDS = {"trainer": {"group_by_length": False, "batch_rebalance": False, "selective_recompute": False},
                "data": {"cot_max_examples": None, "cot_max_new_tokens": 128}}


@dataclass
class MethodSpec:
    """The `method` config group.

    name: the config's name (full_ft, lora, lora_fa, lora_qv, prompt_tuning, lora_fa_corrected,
        base), what records and tables call the method.
    kind: adapter (LoRA / LoRA-FA through lorafa.add_adapters, set by `adapter`), full_ft
        (every parameter trains), prompt_tuning (PEFT's, Table 2's "PT"), none (no training:
        the base model's evaluation).
    adapter: the AdapterConfig of kind "adapter".
    num_virtual_tokens: prompt tuning's soft prompt length.
    """

    name: str
    kind: str = "adapter"
    adapter: AdapterConfig | None = None
    num_virtual_tokens: int = 20

    def __post_init__(self) -> None:
        require_type("method.name", self.name, (str,))
        require_choice("method.kind", self.kind, METHOD_KINDS)
        require_int("method.num_virtual_tokens", self.num_virtual_tokens)
        require(self.adapter is None or isinstance(self.adapter, AdapterConfig), "method.adapter", self.adapter,
                "an AdapterConfig or null")
        require(self.kind != "adapter" or self.adapter is not None, "method.adapter", self.adapter,
                f"adapter settings: method {self.name!r} is of kind 'adapter'")


@dataclass
class RunSpec:
    """One training (or evaluation) run.

    model, task (a lorafa.tasks name), method, trainer, data: see their classes.
    experiment: the record's experiment name (table2, fig4, ...: what the analysis selects).
    scale: paper | mini | ...; results_root: where records go (results/<scale>).
    logger: none | wandb; wandb_project: W&B's project.
    dry_run: a rehearsal of this configuration (lorafa.dryrun): random weights, one step.
    """

    model: ModelSpec
    task: str
    method: MethodSpec
    trainer: TrainSettings
    data: DataSpec = field(default_factory=DataSpec)
    experiment: str = "run"
    scale: str = "paper"
    results_root: str = str(REPO_ROOT / "results" / "paper")
    logger: str = "none"
    wandb_project: str = "lorafa"
    dry_run: bool = False

    @classmethod
    def from_config(cls, c: dict[str, Any]) -> RunSpec:
        """A resolved config (conf/config.yaml as plain data: Hydra's, with OmegaConf.to_container)
        as a RunSpec. The scale's per-task trainer and data settings (`by_task`) are applied."""
        from lorafa.paths import results_dir
        from lorafa.validation import require_known_keys

        model = dict(c["model"], **({"dtype": c["model_dtype"]} if c.get("model_dtype") else {}))
        method = c["method"]
        trainer = dict(c["trainer"], seed=c["seed"])
        trainer.update(trainer.pop("by_task", {}).get(c["task"]["name"], {}))
        require_known_keys("trainer", trainer, TrainSettings.__dataclass_fields__)
        data = dict(c["data"])
        data.update(data.pop("by_task", {}).get(c["task"]["name"], {}))
        require_known_keys("data", data, DataSpec.__dataclass_fields__)
        if not data.get("eval_splits"):  # the task config may name its evaluation split(s)
            data["eval_splits"] = c["task"].get("eval_splits")
        return cls(
            model=ModelSpec.from_dict(model),
            task=c["task"]["name"],
            method=MethodSpec(name=method["name"], kind=method.get("kind", "adapter"),
                              adapter=AdapterConfig(**method["adapter"]) if method.get("adapter") else None,
                              num_virtual_tokens=method.get("num_virtual_tokens", 20)),
            trainer=TrainSettings(**trainer),
            data=DataSpec(**data),
            experiment=c["experiment_name"],
            scale=c["scale"]["name"],
            results_root=c["results_dir"] or str(results_dir() / c["scale"]["name"]),
            logger=c["logger"]["name"],
            wandb_project=c["logger"].get("project", "lorafa"),
        )

    def __post_init__(self) -> None:
        require_type("dry_run", self.dry_run, (bool,))
        for name in ("task", "experiment", "scale", "results_root", "wandb_project"):
            require_type(name, getattr(self, name), (str,))
        require_choice("logger", self.logger, LOGGERS)
        for name, cls in (("model", ModelSpec), ("method", MethodSpec), ("trainer", TrainSettings),
                          ("data", DataSpec)):
            require(isinstance(getattr(self, name), cls), name, getattr(self, name), f"a {cls.__name__}")
        task = self.task_spec
        if task.family == "mmlu" and self.method.kind != "none":
            raise ValueError("task='mmlu' is evaluation only and goes with method=base (the base model's "
                             "5-shot score, Table 4); to fine-tune, use task=alpaca, task=flanv2 or "
                             "task=flan_cot (MMLU 5-shot runs after training)")
        if self.method.kind == "none" and task.family not in EVALUATION_ONLY_FAMILIES:
            raise ValueError(f"method={self.method.name!r} trains nothing: it evaluates a base model on "
                             f"task=mmlu or an instruction task (alpaca, flanv2, flan_cot), not task={self.task!r}")
        if task.family == "mmlu" and not self.data.runs_mmlu:
            raise ValueError("data.mmlu_subjects=[] is invalid for task='mmlu'; allowed: null (all 57) or "
                             "a non-empty list of subjects")
        require(self.method.kind == "none" or self.trainer.lr > 0, "trainer.lr", self.trainer.lr, "a finite number > 0")
        check_compatible(self.model, task.family, task.name)
        self.model.check_files()
        check_local_weights_match(self.model)
        if self.method.kind == "prompt_tuning" and task.family not in ("classification", "regression"):
            raise ValueError(f"method={self.method.name!r} is implemented for GLUE tasks only, not task={self.task!r}")
        self.data.check_splits(task)

    @property
    def task_spec(self) -> TaskSpec:
        return get_task(self.task)

    @property
    def trains(self) -> bool:
        """Whether the run trains: method kind "none" evaluates the base model only."""
        return self.method.kind != "none"

    def config(self) -> dict[str, Any]:
        """The resolved configuration a record stores and hashes: everything that decides the
        result, not where it is written and logged, nor how often it is checkpointed."""
        d = dataclasses.asdict(self)
        for key in ("results_root", "logger", "wandb_project"):
            d.pop(key)
        d["model"] = self.model.identity()
        d["data"].pop("dir")
        d["trainer"].pop("report_to")
        d["trainer"].pop("save_steps")
        # Fields added after records existed stay out of the hash at their default, so those
        # records still count as finished.
        for group, fields in LATER_FIELDS.items():
            for key, default in fields.items():
                if d[group][key] == default:
                    d[group].pop(key)
        # A task's own held-out set decides what trains, so its size is part of the configuration.
        if self.task_spec.held_out is not None:
            rule = self.data.held_out(self.task_spec, self.trainer.seed)
            d["data"]["eval_from_train"] = rule.n if rule is not None else 0
        if not self.dry_run:
            d.pop("dry_run")
        return d

    def run_id(self, digest: str) -> str:
        m = self.method
        r = f"r{m.adapter.r}" if m.adapter and m.kind == "adapter" else m.kind
        text = f"{self.experiment}__{self.model.name}__{self.task}__{m.name}__{r}__lr{self.trainer.lr:g}" \
               f"__s{self.trainer.seed}__{digest[:8]}"
        return re.sub(r"[^A-Za-z0-9_.=-]+", "-", text)
