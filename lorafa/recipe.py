"""One fine-tuning run, as a recipe of named steps (the shape of torchtune's recipes).

    record = run(spec)                       # spec: a lorafa.spec.RunSpec

    recipe = FinetuneRecipe(spec, work_dir)
    recipe.setup_data()      # tokenizer; the task's tokenised splits, collator and metrics
    recipe.setup_model()     # the model, then adapters, full fine-tuning or prompt tuning
    recipe.train(run_id)     # transformers' Trainer with the project's callbacks
    recipe.evaluate()        # every evaluation split, then the task's own (MMLU)
    recipe.result()          # the run record's result fields

`run` goes through these inside lorafa.runner.run_once, which skips a configuration that
already has a finished record and writes the record (with its provenance) when the run ends,
fails or runs out of memory. Checkpoints live in <results_root>/checkpoints/<run_id> until the
record is written; a SIGTERM checkpoints there and the next run of the same configuration
resumes. Under several processes (torchrun, accelerate) rank 0 alone writes records, and the
world size joins the configuration (the global batch differs).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from lorafa.config import AdapterConfig
from lorafa.inject import add_adapters, count_trainable
from lorafa.models import check_local_weights_match, load_model, load_tokenizer, weights_identity
from lorafa.provenance import device_name
from lorafa.recompute import enable_selective_recompute
from lorafa.runner import run_once
from lorafa.results import RunRecord, config_hash
from lorafa.spec import RunSpec
from lorafa.tasks.data import load_splits, prepare_task
from lorafa import training

EXIT_PREEMPTED = 143  # 128 + SIGTERM: a run stopped by SIGTERM after checkpointing (no record written)
MIN_FREE_BYTES = 64 * 2**20  # records, logs and the smallest checkpoints
EARLIER_WALL = "wall_s_before_resume.json"  # beside the checkpoints: the time of interrupted segments


class FinetuneRecipe:
    def __init__(self, spec: RunSpec, work_dir: Path, callbacks: list | None = None):
        self.spec, self.task, self.callbacks = spec, spec.task_spec, callbacks
        self.work_dir = work_dir  # the Trainer's output_dir: checkpoints, kept until the record is written
        self.tokenizer = self.prepared = self.model = self.trainer = self.monitors = None
        self.train_result, self.metrics, self.resumed_from = None, {}, None
        self.started = time.perf_counter()

    def setup_data(self) -> None:
        """Data before the model: a malformed row (reported with its file and line) fails first."""
        spec = self.spec
        self.tokenizer = load_tokenizer(spec.model)
        splits = load_splits(self.task, spec.data, spec.trainer.seed, train=spec.trains)  # method base: evaluation only
        self.prepared = prepare_task(self.task, self.tokenizer, splits, spec.data, spec.trainer.eval_batch_size)

    def setup_model(self) -> None:
        spec, method = self.spec, self.spec.method
        torch.manual_seed(spec.trainer.seed)
        model = load_model(spec.model, self.task.family, self.tokenizer, self.task.num_labels)
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
        if spec.trainer.selective_recompute:
            changed = enable_selective_recompute(model)
            print(f"[lorafa] selective recomputation: {changed}", flush=True)
        self.model = model

    def train(self, run_name: str) -> None:
        if self.prepared.train is None:  # evaluation only (the base model on MMLU)
            return
        _check_free_space(self.work_dir.parent, checkpoint_bytes(self.model) + MIN_FREE_BYTES,
                          "a checkpoint of this run")
        output_dir = str(self.work_dir)
        self.trainer, self.monitors = training.build_trainer(self.model, self.tokenizer, self.spec.trainer,
                                                             self.prepared, output_dir, run_name, self.callbacks)
        resume = training.last_checkpoint(output_dir)
        if resume is not None:
            print(f"[lorafa] resuming {run_name} from {resume}", flush=True)
        self.resumed_from = training.checkpoint_step(resume)
        try:
            self.train_result = training.train(self.trainer, self.monitors, resume, handle_sigterm=True)
        except training.TrainingInterrupted:
            # The record's wall_s counts every segment of a run, so the time spent before a
            # preemption is kept beside the checkpoint it resumes from.
            if training.world()[0] == 0:
                _write_json(self.work_dir / EARLIER_WALL, {"wall_s": self._earlier_wall_s() + self._elapsed()})
            raise

    def _elapsed(self) -> float:
        return time.perf_counter() - self.started

    def _earlier_wall_s(self) -> float:
        """Seconds this run trained before the segments that were interrupted (0 for a fresh run)."""
        path = self.work_dir / EARLIER_WALL
        return json.loads(path.read_text())["wall_s"] if path.exists() else 0.0

    def evaluate(self) -> None:
        if self.monitors is not None and self.monitors.guard.diverged_at is not None:
            return  # a diverged run has nothing worth evaluating
        if self.trainer is None:
            self.metrics = self.prepared.final_eval(self.model)
            return
        self.metrics = training.evaluate(self.trainer, self.prepared, self.model)
        self.metrics["train_loss"] = self.train_result.training_loss

    def result(self) -> dict[str, Any]:
        """The record's result fields: status, metrics, memory, speed, weights."""
        fields = dict(status="ok", metrics=self.metrics, trainable_params=count_trainable(self.model),
                      weights=weights_identity(self.spec.model, self.model))
        if self.monitors is None:
            return fields
        m = self.monitors
        if m.guard.diverged_at is not None:
            fields.update(status="diverged", error=f"non-finite training loss at step {m.guard.diverged_at}")
        elif not training.finite(self.metrics):
            fields.update(status="diverged", error="non-finite evaluation metric")
        tokens = getattr(self.trainer.state, "num_input_tokens_seen", 0) or 0
        runtime = sum(m.timer.times)
        fields.update(eval_history=m.history.history, step_time_s=m.timer.median(),
                      tokens_per_s=tokens / runtime if runtime and tokens else None,
                      options={"steps_run": len(m.timer.times)}, **self._memory())
        if self.resumed_from is not None:
            fields["options"].update(resumed_from_step=self.resumed_from,
                                     wall_s_before_resume=round(self._earlier_wall_s(), 3))
        return fields

    def _memory(self) -> dict[str, Any]:
        """The CUDA allocator's peak where there is one; on a CPU, the accounting of
        lorafa.memory.cpu on one real training batch (the breakdown is recorded either way)."""
        from lorafa.memory.cpu import cpu_memory_accounting

        breakdown = cpu_memory_accounting(self.model, training.first_train_batch(self.trainer),
                                          self.spec.trainer.precision)
        peak = self.monitors.cuda_peak.peak
        return dict(peak_memory_bytes=peak or sum(breakdown.values()),
                    memory_source="cuda" if peak else "cpu-accounting",
                    activation_bytes=breakdown["activations"], memory_breakdown=breakdown)

    def execute(self, run_name: str) -> dict[str, Any]:
        self.setup_data()
        self.setup_model()
        self.train(run_name)
        self.evaluate()
        return self.result()


