"""One training run from plain objects: build model + adapters + data + trainer, train,
evaluate, write the run record. experiments/run.py turns a Hydra config into a RunSpec and
calls `run`; nothing here knows about Hydra.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lorafa.config import AdapterConfig
from lorafa.inject import add_adapters, count_trainable
from lorafa.models import ModelSpec, check_compatible, load_model, load_tokenizer
from lorafa.paths import REPO_ROOT
from lorafa.results import RunRecord, config_hash, find_finished, git_commit, utc_now, write_record
from lorafa.tasks import TaskSpec, get_task
from lorafa.training import (TrainingInterrupted, TrainOutcome, TrainSettings, last_checkpoint, train_and_evaluate,
                             world)

METHOD_KINDS = ("adapter", "full_ft", "prompt_tuning", "none")  # none: evaluate the base model only
LOGGERS = ("none", "wandb")
EXIT_PREEMPTED = 143  # 128 + SIGTERM: a run stopped by SIGTERM after checkpointing (no record written)
MIN_FREE_BYTES = 64 * 2**20  # records, logs and the smallest checkpoints


def _need_type(section: str, name: str, value, types: tuple, allowed: str) -> None:
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        raise ValueError(f"{section}.{name}={value!r} has type {type(value).__name__}; allowed: {allowed}")


@dataclass
class MethodSpec:
    name: str  # the config name: full_ft, lora, lora_fa, lora_qv, prompt_tuning, lora_fa_corrected
    kind: str = "adapter"
    adapter: AdapterConfig | None = None
    num_virtual_tokens: int = 20

    def validate(self) -> None:
        _need_type("method", "name", self.name, (str,), "a string")
        _need_type("method", "num_virtual_tokens", self.num_virtual_tokens, (int,), "an integer >= 1")
        if self.adapter is not None and not isinstance(self.adapter, AdapterConfig):
            raise ValueError(f"method.adapter must be an AdapterConfig, got {type(self.adapter).__name__}")
        if self.kind not in METHOD_KINDS:
            raise ValueError(f"method.kind={self.kind!r} is invalid; allowed: {', '.join(METHOD_KINDS)}")
        if self.kind == "adapter" and self.adapter is None:
            raise ValueError(f"method {self.name!r}: kind 'adapter' needs method.adapter settings")
        if self.kind == "prompt_tuning" and self.num_virtual_tokens < 1:
            raise ValueError(f"method.num_virtual_tokens={self.num_virtual_tokens} is invalid; allowed: >= 1")


@dataclass
class DataSpec:
    dir: str | None = None
    max_length: int = 128  # the paper's sequence length (source length for translation)
    max_target_length: int = 128
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    train_split: str | None = None  # None: the task's; "validation" trains on dev (QNLI offline)
    eval_splits: list[str] | None = None  # None: all of the task's evaluation splits
    eval_from_train: int | None = None  # hold out N training rows as the eval set (QNLI offline)
    mmlu_subjects: list[str] | None = None  # None: all 57
    mmlu_k: int = 5
    mmlu_max_examples: int | None = None
    mmlu_split: str = "test"

    def validate(self) -> None:
        _need_type("data", "dir", self.dir, (str, type(None)), "null or a directory path")
        for name in ("max_length", "max_target_length", "mmlu_k"):
            _need_type("data", name, getattr(self, name), (int,), "an integer")
        for name in ("max_train_samples", "max_eval_samples", "eval_from_train", "mmlu_max_examples"):
            _need_type("data", name, getattr(self, name), (int, type(None)), "null or an integer")
        for name in ("train_split", "mmlu_split"):
            _need_type("data", name, getattr(self, name), (str, type(None)), "a split name")
        for name in ("eval_splits", "mmlu_subjects"):
            value = getattr(self, name)
            _need_type("data", name, value, (list, tuple, type(None)), "null or a list of names")
            if value is not None and (not value or not all(isinstance(v, str) and v for v in value)):
                raise ValueError(f"data.{name}={value!r} is invalid; allowed: null or a non-empty list of names")
        if self.dir is not None and not Path(self.dir).expanduser().is_dir():
            raise ValueError(f"data.dir={self.dir!r} is not a directory")
        if self.mmlu_k < 0:
            raise ValueError(f"data.mmlu_k={self.mmlu_k} is invalid; allowed: an integer >= 0")
        for name in ("max_length", "max_target_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name}={getattr(self, name)} is invalid; allowed: an integer >= 1")
        for name in ("max_train_samples", "max_eval_samples", "eval_from_train", "mmlu_max_examples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"data.{name}={value} is invalid; allowed: null or an integer >= 1")


@dataclass
class RunSpec:
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

    def validate(self) -> TaskSpec:
        """Every field checked before any model is built; returns the task's spec."""
        for name in ("task", "experiment", "scale", "results_root", "logger", "wandb_project"):
            _need_type("run", name, getattr(self, name), (str,), "a string")
        if not isinstance(self.trainer, TrainSettings):
            raise ValueError(f"trainer must be a TrainSettings, got {type(self.trainer).__name__}")
        task = get_task(self.task)
        if (task.family == "mmlu") != (self.method.kind == "none"):
            raise ValueError("task='mmlu' is evaluation only and goes with method=base (the base model's "
                             "5-shot score, Table 4); to fine-tune, use task=alpaca or task=flanv2 "
                             "(MMLU 5-shot runs after training)")
        self.model.validate()
        self.method.validate()
        if self.method.kind != "none":  # nothing trains, so no training settings apply
            self.trainer.validate()
        self.data.validate()
        check_compatible(self.model, task.family, task.name)
        if self.method.kind == "prompt_tuning" and task.family not in ("classification", "regression"):
            raise ValueError(f"method={self.method.name!r} is implemented for GLUE tasks only, not task={self.task!r}")
        if self.logger not in LOGGERS:
            raise ValueError(f"logger={self.logger!r} is invalid; allowed: {', '.join(LOGGERS)}")
        self._check_splits(task)
        return task

    def _check_splits(self, task: TaskSpec) -> None:
        """Split names the task has (a typo would otherwise fail after the model is built)."""
        known = set(task.local_files) | set(task.hub_splits) | set(task.splits)
        if task.family == "mmlu":
            return
        if self.data.train_split is not None and self.data.train_split not in known:
            raise ValueError(f"data.train_split={self.data.train_split!r} is not a split of {task.name}; "
                             f"allowed: {', '.join(sorted(known))}")
        for value in self.data.eval_splits or ():
            if value not in known:
                raise ValueError(f"data.eval_splits entry {value!r} is not a split of {task.name}; "
                                 f"allowed: {', '.join(sorted(known))}")

    def identity(self) -> dict[str, Any]:
        """What defines the run's result: everything but where it is written and logged."""
        d = dataclasses.asdict(self)
        for key in ("results_root", "logger", "wandb_project"):
            d.pop(key)
        d["data"].pop("dir")
        d["trainer"].pop("report_to")
        d["trainer"].pop("save_steps")  # how often to checkpoint does not change the result
        return d

    def run_id(self, digest: str) -> str:
        m = self.method
        r = f"r{m.adapter.r}" if m.adapter and m.kind == "adapter" else m.kind
        text = f"{self.experiment}__{self.model.name}__{self.task}__{m.name}__{r}__lr{self.trainer.lr:g}" \
               f"__s{self.trainer.seed}__{digest[:8]}"
        return re.sub(r"[^A-Za-z0-9_.=-]+", "-", text)


