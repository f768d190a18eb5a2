"""The shared trainer: transformers' Trainer / Seq2SeqTrainer plus the callbacks the paper needs.

Callbacks record what the run record and the figures need: the evaluation history (Figure
4), the median step time and tokens/s (Figure 5), a stop on a NaN/inf loss (Table 7's
empty cells) and the peak memory (CUDA allocator on GPUs; on CPU an accounting of
parameters, gradients, AdamW states and the activations measured on one real batch).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, Trainer, TrainerCallback, TrainingArguments

from lorafa.memory.activations import activation_report

PRECISIONS = ("fp32", "bf16", "fp16")
_NOT_METRICS = ("epoch", "num_input_tokens_seen", "step", "runtime", "samples_per_second", "steps_per_second")


def _eval_metrics(raw: dict, tail: str = "") -> dict:
    """Trainer's eval output as record metrics: "eval_" dropped, the loss kept as eval_loss."""
    out = {}
    for key, value in raw.items():
        name = key.removeprefix("eval_")
        if not isinstance(value, (int, float)) or name in _NOT_METRICS:
            continue
        out[("eval_loss" if name == "loss" else name) + tail] = value
    return out


@dataclass
class TrainSettings:
    """Hyper-parameters of one run (the `trainer` config group, as plain values)."""

    lr: float = 5e-4
    epochs: float = 3.0
    max_steps: int = -1
    batch_size: int = 32
    eval_batch_size: int = 64
    grad_accum: int = 1
    eval_steps: int | None = None  # evaluate every N optimizer steps; None: at the end only
    logging_steps: int = 10
    precision: str = "fp32"
    warmup_ratio: float = 0.06
    weight_decay: float = 0.0
    lr_scheduler: str = "linear"
    max_grad_norm: float = 1.0
    seed: int = 0
    num_beams: int = 1
    max_new_tokens: int = 128
    gradient_checkpointing: bool = False
    report_to: list[str] = field(default_factory=list)

    def validate(self) -> None:
        def need(ok: bool, name: str, allowed: str):
            if not ok:
                raise ValueError(f"trainer.{name}={getattr(self, name)!r} is invalid; allowed: {allowed}")
        need(self.lr > 0 and math.isfinite(self.lr), "lr", "a finite number > 0")
        need(self.epochs > 0 or self.max_steps > 0, "epochs", "> 0 (or trainer.max_steps > 0)")
        need(self.max_steps == -1 or self.max_steps > 0, "max_steps", "-1 or an integer > 0")
        need(self.batch_size >= 1, "batch_size", "an integer >= 1")
        need(self.eval_batch_size >= 1, "eval_batch_size", "an integer >= 1")
        need(self.grad_accum >= 1, "grad_accum", "an integer >= 1")
        need(self.eval_steps is None or self.eval_steps >= 1, "eval_steps", "null or an integer >= 1")
        need(self.logging_steps >= 1, "logging_steps", "an integer >= 1")
        need(self.precision in PRECISIONS, "precision", ", ".join(PRECISIONS))
        need(0 <= self.warmup_ratio < 1, "warmup_ratio", "a number in [0, 1)")
        need(self.num_beams >= 1, "num_beams", "an integer >= 1")
        if self.precision == "fp16" and not torch.cuda.is_available():
            raise ValueError("trainer.precision='fp16' needs a CUDA device; allowed here: fp32, bf16")


@dataclass
class TrainOutcome:
    status: str  # ok | diverged | oom | failed
    metrics: dict[str, float]
    eval_history: list[dict[str, Any]]
    step_time_s: float | None
    tokens_per_s: float | None
    peak_memory_bytes: int | None
    memory_source: str | None
    activation_bytes: int | None
    memory_breakdown: dict[str, int] | None
    error: str | None = None


# ----------------------------------------------------------------------------- callbacks

class StepTimer(TrainerCallback):
    """Wall time of each optimizer step (synchronised on CUDA), the first one excluded as warm-up."""

    def __init__(self):
        self.times: list[float] = []
        self._t0 = 0.0

    def on_step_begin(self, args, state, control, **kw):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._t0)

    def median(self) -> float | None:
        times = self.times[1:] or self.times
        return statistics.median(times) if times else None


class DivergenceGuard(TrainerCallback):
    """Stops training at the first NaN/inf training loss (logging_nan_inf_filter is off)."""

    def __init__(self):
        self.diverged_at: int | None = None

    def on_log(self, args, state, control, logs=None, **kw):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            self.diverged_at = state.global_step
            control.should_training_stop = True


class EvalHistory(TrainerCallback):
    def __init__(self):
        self.history: list[dict[str, Any]] = []

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        self.history.append({"step": state.global_step, "epoch": state.epoch, **_eval_metrics(metrics or {})})


class CudaPeakMemory(TrainerCallback):
    def __init__(self):
        self.peak: int | None = None

    def on_train_begin(self, args, state, control, **kw):
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_train_end(self, args, state, control, **kw):
        if torch.cuda.is_available():
            self.peak = torch.cuda.max_memory_allocated()


# ----------------------------------------------------------------------------- memory on CPU

