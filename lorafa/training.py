"""The shared trainer: transformers' Trainer / Seq2SeqTrainer plus the callbacks the paper needs.

Callbacks record what the run record and the figures need: the evaluation history (Figure
4), the median step time and tokens/s (Figure 5), a stop on a NaN/inf loss (Table 7's
empty cells) and the peak memory (CUDA allocator on GPUs; on CPU an accounting of
parameters, gradients, AdamW states and the activations measured on one real batch).

Multi-process: launched under torchrun or `accelerate launch` (DDP, FSDP, DeepSpeed), the
Trainer runs data-parallel by itself; on CPU the gloo backend is chosen. Preemption:
with handle_sigterm=True a SIGTERM (what SLURM sends before it kills a job) makes the
Trainer save a checkpoint at the next optimizer step end and stop, and train_and_evaluate
raises TrainingInterrupted; rerun with resume_from_checkpoint to go on from there.
"""

from __future__ import annotations

import inspect
import math
import os
import signal
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from lorafa.memory.activations import activation_report

PRECISIONS = ("fp32", "bf16", "fp16")
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "warmup_stable_decay")
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
    save_steps: int | None = None  # also checkpoint every N steps (a SIGKILL then loses < N); None: on SIGTERM only

    # field -> accepted Python types (bool is excluded from the numeric ones: `lr: true` is a typo)
    _TYPES = {"lr": (int, float), "epochs": (int, float), "max_steps": (int,), "batch_size": (int,),
              "eval_batch_size": (int,), "grad_accum": (int,), "eval_steps": (int, type(None)),
              "logging_steps": (int,), "precision": (str,), "warmup_ratio": (int, float),
              "weight_decay": (int, float), "lr_scheduler": (str,), "max_grad_norm": (int, float),
              "seed": (int,), "num_beams": (int,), "max_new_tokens": (int,), "gradient_checkpointing": (bool,),
              "report_to": (list, tuple), "save_steps": (int, type(None))}
    _TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
                   list: "a list", tuple: "a list", type(None): "null"}

    def validate(self) -> None:
        for name, types in self._TYPES.items():
            value = getattr(self, name)
            if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
                names = [self._TYPE_NAMES[t] for t in types if not (t is int and float in types)]
                allowed = " or ".join(dict.fromkeys(names))
                raise ValueError(f"trainer.{name}={value!r} has type {type(value).__name__}; allowed: {allowed}")

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
        need(self.max_new_tokens >= 1, "max_new_tokens", "an integer >= 1")
        need(self.seed >= 0, "seed", "an integer >= 0")
        need(self.weight_decay >= 0 and math.isfinite(self.weight_decay), "weight_decay", "a finite number >= 0")
        need(self.max_grad_norm >= 0 and math.isfinite(self.max_grad_norm), "max_grad_norm", "a finite number >= 0")
        need(self.lr_scheduler in LR_SCHEDULERS, "lr_scheduler", ", ".join(LR_SCHEDULERS))
        need(self.save_steps is None or self.save_steps >= 1, "save_steps", "null or an integer >= 1")
        need(all(isinstance(r, str) for r in self.report_to), "report_to", "a list of integration names")
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
    resumed_from_step: int | None = None  # the checkpoint's step when training resumed from one
    steps_run: int | None = None  # optimizer steps this process trained (after a resume: the remainder)


class TrainingInterrupted(RuntimeError):
    """Training stopped on SIGTERM after saving a checkpoint; no result exists yet."""

    def __init__(self, checkpoint: str | None, step: int):
        super().__init__(f"stopped by SIGTERM at step {step}; checkpoint: {checkpoint}")
        self.checkpoint, self.step = checkpoint, step


def world() -> tuple[int, int]:
    """(rank, world size) of this process as torchrun / accelerate launch / SLURM set them."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def last_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest complete `checkpoint-N` folder under output_dir (one holding trainer_state.json), or None."""
    if not os.path.isdir(output_dir):
        return None
    found = get_last_checkpoint(str(output_dir))
    if found is not None and not os.path.isfile(os.path.join(found, "trainer_state.json")):
        return None  # killed while saving: not resumable
    return found


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


class GracefulStop(TrainerCallback):
    """SIGTERM -> save a checkpoint at the next optimizer step end, then stop training.

    The handler only sets a flag (signal handlers run between Python bytecodes, so the
    step in flight finishes). Under several processes the flag is max-reduced across ranks
    at each step end, so every rank saves and stops at the same step, whichever got the
    signal. The previous handler is restored by uninstall().
    """

    def __init__(self):
        self.requested = False
        self.stopped_at: int | None = None
        self._previous = None

    def install(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _handle(self, signum, frame):
        self.requested = True

    def _any_rank_requested(self) -> bool:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0],
                            device="cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def on_step_end(self, args, state, control, **kw):
        if self.stopped_at is None and self._any_rank_requested():
            self.requested = True
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True


# ----------------------------------------------------------------------------- checkpoints

