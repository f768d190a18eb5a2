"""The shared trainer: transformers' Trainer / Seq2SeqTrainer, set up the way the paper's runs need.

    trainer, monitors = build_trainer(model, tokenizer, settings, prepared, output_dir, run_name)
    train_result = train(trainer, monitors, resume_from_checkpoint, handle_sigterm=True)
    metrics = evaluate(trainer, prepared, model)

Multi-process: launched under torchrun or `accelerate launch` (DDP, FSDP, DeepSpeed), the
Trainer runs data-parallel by itself; on CPU the gloo backend is chosen. Preemption: with
handle_sigterm=True a SIGTERM (what SLURM sends before it kills a job) makes the Trainer save
a checkpoint at the next optimizer step end and stop, and `train` raises TrainingInterrupted;
rerun with resume_from_checkpoint to go on from there. Checkpoints keep the trainable
parameters only.
"""

from __future__ import annotations

import inspect
import json
import math
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, Trainer, TrainingArguments
from transformers.trainer_pt_utils import BatchRebalanceSampler
from transformers.trainer_utils import get_last_checkpoint

from lorafa.callbacks import CudaPeakMemory, DivergenceGuard, EvalHistory, GracefulStop, StepTimer, eval_metrics
from lorafa.recompute import stock_class
from lorafa.runner import RunInterrupted
from lorafa.validation import is_number, require, require_choice, require_int, require_type

PRECISIONS = ("fp32", "bf16", "fp16")
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "warmup_stable_decay")


@dataclass
class TrainSettings:
    """The `trainer` config group (conf/trainer/default.yaml), as plain values.

    lr: peak learning rate (linear warm-up, then `lr_scheduler`; 0 where nothing trains); epochs, or max_steps > 0,
    which wins; batch_size per device (the global batch multiplies it by processes and
    grad_accum); eval_batch_size; eval_steps: evaluate every N optimizer steps (Figure 4;
    null: at the end only); logging_steps; precision: fp32 | bf16 | fp16 (fp16 needs CUDA);
    warmup_ratio of the steps; weight_decay; max_grad_norm (0: no clipping); seed (data
    order, initialisation, dropout); num_beams and max_new_tokens: generation (WMT16);
    gradient_checkpointing; report_to: Trainer integrations (["wandb"] with logger=wandb);
    save_steps: also checkpoint every N steps (a SIGKILL then loses fewer than N; null: on
    SIGTERM only); group_by_length: batch training examples of similar length together
    (transformers' LengthGroupedSampler) and evaluate in order of length, so that dynamic
    padding pads little (2-3x fewer tokens on GLUE's short sentences; the CPU scales use it);
    batch_rebalance: each optimizer batch a random draw of batch_size x grad_accum examples,
    split into grad_accum micro-batches of similar length (transformers' BatchRebalanceSampler):
    less padding than random batches, and, unlike group_by_length, the gradient of the random
    batch, since the loss is normalised over the whole optimizer batch (causal LMs and sequence
    classification; see batch_normalised_loss); evaluation in order of length, as with
    group_by_length;
    selective_recompute: recompute norms, gated MLP activations and the causal-LM loss in
    backward instead of keeping their intermediates (lorafa.recompute; same gradients).
    """

    lr: float = 5e-4
    epochs: float = 3.0
    max_steps: int = -1
    batch_size: int = 32
    eval_batch_size: int = 64
    grad_accum: int = 1
    eval_steps: int | None = None
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
    save_steps: int | None = None
    group_by_length: bool = False
    batch_rebalance: bool = False
    selective_recompute: bool = False

    def __post_init__(self) -> None:
        def number(name: str, ok, allowed: str) -> None:
            value = getattr(self, name)
            require(is_number(value) and ok(value), f"trainer.{name}", value, allowed)

        number("lr", lambda v: v >= 0, "a finite number > 0 (0 only where nothing trains: method=base)")
        number("epochs", lambda v: v > 0 or self.max_steps > 0, "a number > 0 (or trainer.max_steps > 0)")
        number("warmup_ratio", lambda v: 0 <= v < 1, "a number in [0, 1)")
        number("weight_decay", lambda v: v >= 0, "a finite number >= 0")
        number("max_grad_norm", lambda v: v >= 0, "a finite number >= 0")
        require_int("trainer.max_steps", self.max_steps, minimum=-1)
        require(self.max_steps != 0, "trainer.max_steps", self.max_steps, "-1 or an integer > 0")
        for name in ("batch_size", "eval_batch_size", "grad_accum", "logging_steps", "num_beams", "max_new_tokens"):
            require_int(f"trainer.{name}", getattr(self, name))
        require_int("trainer.seed", self.seed, minimum=0)
        for name in ("eval_steps", "save_steps"):
            require_int(f"trainer.{name}", getattr(self, name), allow_none=True)
        require_choice("trainer.precision", self.precision, PRECISIONS)
        require_choice("trainer.lr_scheduler", self.lr_scheduler, LR_SCHEDULERS)
        require_type("trainer.gradient_checkpointing", self.gradient_checkpointing, (bool,))
        require_type("trainer.group_by_length", self.group_by_length, (bool,))
        require_type("trainer.batch_rebalance", self.batch_rebalance, (bool,))
        if self.group_by_length and self.batch_rebalance:
            raise ValueError("trainer.group_by_length and trainer.batch_rebalance are two ways to order the "
                             "training examples: set one of them")
        require_type("trainer.selective_recompute", self.selective_recompute, (bool,))
        require_type("trainer.report_to", self.report_to, (list, tuple))
        require(all(isinstance(r, str) for r in self.report_to), "trainer.report_to", self.report_to,
                "a list of integration names")
        if self.precision == "fp16" and not torch.cuda.is_available():
            raise ValueError("trainer.precision='fp16' needs a CUDA device; allowed here: fp32, bf16")


