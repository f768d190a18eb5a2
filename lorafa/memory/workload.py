"""The training step the memory backends measure: model, adapters, batch and loss.

Shared by the simulator and the CUDA meter so both measure the very same step.
"""

from __future__ import annotations

import warnings

import torch

from lorafa.config import AdapterConfig
from lorafa.inject import add_adapters, default_modules_to_save, select_targets
from lorafa.memory.nf4 import quantize_nf4
from lorafa.memory.point import PEFT_METHODS, MemoryPoint
from lorafa.models import build_model
from lorafa.validation import require


def prepare_model(point: MemoryPoint, *, dtype: str = "bfloat16", device: str = "meta", model=None):
    """The paper-setting model of `point`: 16-bit weights, adapters per its method, options applied.

    model: the point's architecture with pretrained weights, loaded by the caller (the small
    scale measures SmolLM2 this way); None: built from the spec, randomly initialised.
    """
    if model is None:
        model = build_model(point.model, device=device, dtype=dtype, attn_implementation=point.attn_implementation)
    if point.quantization == "nf4":
        quantize_nf4(model)
    if point.method == "full_ft":
        add_adapters(model, AdapterConfig(method="full_ft"))
    elif point.method in PEFT_METHODS:
        model = _peft_lora(model, _adapter_config(point, model), frozen_a=point.method == "peft_lora_frozen_a",
                           device=device)
    else:
        add_adapters(model, _adapter_config(point, model))
    if point.selective_recompute:
        from lorafa.recompute import enable_selective_recompute

        enable_selective_recompute(model)
    if point.gradient_checkpointing:
        # Non-reentrant checkpointing needs no input that requires grad (frozen embeddings).
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    return model


def _adapter_config(point: MemoryPoint, model) -> AdapterConfig:
    """The point's adapters. PEFT's layers are chosen exactly as ours (same targets, same head
    in full), so that the two implementations differ only in the adapter layer itself; with
    num_adapted_layers, only the first N targets in module order (Figure 2b's x-axis)."""
    kwargs = dict(method="lora" if point.method in PEFT_METHODS else point.method, r=point.r,
                  alpha=point.lora_alpha, dropout=float(point.dropout), adapter_dtype=point.adapter_dtype)
    targets = point.target_modules if isinstance(point.target_modules, str) else list(point.target_modules)
    config = AdapterConfig(**kwargs, target_modules=targets)
    if point.num_adapted_layers is None and point.method not in PEFT_METHODS:
        return config
    targets = select_targets(model, config, default_modules_to_save(model))
    if point.num_adapted_layers is not None:
        n = point.num_adapted_layers
        require(0 < n <= len(targets), "num_adapted_layers", n, f"1..{len(targets)}")
        targets = targets[:n]
    return AdapterConfig(**kwargs, target_modules=targets)


def _peft_lora(model, config: AdapterConfig, *, frozen_a: bool, device: str):
    """PEFT's LoRA on `config.target_modules` (full module names), A frozen if `frozen_a`.

    Injected on the model's own device as get_peft_model does it (on the meta device for the
    simulator: the adapter weights are created there, nothing is allocated); then cast to
    config.adapter_dtype (PEFT's default, autocast_adapter_dtype, would make them float32).
    """
    from peft import LoraConfig, get_peft_model

    modules_to_save = list(default_modules_to_save(model)) or None
    peft_config = LoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
                             target_modules=list(config.target_modules), modules_to_save=modules_to_save,
                             bias="none")
    with torch.device(device), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers' deprecations, called from PEFT
        peft_model = get_peft_model(model, peft_config)
    dtype = getattr(torch, config.adapter_dtype) if config.adapter_dtype != "auto" else None
    for name, module in peft_model.named_modules():
        if name.endswith((".lora_A", ".lora_B")) and dtype is not None:
            module.to(dtype)
    for name, p in peft_model.named_parameters():
        if ".lora_A." in name and frozen_a:
            p.requires_grad_(False)
    return peft_model


def adapted_layer_count(model) -> int:
    """Linear layers carrying an adapter: ours (LoraLayer) or PEFT's (peft.tuners.lora.LoraLayer)."""
    from lorafa.inject import adapter_layers

    count = len(adapter_layers(model))
    try:
        from peft.tuners.lora import LoraLayer as PeftLoraLayer
    except ImportError:
        return count
    return count + sum(isinstance(m, PeftLoraLayer) for m in model.modules())


def batch_maker(point: MemoryPoint):
    """make_batch(device) -> the inputs of one training batch: full-length, unpadded sequences.

    encoder: input_ids + one class label per sequence (GLUE); seq2seq: source and target of
    seq_len (or target_len) tokens (WMT16); causal: labels = input_ids (instruction tuning).
    Token values are irrelevant to memory; they are all 3 (a valid id in every vocabulary).
    """
    family, batch_size, seq_len = point.model.family, point.batch_size, point.seq_len
    target_len = point.target_len or seq_len

    def make(device) -> dict:
        ids = torch.full((batch_size, seq_len), 3, dtype=torch.long, device=device)
        if family == "encoder":
            return {"input_ids": ids, "labels": torch.zeros(batch_size, dtype=torch.long, device=device)}
        if family == "seq2seq":
            return {"input_ids": ids, "labels": torch.full((batch_size, target_len), 3, dtype=torch.long, device=device)}
        return {"input_ids": ids, "labels": ids}

    return make
