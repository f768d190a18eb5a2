"""The Trainer callbacks a run record needs, one concern each.

StepTimer (median step time, tokens/s: Figure 5), DivergenceGuard (a NaN/inf loss stops the
run: Table 7's empty cells), EvalHistory (periodic evaluation: Figure 4), CudaPeakMemory (the
allocator's peak on GPUs) and GracefulStop (SIGTERM, SLURM's preemption notice: checkpoint at
the next step end, then stop).
"""

from __future__ import annotations

import math
import signal
import statistics
import threading
import time
from typing import Any

import torch
from transformers import TrainerCallback

_NOT_METRICS = ("epoch", "num_input_tokens_seen", "step", "runtime", "samples_per_second", "steps_per_second")


def eval_metrics(raw: dict, tail: str = "") -> dict:
    """Trainer's eval output as record metrics: "eval_" dropped, the loss kept as eval_loss."""
    out = {}
    for key, value in raw.items():
        name = key.removeprefix("eval_")
        if not isinstance(value, (int, float)) or name in _NOT_METRICS:
            continue
        out[("eval_loss" if name == "loss" else name) + tail] = value
    return out


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
    """Every evaluation's metrics with its step and epoch."""

    def __init__(self):
        self.history: list[dict[str, Any]] = []

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        self.history.append({"step": state.global_step, "epoch": state.epoch, **eval_metrics(metrics or {})})


class CudaPeakMemory(TrainerCallback):
    """torch.cuda.max_memory_allocated over the whole of training (None on CPU)."""

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