def cpu_memory_accounting(model: nn.Module, batch: dict, precision: str) -> dict[str, int]:
    """Peak-memory estimate without a GPU: what training must hold at once.

    weights: every parameter as stored; gradients: trainable parameters; optimizer states:
    AdamW's two fp32 moments per trainable parameter; activations: measured by
    activation_report on one real training batch.
    """
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    was_training = model.training
    model.train()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    device_type = next(iter(batch.values())).device.type
    with torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None):
        activations = activation_report(model, **batch).total_bytes
    model.train(was_training)
    return {
        "weights": sum(p.numel() * p.element_size() for p in params),
        "gradients": sum(p.numel() * p.element_size() for p in trainable),
        "optimizer_states": sum(2 * p.numel() * 4 for p in trainable),
        "activations": activations,
        "other": 0,
    }


# ----------------------------------------------------------------------------- the run

def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def training_arguments(settings: TrainSettings, output_dir: str, run_name: str, seq2seq: bool,
                       has_eval: bool) -> TrainingArguments:
    kwargs = dict(
        output_dir=output_dir, run_name=run_name, seed=settings.seed,
        learning_rate=settings.lr, num_train_epochs=settings.epochs, max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size, per_device_eval_batch_size=settings.eval_batch_size,
        gradient_accumulation_steps=settings.grad_accum, warmup_steps=settings.warmup_ratio,  # < 1: a ratio
        weight_decay=settings.weight_decay, lr_scheduler_type=settings.lr_scheduler,
        max_grad_norm=settings.max_grad_norm, bf16=settings.precision == "bf16",
        fp16=settings.precision == "fp16", gradient_checkpointing=settings.gradient_checkpointing,
        logging_steps=settings.logging_steps, logging_nan_inf_filter=False,
        eval_strategy="steps" if (has_eval and settings.eval_steps) else "no",
        eval_steps=settings.eval_steps if has_eval else None,
        save_strategy="no", report_to=settings.report_to or "none",
        include_num_input_tokens_seen=True, dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
    )
    if seq2seq:
        return Seq2SeqTrainingArguments(predict_with_generate=True, generation_num_beams=settings.num_beams,
                                        generation_max_length=settings.max_new_tokens, **kwargs)
    return TrainingArguments(**kwargs)


def train_and_evaluate(model: nn.Module, tokenizer, settings: TrainSettings, train_dataset, eval_datasets: dict,
                       collator, compute_metrics: Callable | None, output_dir: str, run_name: str,
                       seq2seq: bool = False, final_eval: Callable[[nn.Module], dict] | None = None,
                       callbacks: list | None = None) -> TrainOutcome:
    """Train with transformers' Trainer, evaluate each eval set, and report what the record needs.

    eval_datasets: {suffix: dataset}; the metrics of a set named "" keep their names, others
    get "_<suffix>" (MNLI's matched/mismatched). final_eval(model) adds metrics computed
    outside the Trainer (MMLU after instruction tuning).
    """
    settings.validate()
    timer, guard, history, cuda_peak = StepTimer(), DivergenceGuard(), EvalHistory(), CudaPeakMemory()
    first_eval = next(iter(eval_datasets.values()), None)
    args = training_arguments(settings, output_dir, run_name, seq2seq, has_eval=first_eval is not None)
    trainer_cls = Seq2SeqTrainer if seq2seq else Trainer
    trainer = trainer_cls(model=model, args=args, train_dataset=train_dataset, eval_dataset=first_eval,
                          data_collator=collator, processing_class=tokenizer, compute_metrics=compute_metrics,
                          callbacks=[timer, guard, history, cuda_peak, *(callbacks or [])])
    status, error, metrics = "ok", None, {}
    try:
        train_result = trainer.train()
        if guard.diverged_at is not None:
            status, error = "diverged", f"non-finite training loss at step {guard.diverged_at}"
        else:
            for suffix, dataset in eval_datasets.items():
                metrics.update(_eval_metrics(trainer.evaluate(dataset), f"_{suffix}" if suffix else ""))
            if final_eval is not None:
                metrics.update(final_eval(model))
            metrics["train_loss"] = train_result.training_loss
            if not all(math.isfinite(v) for v in metrics.values() if isinstance(v, float)):
                status, error = "diverged", "non-finite evaluation metric"
    except Exception as err:  # noqa: BLE001 - a failed run still leaves a record behind
        if not _is_oom(err):
            raise
        status, error = "oom", str(err).splitlines()[0]
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    tokens = getattr(trainer.state, "num_input_tokens_seen", 0) or 0
    runtime = sum(timer.times)
    peak, source, breakdown, activations = cuda_peak.peak, "cuda" if cuda_peak.peak else None, None, None
    if status != "oom":
        batch = next(iter(trainer.get_train_dataloader()))
        batch = {k: v.to(trainer.args.device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        breakdown = cpu_memory_accounting(model, batch, settings.precision)
        activations = breakdown["activations"]
        if peak is None:
            peak, source = sum(breakdown.values()), "cpu-accounting"
    return TrainOutcome(status=status, metrics=metrics, eval_history=history.history,
                        step_time_s=timer.median(), tokens_per_s=tokens / runtime if runtime and tokens else None,
                        peak_memory_bytes=peak, memory_source=source, activation_bytes=activations,
                        memory_breakdown=breakdown, error=error)
