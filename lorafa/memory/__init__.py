"""Memory accounting: measured saved activations, Table 1's formulas, simulation, CUDA peaks.

    from lorafa.memory import measure_peak_memory
    res = measure_peak_memory("llama-7b", "lora_fa", batch_size=16, seq_len=1024, r=64)

Submodules: activations (activation_report), analytic (Table 1), point (MemoryPoint: one
validated training step to measure), workload (its model, adapters and batch), tracker
(live-storage counting), optim (mixed-precision AdamW), nf4 (QLoRA storage), simulate (fake
tensors), cuda (GPU meter), cpu (peak memory of a CPU run by accounting), measure (measure,
measure_peak_memory, run_point: a point -> one run record through lorafa.runner), report (GiB
and the options label of a point's one-line summary; the tables are in analysis/). Model
architectures come from lorafa.models. Attributes load lazily so `lorafa.memory.analytic`
needs no torch.
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    "measure_peak_memory": "lorafa.memory.measure",
    "MemoryResult": "lorafa.memory.measure",
    "linear_layer_memory": "lorafa.memory.analytic",
    "gpt_model_memory": "lorafa.memory.analytic",
    "load_model_spec": "lorafa.models",
    "build_model": "lorafa.models",
    "ModelSpec": "lorafa.models",
    "simulate_step": "lorafa.memory.simulate",
    "cuda_step": "lorafa.memory.cuda",
    "LiveMemory": "lorafa.memory.tracker",
    "MemoryPoint": "lorafa.memory.point",
    "run_point": "lorafa.memory.measure",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lorafa.memory' has no attribute {name!r}")