# ----------------------------------------------------------------------------- data

def _limit(dataset, n: int | None, seed: int):
    if n is None or n >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(n))


def build_data(spec: RunSpec, task: TaskSpec, tokenizer):
    """(train dataset, {suffix: eval dataset}, collator, compute_metrics, final_eval) for the task family."""
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding

    from lorafa.tasks import load_split

    data, seed = spec.data, spec.trainer.seed
    if task.family == "mmlu":
        return None, {}, None, None, _mmlu_eval(spec, tokenizer)
    train = load_split(task.name, data.train_split or task.train_split, data.dir)
    if data.eval_from_train:
        from lorafa.tasks.common import train_eval_split
        train, held_out = train_eval_split(train, data.eval_from_train, seed=seed)
        raw_evals = {"": held_out}
    else:
        splits = data.eval_splits or task.eval_splits
        # one split keeps plain metric names; several (MNLI matched/mismatched) get a suffix each
        raw_evals = {(s.rsplit("_", 1)[-1] if len(splits) > 1 else ""): load_split(task.name, s, data.dir)
                     for s in splits}
    train = _limit(train, data.max_train_samples, seed)
    raw_evals = {k: _limit(v, data.max_eval_samples, seed) for k, v in raw_evals.items()}

    if task.family in ("classification", "regression"):
        from lorafa.tasks.glue import glue_compute_metrics, tokenize_glue
        tok = lambda ds: tokenize_glue(ds, tokenizer, data.max_length)  # noqa: E731
        return (tok(train), {k: tok(v) for k, v in raw_evals.items()},
                DataCollatorWithPadding(tokenizer), glue_compute_metrics(task.name), None)
    if task.family == "seq2seq":
        from lorafa.tasks.translation import tokenize_translation, translation_compute_metrics
        tok = lambda ds: tokenize_translation(ds, tokenizer, data.max_length, data.max_target_length)  # noqa: E731
        return (tok(train), {k: tok(v) for k, v in raw_evals.items()},
                DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100),
                translation_compute_metrics(tokenizer), None)
    # instruction tuning: no eval set during training; MMLU k-shot afterwards
    from lorafa.tasks.instruct import tokenize_instruction

    final_eval = _mmlu_eval(spec, tokenizer)
    train = tokenize_instruction(train, tokenizer, data.max_length)
    if len(train) == 0:
        raise ValueError(f"data.max_length={data.max_length} leaves no {task.name} example with a response token; "
                         f"raise it")
    return train, {}, DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding=True), None, final_eval