class TrainingInterrupted(RunInterrupted):
    """Training stopped on SIGTERM after saving a checkpoint; no result exists yet."""

    def __init__(self, checkpoint: str | None, step: int):
        super().__init__(f"stopped by SIGTERM at step {step}; checkpoint: {checkpoint}")
        self.checkpoint, self.step = checkpoint, step


@dataclass
class Monitors:
    """The callbacks whose findings go into the record."""

    timer: StepTimer = field(default_factory=StepTimer)
    guard: DivergenceGuard = field(default_factory=DivergenceGuard)
    history: EvalHistory = field(default_factory=EvalHistory)
    cuda_peak: CudaPeakMemory = field(default_factory=CudaPeakMemory)
    stop: GracefulStop = field(default_factory=GracefulStop)

    def callbacks(self) -> list:
        return [self.timer, self.guard, self.history, self.cuda_peak, self.stop]


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


LENGTH_AWARE = ("group_by_length", "batch_rebalance")


class _LengthOrderedEvalMixin:
    """With group_by_length (or batch_rebalance), transformers also groups evaluation batches by length, but within
    random chunks of len // (4 * batch size) batches: for a GLUE dev set and a batch of 128 that
    is one batch, i.e. no grouping. build_trainer puts evaluation sets in order of length
    (by_length), so reading them in order pads least."""

    def _get_eval_sampler(self, eval_dataset):
        if self.args.train_sampling_strategy in LENGTH_AWARE and self.args.world_size <= 1 \
                and eval_dataset is not None:
            return torch.utils.data.SequentialSampler(eval_dataset)
        return super()._get_eval_sampler(eval_dataset)

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if isinstance(sampler, BatchRebalanceSampler):
            # transformers builds it with its own fixed seed (42): every run would draw the same
            # batches, and trainer.seed would not vary the data order as it does for the others.
            sampler.seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return sampler


class CheckpointTrainer(_TrainableCheckpointMixin, _LengthOrderedEvalMixin, Trainer):
    pass


class CheckpointSeq2SeqTrainer(_TrainableCheckpointMixin, _LengthOrderedEvalMixin, Seq2SeqTrainer):
    pass


# ----------------------------------------------------------------------------- the Trainer

