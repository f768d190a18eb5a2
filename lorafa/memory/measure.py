"""Measuring a memory point: one function for the simulator and the CUDA meter, one result type.

    res = measure_peak_memory("llama-7b", "lora_fa", batch_size=16, seq_len=1024, r=64)
    res.peak_bytes, res.breakdown
    record, reused = run_point(MemoryPoint(...), results_dir() / "paper")   # kept as a run record
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lorafa.memory.point import MemoryPoint
from lorafa.memory.tracker import CATEGORIES
from lorafa.provenance import device_name
from lorafa.results import config_hash
from lorafa.runner import run_once


@dataclass
class MemoryResult:
    """Peak memory of one training step and what it was made of, in bytes.

    breakdown: weights, gradients, optimizer_states, activations, other, at the peak.
    persistent: weights, gradients and optimizer states after the step. status: "oom" when
    peak_bytes exceeds the capacity it was checked against.
    """

    model: str
    method: str
    batch_size: int
    seq_len: int
    peak_bytes: int
    breakdown: dict
    activation_bytes: int
    options: dict
    r: int | None = None
    alpha: float | None = None
    backend: str = "simulate"
    status: str = "ok"
    persistent: dict = field(default_factory=dict)
    step_time_s: float | None = None  # the measured step's wall time (backend "cuda" only)
    memory_source: str = "simulated"  # simulated | cuda | cpu-accounting (a dry run of backend cuda on a CPU)

    def to_dict(self) -> dict:
        return asdict(self)

    def record_fields(self) -> dict:
        """The run record's result fields (lorafa.results.RunRecord) of this measurement."""
        return dict(status=self.status, peak_memory_bytes=self.peak_bytes,
                    memory_source=self.memory_source, activation_bytes=self.activation_bytes,
                    memory_breakdown={k: int(self.breakdown.get(k, 0)) for k in CATEGORIES},
                    options=dict(self.options), step_time_s=self.step_time_s,
                    tokens_per_s=self.batch_size * self.seq_len / self.step_time_s if self.step_time_s else None)


def measure_peak_memory(model, method: str, batch_size: int, seq_len: int, backend: str = "simulate",
                        **options) -> MemoryResult:
    """Peak memory of one AdamW training step of `model` (a conf/model name or a ModelSpec) in
    the paper's mixed precision; `options` are MemoryPoint's fields (r, dropout, ...)."""
    return measure(MemoryPoint(model=model, method=method, batch_size=batch_size, seq_len=seq_len, backend=backend,
                               **options))


def measure(point: MemoryPoint, block: int = 512, device: str = "cuda") -> MemoryResult:
    """Peak memory of the training step `point` describes: simulated on fake tensors anywhere,
    or run for real on `device` (backend "cuda"). Weights and activations are bf16; trainable
    parameters get an fp32 master copy and fp32 AdamW moments (Table 1's 12 bytes)."""
    from lorafa.memory.workload import adapted_layer_count, batch_maker, prepare_model

    make_batch = batch_maker(point)
    if point.backend == "simulate":
        from lorafa.memory.simulate import simulate_step

        net = prepare_model(point, device="meta")
        # dropout as on the GPU being simulated: a bool mask (see simulate's module docstring)
        step = simulate_step(net, make_batch, block=block, zero_shards=point.zero_shards, dropout_as_cuda=True)
    else:
        import torch

        from lorafa.memory.cuda import cuda_step

        dtype = "bfloat16"
        if not torch.cuda.is_available():
            if not point.dry_run:
                raise RuntimeError("backend='cuda' needs a CUDA GPU; use backend='simulate' on this machine")
            from lorafa.dryrun import cpu_dtype

            device = "cpu"  # the rehearsal of the GPU step: everything but the allocator's counters
            dtype = cpu_dtype(dtype, [])  # fp32 where the CPU would emulate bf16 (rehearsal_point says so)
        net = prepare_model(point, dtype=dtype, device=device)
        step = cuda_step(net, make_batch, device=device)
    adapters = point.method != "full_ft"
    options = {"attn_implementation": point.attn_implementation, "gradient_checkpointing": point.gradient_checkpointing,
               "selective_recompute": point.selective_recompute, "quantization": point.quantization, "zero_shards": point.zero_shards,
               "num_adapted_layers": adapted_layer_count(net), "dropout": point.dropout,
               "adapter_dtype": point.adapter_dtype if adapters else None,
               "target_modules": point.config()["target_modules"], "target_len": point.target_len,
               "backend": point.backend, **({"dry_run": True} if point.dry_run else {})}
    capacity = point.capacity_bytes
    source = "simulated" if point.backend == "simulate" else "cuda" if device != "cpu" else "cpu-accounting"
    return MemoryResult(model=point.model.name, method=point.method, batch_size=point.batch_size,
                        seq_len=point.seq_len, peak_bytes=step.peak_bytes, breakdown=step.peak_breakdown,
                        activation_bytes=step.activation_bytes, options=options,
                        r=point.r if adapters else None, alpha=point.lora_alpha if adapters else None,
                        backend=point.backend, status="oom" if capacity is not None and step.peak_bytes > capacity
                        else "ok", persistent=step.persistent, step_time_s=getattr(step, "step_time_s", None),
                        memory_source=source)


def run_point(point: MemoryPoint, root: str | os.PathLike, force: bool = False):
    """Measure `point` and keep it as a run record under `root`, or reuse a finished one (a
    simulated "oom" is a result too). Returns (record, reused); lorafa.runner does the rest."""
    adapters = point.method != "full_ft"
    describe = dict(experiment=point.experiment, scale=point.scale, model=point.model.name, task=None,
                    method=point.method, r=point.r if adapters else None,
                    alpha=point.lora_alpha if adapters else None, batch_size=point.batch_size,
                    seq_len=point.seq_len, memory_source="simulated" if point.backend == "simulate" else "cuda",
                    device=_device(point), weights={"source": "architecture only", "arch": dict(point.model.arch)},
                    options={"attn_implementation": point.attn_implementation, "backend": point.backend,
                             "dropout": point.dropout, "num_adapted_layers": point.num_adapted_layers,
                             "gradient_checkpointing": point.gradient_checkpointing,
                             "selective_recompute": point.selective_recompute,
                             **({"dry_run": True} if point.dry_run else {})})
    config = point.config()
    return run_once(Path(root), config, point.run_id(config_hash(config)), describe,
                    lambda: measure(point).record_fields(), reuse=("ok", "oom"), force=force)


def _device(point: MemoryPoint) -> str:
    if point.backend == "simulate":
        return device_name(simulated=True)
    import torch

    return device_name() if torch.cuda.is_available() or point.dry_run else "cuda (unavailable)"