def _mmlu_eval(spec: RunSpec, tokenizer):
    from lorafa.tasks.mmlu import evaluate_mmlu

    data = spec.data

    def final_eval(model) -> dict:
        model.eval()
        result = evaluate_mmlu(model, tokenizer, data.mmlu_subjects, split=data.mmlu_split, k=data.mmlu_k,
                               max_examples_per_subject=data.mmlu_max_examples,
                               batch_size=spec.trainer.eval_batch_size, data_dir=data.dir)
        out = {"mmlu_accuracy": result["accuracy"]}
        out.update({f"mmlu/{s}": acc for s, acc in result["per_subject"].items()})
        return out

    return final_eval


# ----------------------------------------------------------------------------- model

def build_model(spec: RunSpec, task: TaskSpec):
    tokenizer = load_tokenizer(spec.model)
    model = load_model(spec.model, task.family, tokenizer, task.num_labels)
    method = spec.method
    if method.kind == "adapter":
        add_adapters(model, method.adapter)
    elif method.kind == "full_ft":
        add_adapters(model, AdapterConfig(method="full_ft"))
    elif method.kind == "none":
        model.requires_grad_(False)
    else:  # prompt tuning (Table 2's "PT" rows) comes from PEFT
        from peft import PromptTuningConfig, TaskType, get_peft_model
        model = get_peft_model(model, PromptTuningConfig(task_type=TaskType.SEQ_CLS,
                                                         num_virtual_tokens=method.num_virtual_tokens))
    return model, tokenizer


# ----------------------------------------------------------------------------- the run



def _device() -> str:
    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name()}"
    return f"cpu:{os.cpu_count()}cores@{socket.gethostname()}"