def loss_takes_num_items(model: nn.Module) -> bool:
    """Whether the model's loss normalises by the Trainer's `num_items_in_batch` (the causal LMs'
    `self.loss_function`). Models that compute a local mean (RoBERTa classification, T5) take
    **kwargs too, so the Trainer believes they do, and then multiplies their loss by the number
    of processes (and skips the division by grad_accum): gradients come out world_size (or
    grad_accum) times too large. train_and_evaluate tells the Trainer the truth."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        source = inspect.getsource(stock_class(base).forward)  # (selective recomputation keeps its loss)
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


def sampling_strategy(settings: TrainSettings) -> str:
    if settings.batch_rebalance:
        return "batch_rebalance"
    return "group_by_length" if settings.group_by_length else "random"


def batch_normalised_loss(outputs, labels, num_items_in_batch=None):
    """A sequence classifier's loss summed over its examples and divided by the examples of the
    whole optimizer batch (the Trainer's num_items_in_batch), so micro-batches of unequal size
    (batch_rebalance) add up to the optimizer batch's mean. The models' own loss is the mean of
    their micro-batch, which would weigh an example by 1/(its micro-batch's size). Regression
    (one output, float labels: STS-B) is MSE, as in the models."""
    logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
    if logits.shape[-1] == 1 and labels.is_floating_point():
        total = F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype), reduction="sum")
    else:
        total = F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1), reduction="sum", ignore_index=-100)
    count = num_items_in_batch if num_items_in_batch is not None else labels.ne(-100).sum()
    if torch.is_tensor(count):
        count = count.to(total.device)
    return total / count


def training_arguments(settings: TrainSettings, output_dir: str, run_name: str, seq2seq: bool,
                       has_eval: bool) -> TrainingArguments:
    kwargs = dict(
        output_dir=output_dir, run_name=run_name, seed=settings.seed,
        learning_rate=settings.lr, num_train_epochs=settings.epochs, max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size, per_device_eval_batch_size=settings.eval_batch_size,
        gradient_accumulation_steps=settings.grad_accum, warmup_steps=settings.warmup_ratio,  # < 1: a ratio
        weight_decay=settings.weight_decay, lr_scheduler_type=settings.lr_scheduler,
        max_grad_norm=settings.max_grad_norm, bf16=settings.precision == "bf16",
        fp16=settings.precision == "fp16", activation_checkpointing=settings.gradient_checkpointing,
        logging_steps=settings.logging_steps, logging_nan_inf_filter=False,
        eval_strategy="steps" if (has_eval and settings.eval_steps) else "no",
        eval_steps=settings.eval_steps if has_eval else None,
        save_strategy="steps" if settings.save_steps else "no", save_steps=settings.save_steps or 500,
        save_total_limit=1 if settings.save_steps else None,
        report_to=settings.report_to or "none",
        include_num_input_tokens_seen=True, dataloader_num_workers=0,
        train_sampling_strategy=sampling_strategy(settings),
        use_cpu=not torch.cuda.is_available(),
    )
    if world()[1] > 1 and not torch.cuda.is_available():
        kwargs["ddp_backend"] = "gloo"  # multi-process on CPU (torchrun / accelerate launch)
    if seq2seq:
        return Seq2SeqTrainingArguments(predict_with_generate=True, generation_num_beams=settings.num_beams,
                                        generation_max_length=settings.max_new_tokens, **kwargs)
    return TrainingArguments(**kwargs)


def build_trainer(model: nn.Module, tokenizer, settings: TrainSettings, prepared, output_dir: str, run_name: str,
                  callbacks: list | None = None) -> tuple[Trainer, Monitors]:
    """The Trainer of a prepared task (lorafa.tasks.data.PreparedTask) and its monitors."""
    monitors = Monitors()
    if settings.group_by_length or settings.batch_rebalance:
        prepared.evals = {suffix: by_length(dataset) for suffix, dataset in prepared.evals.items()}
    first_eval = next(iter(prepared.evals.values()), None)
    args = training_arguments(settings, output_dir, run_name, prepared.generates, has_eval=first_eval is not None)
    trainer_cls = CheckpointSeq2SeqTrainer if prepared.generates else CheckpointTrainer
    trainer = trainer_cls(model=model, args=args, train_dataset=prepared.train, eval_dataset=first_eval,
                          data_collator=prepared.collator, processing_class=tokenizer,
                          compute_metrics=prepared.compute_metrics, callbacks=[*monitors.callbacks(), *(callbacks or [])])
    trainer.model_accepts_loss_kwargs = trainer.model_accepts_loss_kwargs and loss_takes_num_items(model)
    if settings.batch_rebalance and settings.grad_accum > 1 and not trainer.model_accepts_loss_kwargs:
        if prepared.generates:
            raise ValueError("trainer.batch_rebalance needs a loss normalised over the optimizer batch: causal "
                             "LMs and sequence classifiers have one; a sequence-to-sequence model's is the mean of "
                             "each micro-batch (set trainer.grad_accum=1 or batch_rebalance=false)")
        trainer.compute_loss_func = batch_normalised_loss
    _warn_unsharded(trainer)
    return trainer, monitors


def by_length(dataset):
    """The dataset in order of input length: evaluation batches then pad little. Predictions
    and labels come out in the same order, so every metric is unchanged."""
    if dataset is None or "input_ids" not in dataset.column_names:
        return dataset
    lengths = [len(ids) for ids in dataset["input_ids"]]
    return dataset.select(sorted(range(len(lengths)), key=lengths.__getitem__))


def checkpoint_step(checkpoint: str | None) -> int | None:
    """The global step a `checkpoint-N` folder was saved at (None: no checkpoint)."""
    if checkpoint is None:
        return None
    with open(os.path.join(checkpoint, "trainer_state.json"), encoding="utf-8") as f:
        return int(json.load(f)["global_step"])


def train(trainer: Trainer, monitors: Monitors, resume_from_checkpoint: str | None = None,
          handle_sigterm: bool = False):
    """trainer.train(); on SIGTERM (handle_sigterm) a checkpoint, then TrainingInterrupted."""
    if handle_sigterm:
        monitors.stop.install()
    try:
        result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    finally:
        monitors.stop.uninstall()
    if monitors.stop.stopped_at is not None:
        raise TrainingInterrupted(last_checkpoint(trainer.args.output_dir), monitors.stop.stopped_at)
    return result


def evaluate(trainer: Trainer, prepared, model: nn.Module) -> dict[str, float]:
    """Every evaluation set (metrics of a set named "" keep their names, others get
    "_<suffix>": MNLI's matched/mismatched), then the task's final evaluation (MMLU)."""
    metrics: dict[str, float] = {}
    for suffix, dataset in prepared.evals.items():
        metrics.update(eval_metrics(trainer.evaluate(dataset), f"_{suffix}" if suffix else ""))
    if prepared.final_eval is not None:
        metrics.update(prepared.final_eval(model))
    return metrics


def finite(metrics: dict) -> bool:
    return all(math.isfinite(v) for v in metrics.values() if isinstance(v, float))


def first_train_batch(trainer: Trainer) -> dict:
    """One real training batch on the training device (the CPU memory accounting measures it)."""
    batch = next(iter(trainer.get_train_dataloader()))
    return {k: v.to(trainer.args.device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