class _TrainableCheckpointMixin:
    """Checkpoints keep the trainable parameters only (B, a classifier head), not the frozen
    base: a LLaMA-7B LoRA-FA checkpoint is megabytes, not 13 GB. Resuming loads them with
    strict=False over the freshly built (identical) base. Under FSDP / DeepSpeed the Trainer's
    own (sharded) saving is kept."""

    def _save(self, output_dir=None, state_dict=None):
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        params = dict(model.named_parameters())
        trainable = {n: p for n, p in params.items() if p.requires_grad}
        if self.is_fsdp_enabled or self.is_deepspeed_enabled or len(trainable) == len(params):
            return super()._save(output_dir, state_dict=state_dict)
        if not self.args.should_save:
            return None
        import safetensors.torch
        from transformers.utils import SAFE_WEIGHTS_NAME

        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        tensors = {n: p.detach().to("cpu").contiguous().clone() for n, p in trainable.items()}
        safetensors.torch.save_file(tensors, os.path.join(output_dir, SAFE_WEIGHTS_NAME), metadata={"format": "pt"})
        return None

    def _issue_warnings_after_load(self, load_result):
        if load_result.unexpected_keys:  # missing keys are the frozen base, expected
            raise ValueError(f"checkpoint holds parameters this model lacks: {load_result.unexpected_keys[:5]}")


class CheckpointTrainer(_TrainableCheckpointMixin, Trainer):
    pass


class CheckpointSeq2SeqTrainer(_TrainableCheckpointMixin, Seq2SeqTrainer):
    pass


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

def loss_takes_num_items(model: nn.Module) -> bool:
    """Whether the model's loss normalises by the Trainer's `num_items_in_batch` (the causal LMs'
    `self.loss_function`). Models that compute a local mean (RoBERTa classification, T5) take
    **kwargs too, so the Trainer believes they do, and then multiplies their loss by the number
    of processes (and skips the division by grad_accum): gradients come out world_size (or
    grad_accum) times too large. train_and_evaluate tells the Trainer the truth."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        source = inspect.getsource(type(base).forward)
    except (OSError, TypeError):
        return True
    return "loss_function" in source


def _warn_unsharded(trainer) -> None:
    """accelerate turns FSDP / DeepSpeed on for accelerator devices only: on CPU a launch with
    conf/accelerate/fsdp.yaml silently runs plain DDP. Say so."""
    import warnings

    for env, enabled, name in (("ACCELERATE_USE_FSDP", trainer.is_fsdp_enabled, "FSDP"),
                               ("ACCELERATE_USE_DEEPSPEED", trainer.is_deepspeed_enabled, "DeepSpeed")):
        if os.environ.get(env, "false").lower() == "true" and not enabled:
            warnings.warn(f"{name} was requested ({env}=true) but accelerate did not enable it on "
                          f"{trainer.args.device.type}; training runs unsharded (DDP)", stacklevel=3)


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
        save_strategy="steps" if settings.save_steps else "no", save_steps=settings.save_steps or 500,
        save_total_limit=1 if settings.save_steps else None,
        report_to=settings.report_to or "none",
        include_num_input_tokens_seen=True, dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
    )
    if world()[1] > 1 and not torch.cuda.is_available():
        kwargs["ddp_backend"] = "gloo"  # multi-process on CPU (torchrun / accelerate launch)
    if seq2seq:
        return Seq2SeqTrainingArguments(predict_with_generate=True, generation_num_beams=settings.num_beams,
                                        generation_max_length=settings.max_new_tokens, **kwargs)
    return TrainingArguments(**kwargs)


def train_and_evaluate(model: nn.Module, tokenizer, settings: TrainSettings, train_dataset, eval_datasets: dict,
                       collator, compute_metrics: Callable | None, output_dir: str, run_name: str,
                       seq2seq: bool = False, final_eval: Callable[[nn.Module], dict] | None = None,
                       callbacks: list | None = None, resume_from_checkpoint: str | None = None,
                       handle_sigterm: bool = False) -> TrainOutcome:
    """Train with transformers' Trainer, evaluate each eval set, and report what the record needs.

    eval_datasets: {suffix: dataset}; the metrics of a set named "" keep their names, others
    get "_<suffix>" (MNLI's matched/mismatched). final_eval(model) adds metrics computed
    outside the Trainer (MMLU after instruction tuning).

    resume_from_checkpoint: a `checkpoint-N` folder under output_dir to go on from.
    handle_sigterm: on SIGTERM save a checkpoint under output_dir, stop, and raise
    TrainingInterrupted (nothing is evaluated).
    """
    settings.validate()
    timer, guard, history, cuda_peak = StepTimer(), DivergenceGuard(), EvalHistory(), CudaPeakMemory()
    stop = GracefulStop()
    first_eval = next(iter(eval_datasets.values()), None)
    args = training_arguments(settings, output_dir, run_name, seq2seq, has_eval=first_eval is not None)
    trainer_cls = CheckpointSeq2SeqTrainer if seq2seq else CheckpointTrainer
    trainer = trainer_cls(model=model, args=args, train_dataset=train_dataset, eval_dataset=first_eval,
                          data_collator=collator, processing_class=tokenizer, compute_metrics=compute_metrics,
                          callbacks=[timer, guard, history, cuda_peak, stop, *(callbacks or [])])
    trainer.model_accepts_loss_kwargs = trainer.model_accepts_loss_kwargs and loss_takes_num_items(model)
    _warn_unsharded(trainer)
    resumed_from = None
    if resume_from_checkpoint is not None:
        import json

        with open(os.path.join(resume_from_checkpoint, "trainer_state.json"), encoding="utf-8") as f:
            resumed_from = int(json.load(f)["global_step"])
    status, error, metrics = "ok", None, {}
    try:
        if handle_sigterm:
            stop.install()
        try:
            train_result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
        finally:
            stop.uninstall()
        if stop.stopped_at is not None:
            raise TrainingInterrupted(last_checkpoint(output_dir), stop.stopped_at)
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
                        memory_breakdown=breakdown, error=error, resumed_from_step=resumed_from,
                        steps_run=len(timer.times))
