"""Peak memory of a training run on a CPU, where no allocator reports one: an accounting.

weights: every parameter as stored; gradients: the trainable parameters; optimizer states:
AdamW's two fp32 moments per trainable parameter; activations: measured by activation_report
on one real training batch (memory_source "cpu-accounting" in the record).
"""

from __future__ import annotations

import torch
from torch import nn

from lorafa.memory.activations import activation_report


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