def run(spec: RunSpec, force: bool = False, callbacks: list | None = None) -> RunRecord:
    """Train and evaluate one configuration, unless a finished record of it exists."""
    root = Path(spec.results_root)
    _check_writable(root)
    _check_free_space(root, MIN_FREE_BYTES, "a run's record and logs")
    rank, world_size = training.world()
    config = spec.config()
    if world_size > 1:
        config["world_size"] = world_size
    run_id = spec.run_id(config_hash(config))
    work = checkpoint_dir(root, run_id)
    if force and rank == 0 and work.exists():
        shutil.rmtree(work, ignore_errors=True)
    if spec.logger == "wandb":
        _use_wandb(spec)
    recipe = FinetuneRecipe(spec, work, callbacks)
    try:
        record, reused = run_once(root, config, run_id, _describe(spec, world_size), lambda: recipe.execute(run_id),
                                  force=force, write=rank == 0)
    except training.TrainingInterrupted as stop:
        print(f"[lorafa] interrupted: {run_id} at step {stop.step}; checkpoint {stop.checkpoint} "
              f"(rerun to resume)", flush=True)
        raise
    if reused:
        print(f"[lorafa] skip: finished run {record.run_id} (config {record.config_hash})")
    elif rank == 0:
        _clean_checkpoints(work)
        if spec.logger == "wandb":
            _log_summary_to_wandb(record)
        print(f"[lorafa] {record.status}: {record.run_id}\n[lorafa] record: {root / 'runs' / run_id / 'record.json'}")
    return record


def _describe(spec: RunSpec, world_size: int) -> dict[str, Any]:
    """The record's fields known before the run starts (a failed run's record has them too)."""
    adapter = spec.method.adapter
    options = {"dropout": adapter.dropout if adapter else None, "precision": spec.trainer.precision,
               "model_dtype": spec.model.dtype, "attn_implementation": spec.model.attn_implementation,
               "gradient_checkpointing": spec.trainer.gradient_checkpointing}
    if world_size > 1:
        options["world_size"] = world_size
    if spec.trainer.grad_accum > 1:  # batch_size is the micro-batch: the optimizer's batch is this many times it
        options["grad_accum"] = spec.trainer.grad_accum
    if spec.dry_run:
        options["dry_run"] = True
    return dict(experiment=spec.experiment, scale=spec.scale, model=spec.model.name, task=spec.task,
                method=spec.method.name, r=adapter.r if adapter else None, alpha=adapter.alpha if adapter else None,
                lr=spec.trainer.lr, init_a=adapter.init_a if adapter else None, seed=spec.trainer.seed,
                batch_size=spec.trainer.batch_size, seq_len=spec.data.max_length, options=options,
                device=device_name(), weights=weights_identity(spec.model))


# ----------------------------------------------------------------------------- the results folder

def checkpoint_dir(root: str | os.PathLike, run_id: str) -> Path:
    """Where a run's Trainer keeps its checkpoints until its record is written."""
    return Path(root) / "checkpoints" / run_id


def checkpoint_bytes(model) -> int:
    """A checkpoint's size: the trainable parameters, AdamW's two fp32 moments, slack for the rest."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return sum(p.numel() * (p.element_size() + 8) for p in trainable) + 2**20


def _clean_checkpoints(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)  # the record is final: checkpoints are no longer needed
    try:
        work.parent.rmdir()  # only when no other run has checkpoints there
    except OSError:
        pass


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _check_writable(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ValueError(f"results directory {root} is not writable: {err}") from err


def _check_free_space(root: Path, need_bytes: int, what: str) -> None:
    """A full disk is reported before training, not as a lost checkpoint or record afterwards."""
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    if free < need_bytes:
        raise ValueError(f"results directory {root} has {free / 2**20:.1f} MiB free; {what} needs about "
                         f"{need_bytes / 2**20:.1f} MiB: free some space or set results_dir elsewhere")


# ----------------------------------------------------------------------------- Weights & Biases

def _use_wandb(spec: RunSpec) -> None:
    """Trainer's W&B integration; offline unless the user chose otherwise."""
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_PROJECT", spec.wandb_project)
    os.environ.setdefault("WANDB_DIR", spec.results_root)
    spec.trainer.report_to = ["wandb"]


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
