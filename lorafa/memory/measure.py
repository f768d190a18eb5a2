"""measure_peak_memory: one function for the simulator and the CUDA meter, one result type.

    res = measure_peak_memory("llama-7b", "lora_fa", batch_size=16, seq_len=1024, r=64)
    res.peak_bytes, res.breakdown, res.to_record(run_id="...")
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from lorafa.memory.specs import load_model_spec
from lorafa.memory.tracker import CATEGORIES

BACKENDS = ("simulate", "cuda")
A100_80GB = 80 * 10**9  # the paper's GPU; GB as the paper prints them


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

    def to_dict(self) -> dict:
        return asdict(self)

    def to_record(self, run_id: str, experiment: str = "memory", scale: str = "paper", **extra):
        """A lorafa.results.RunRecord of this measurement."""
        from lorafa.results import RunRecord

        return RunRecord(run_id=run_id, experiment=experiment, scale=scale, model=self.model, task=None,
                         method=self.method, r=self.r, alpha=self.alpha, batch_size=self.batch_size,
                         seq_len=self.seq_len, status=self.status, peak_memory_bytes=self.peak_bytes,
                         memory_source="simulated" if self.backend == "simulate" else "cuda",
                         activation_bytes=self.activation_bytes,
                         memory_breakdown={k: int(self.breakdown.get(k, 0)) for k in CATEGORIES},
                         options=dict(self.options), step_time_s=self.step_time_s,
                         tokens_per_s=(self.batch_size * self.seq_len / self.step_time_s
                                       if self.step_time_s else None), **extra)


def measure_peak_memory(model, method: str, batch_size: int, seq_len: int, backend: str = "simulate", *,
                        r: int = 8, alpha: float = 16, dropout: float = 0.0, adapter_dtype: str = "bfloat16",
                        target_modules="all-linear", num_adapted_layers: int | None = None,
                        attn_implementation: str = "sdpa", gradient_checkpointing: bool = False,
                        quantization: str | None = None, zero_shards: int = 1, target_len: int | None = None,
                        capacity_bytes: int | None = A100_80GB, block: int = 512, device: str = "cuda") -> MemoryResult:
    """Peak memory of one AdamW training step of `model` in the paper's mixed precision.

    model: a conf/model name ("llama-7b"), a YAML path or a ModelSpec. method: full_ft | lora |
    lora_fa, or PEFT's LoRA as reference: peft_lora | peft_lora_frozen_a (A frozen). Weights and activations are bf16; trainable parameters get an fp32 master copy
    and fp32 AdamW moments (Table 1's 12 bytes). backend "simulate" runs on fake tensors
    anywhere; "cuda" runs the same step for real on `device`. capacity_bytes: status "oom"
    above it (None: never). Options: see workload.prepare_model and simulate.simulate_step.
    """
    from lorafa.memory.workload import METHODS, batch_maker, prepare_model

    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is invalid; allowed: {', '.join(BACKENDS)}")
    if isinstance(zero_shards, bool) or not isinstance(zero_shards, int) or zero_shards < 1:
        raise ValueError(f"zero_shards={zero_shards!r} is invalid; allowed: an integer >= 1")
    if method not in METHODS:
        raise ValueError(f"method={method!r} is invalid; allowed: {', '.join(METHODS)}")
    if zero_shards > 1 and method == "full_ft":
        raise ValueError("zero_shards > 1 is modelled for lora and lora_fa only (the paper's §3.2 shards "
                         "frozen base weights and keeps adapter states whole)")
    for name, value in (("batch_size", batch_size), ("seq_len", seq_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} is invalid; allowed: an integer >= 1")
    spec = load_model_spec(model)
    kwargs = dict(r=r, alpha=alpha, dropout=dropout, adapter_dtype=adapter_dtype, target_modules=target_modules,
                  num_adapted_layers=num_adapted_layers, attn_implementation=attn_implementation,
                  gradient_checkpointing=gradient_checkpointing, quantization=quantization)
    make_batch = batch_maker(spec, batch_size, seq_len, target_len)
    if backend == "simulate":
        from lorafa.memory.simulate import simulate_step

        net = prepare_model(spec, method, device="meta", **kwargs)
        # dropout as on the GPU being simulated: a bool mask (see simulate's module docstring)
        step = simulate_step(net, make_batch, block=block, zero_shards=zero_shards, dropout_as_cuda=True)
    else:
        import torch

        from lorafa.memory.cuda import cuda_step

        if not torch.cuda.is_available():
            raise RuntimeError("backend='cuda' needs a CUDA GPU; use backend='simulate' on this machine")
        if quantization or zero_shards > 1:
            raise ValueError("backend='cuda' measures one unquantised GPU; quantization and zero_shards "
                             "are simulated only (backend='simulate')")
        net = prepare_model(spec, method, device=device, **kwargs)
        step = cuda_step(net, make_batch, device=device)
    from lorafa.memory.workload import adapted_layer_count

    options = {"attn_implementation": attn_implementation, "gradient_checkpointing": gradient_checkpointing,
               "quantization": quantization, "zero_shards": zero_shards,
               "num_adapted_layers": adapted_layer_count(net), "dropout": dropout,
               "adapter_dtype": adapter_dtype if method != "full_ft" else None,
               "target_modules": target_modules if isinstance(target_modules, str) else list(target_modules),
               "target_len": target_len, "backend": backend}
    status = "oom" if capacity_bytes is not None and step.peak_bytes > capacity_bytes else "ok"
    return MemoryResult(model=spec.name, method=method, batch_size=batch_size, seq_len=seq_len,
                        peak_bytes=step.peak_bytes, breakdown=step.peak_breakdown,
                        activation_bytes=step.activation_bytes, options=options,
                        r=None if method == "full_ft" else r, alpha=None if method == "full_ft" else alpha,
                        backend=backend, status=status, persistent=step.persistent,
                        step_time_s=getattr(step, "step_time_s", None))