def _check_writable(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ValueError(f"results directory {root} is not writable: {err}") from err


def _check_free_space(root: Path, need_bytes: int, what: str) -> None:
    """A full disk is reported before training, not as a lost checkpoint or record afterwards."""
    free = shutil.disk_usage(root).free
    if free < need_bytes:
        raise ValueError(f"results directory {root} has {free / 2**20:.1f} MiB free; {what} needs about "
                         f"{need_bytes / 2**20:.1f} MiB: free some space or set results_dir elsewhere")


def checkpoint_bytes(model) -> int:
    """A checkpoint's size: the trainable parameters, AdamW's two fp32 moments, slack for the rest."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return sum(p.numel() * (p.element_size() + 8) for p in trainable) + 2**20


def checkpoint_dir(root: str | os.PathLike, run_id: str) -> Path:
    """Where a run's Trainer keeps its checkpoints until its record is written."""
    return Path(root) / "checkpoints" / run_id


def run(spec: RunSpec, force: bool = False, callbacks: list | None = None) -> RunRecord:
    """Train and evaluate one configuration, unless a finished record with the same hash exists.

    The Trainer works in <results_root>/checkpoints/<run_id>. A SIGTERM checkpoints there
    and raises TrainingInterrupted without writing a record; the next run of the same
    configuration resumes from that checkpoint (force=True starts afresh). The folder is
    deleted once the record is written. Under several processes (torchrun, accelerate)
    rank 0 alone writes records; the world size joins the config hash when it is above 1
    (the global batch differs).
    """
    task = spec.validate()
    root = Path(spec.results_root)
    _check_writable(root)
    _check_free_space(root, MIN_FREE_BYTES, "a run's record and logs")
    rank, world_size = world()
    identity = spec.identity()
    if world_size > 1:
        identity["world_size"] = world_size
    digest = config_hash(identity)
    if not force and (done := find_finished(root, digest)) is not None:
        print(f"[lorafa] skip: finished run {done.run_id} (config {digest})")
        return done
    run_id = spec.run_id(digest)
    work = checkpoint_dir(root, run_id)
    if force and rank == 0 and work.exists():
        shutil.rmtree(work, ignore_errors=True)
    started, t0 = utc_now(), time.perf_counter()
    adapter = spec.method.adapter
    common = dict(
        run_id=run_id, config_hash=digest, experiment=spec.experiment, scale=spec.scale, model=spec.model.name,
        task=spec.task, method=spec.method.name, r=adapter.r if adapter else None,
        alpha=adapter.alpha if adapter else None, lr=spec.trainer.lr, init_a=adapter.init_a if adapter else None,
        seed=spec.trainer.seed, batch_size=spec.trainer.batch_size, seq_len=spec.data.max_length,
        options={"dropout": adapter.dropout if adapter else None, "precision": spec.trainer.precision,
                 "model_dtype": spec.model.dtype, "attn_implementation": spec.model.attn_implementation,
                 "gradient_checkpointing": spec.trainer.gradient_checkpointing},
        git_commit=git_commit(), device=_device(), started_at=started)
    if world_size > 1:
        common["options"]["world_size"] = world_size
    try:
        # Data first: a malformed row (reported with its file and line) fails before any model is built.
        train, evals, collator, compute_metrics, final_eval = build_data(spec, task, load_tokenizer(spec.model))
        torch.manual_seed(spec.trainer.seed)
        model, tokenizer = build_model(spec, task)
        if train is None:  # evaluation only (the base model on MMLU)
            outcome = TrainOutcome(status="ok", metrics=final_eval(model), eval_history=[], step_time_s=None,
                                   tokens_per_s=None, peak_memory_bytes=None, memory_source=None,
                                   activation_bytes=None, memory_breakdown=None)
        else:
            _check_free_space(root, checkpoint_bytes(model) + MIN_FREE_BYTES, "a checkpoint of this run")
            outcome = _train(spec, task, run_id, model, tokenizer, train, evals, collator, compute_metrics,
                             final_eval, work, callbacks)
    except TrainingInterrupted as stop:
        # No record: the run is unfinished, and the next sweep resumes it from the checkpoint.
        print(f"[lorafa] interrupted: {run_id} at step {stop.step}; checkpoint {stop.checkpoint} "
              f"(rerun to resume)", flush=True)
        raise
    except Exception as err:
        # The failure is recorded (the analysis shows why a cell is empty) and a rerun retries it.
        if rank == 0:
            try:
                # A task whose files are not local and whose hub copy is out of reach is a fact
                # about the machine, and the tables say so in these words.
                message = f"{type(err).__name__}: {err}".splitlines()[0]
                if isinstance(err, FileNotFoundError):  # the first line is what a table cell shows
                    message = f"data unavailable offline\n{message}"
                write_record(RunRecord(**common, status="failed", error=message,
                                       wall_s=round(time.perf_counter() - t0, 3), finished_at=utc_now()), root)
            except OSError as write_err:  # e.g. the disk filled up meanwhile: keep the original error
                print(f"[lorafa] could not write the failed record: {write_err}", flush=True)
        raise
    if outcome.resumed_from_step is not None:
        common["options"]["resumed_from_step"] = outcome.resumed_from_step
    if outcome.steps_run is not None:
        common["options"]["steps_run"] = outcome.steps_run
    record = RunRecord(
        **common, status=outcome.status, metrics=outcome.metrics, eval_history=outcome.eval_history,
        trainable_params=count_trainable(model), peak_memory_bytes=outcome.peak_memory_bytes,
        memory_source=outcome.memory_source, activation_bytes=outcome.activation_bytes,
        memory_breakdown=outcome.memory_breakdown, step_time_s=outcome.step_time_s,
        tokens_per_s=outcome.tokens_per_s, wall_s=round(time.perf_counter() - t0, 3), error=outcome.error,
        finished_at=utc_now())
    if rank != 0:
        return record
    path = write_record(record, root)
    shutil.rmtree(work, ignore_errors=True)  # the record is final: checkpoints are no longer needed
    try:
        work.parent.rmdir()  # only when no other run has checkpoints there
    except OSError:
        pass
    if spec.logger == "wandb":
        _log_summary_to_wandb(record)
    print(f"[lorafa] {record.status}: {record.run_id}\n[lorafa] record: {path}")
    return record


def _train(spec: RunSpec, task: TaskSpec, run_id: str, model, tokenizer, train, evals, collator, compute_metrics,
           final_eval, work: Path | None = None, callbacks: list | None = None) -> TrainOutcome:
    if spec.logger == "wandb":  # Trainer's W&B integration; offline unless the user chose otherwise
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_PROJECT", spec.wandb_project)
        os.environ.setdefault("WANDB_DIR", spec.results_root)
        spec.trainer.report_to = ["wandb"]
    if work is None:
        with tempfile.TemporaryDirectory(prefix="lorafa-run-") as tmp:
            return train_and_evaluate(model, tokenizer, spec.trainer, train, evals, collator, compute_metrics,
                                      output_dir=tmp, run_name=run_id, seq2seq=task.family == "seq2seq",
                                      final_eval=final_eval, callbacks=callbacks)
    resume = last_checkpoint(work)
    if resume is not None:
        print(f"[lorafa] resuming {run_id} from {resume}", flush=True)
    return train_and_evaluate(model, tokenizer, spec.trainer, train, evals, collator, compute_metrics,
                              output_dir=str(work), run_name=run_id, seq2seq=task.family == "seq2seq",
                              final_eval=final_eval, callbacks=callbacks, resume_from_checkpoint=resume,
                              handle_sigterm=True)


def _log_summary_to_wandb(record: RunRecord) -> None:
    import wandb

    if wandb.run is None:
        return
    summary = {k: v for k, v in record.metrics.items() if isinstance(v, (int, float))}
    summary.update({k: getattr(record, k) for k in ("peak_memory_bytes", "activation_bytes", "trainable_params",
                                                     "step_time_s", "tokens_per_s", "wall_s") if getattr(record, k) is not None})
    summary["status"] = record.status
    wandb.run.summary.update(summary)
    wandb.finish()
