"""The training step the memory backends measure: model, adapters, batch and loss.

Shared by the simulator and the CUDA meter so both measure the very same step.
"""

from __future__ import annotations

import warnings

import torch

from lorafa.config import AdapterConfig
from lorafa.inject import add_adapters, default_modules_to_save, select_targets
from lorafa.memory.nf4 import quantize_nf4
from lorafa.memory.specs import ModelSpec, build_model, load_model_spec

ATTN_IMPLEMENTATIONS = ("eager", "sdpa")
QUANTIZATIONS = (None, "nf4")
# full_ft, lora and lora_fa are ours (lorafa.adapters); peft_lora and peft_lora_frozen_a are
# PEFT's LoRA as `get_peft_model` injects it, the latter with requires_grad=False on every lora_A
# (what "freezing A" means in PEFT and most other code bases). They are the reference for how
# much of LoRA-FA's saving frozen A alone gives: with dropout > 0, PEFT's nn.Dropout still keeps
# a b×s×d_in mask per adapted layer.
METHODS = ("full_ft", "lora", "lora_fa", "peft_lora", "peft_lora_frozen_a")
PEFT_METHODS = ("peft_lora", "peft_lora_frozen_a")


def adapter_config(method: str, r: int, alpha: float, dropout: float, adapter_dtype: str,
                   target_modules="all-linear") -> AdapterConfig:
    return AdapterConfig(method=method, r=r, alpha=alpha, dropout=dropout, adapter_dtype=adapter_dtype,
                         target_modules=target_modules)


def prepare_model(spec: ModelSpec | str, method: str, *, r: int = 8, alpha: float = 16, dropout: float = 0.0,
                  adapter_dtype: str = "bfloat16", target_modules="all-linear", num_adapted_layers: int | None = None,
                  attn_implementation: str = "sdpa", gradient_checkpointing: bool = False,
                  quantization: str | None = None, dtype: str = "bfloat16", device: str = "meta"):
    """The paper-setting model: 16-bit weights, adapters per `method`, options applied.

    num_adapted_layers: adapt only the first N of the linear layers `target_modules` selects
    (in module order), the x-axis of the paper's Figure 2b.
    """
    spec = load_model_spec(spec)
    if method not in METHODS:
        raise ValueError(f"method={method!r} is invalid; allowed: {', '.join(METHODS)}")
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation={attn_implementation!r} is invalid; allowed: {', '.join(ATTN_IMPLEMENTATIONS)}")
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization={quantization!r} is invalid; allowed: None, nf4")
    if quantization and method == "full_ft":
        raise ValueError("quantization='nf4' needs method lora or lora_fa (quantised weights cannot be trained)")
    if quantization and method in PEFT_METHODS:
        raise ValueError("quantization='nf4' is modelled for our lora and lora_fa only, not PEFT's layers")
    model = build_model(spec, device=device, dtype=dtype, attn_implementation=attn_implementation)
    if quantization == "nf4":
        quantize_nf4(model)
    if method != "full_ft":
        # PEFT's layers are chosen exactly as ours (same targets, same head in full) so that
        # the two implementations differ only in the adapter layer itself.
        config = adapter_config("lora" if method in PEFT_METHODS else method, r, alpha, dropout, adapter_dtype,
                                target_modules)
        if num_adapted_layers is not None or method in PEFT_METHODS:
            targets = select_targets(model, config, default_modules_to_save(model))
            if num_adapted_layers is not None:
                if not 0 < num_adapted_layers <= len(targets):
                    raise ValueError(f"num_adapted_layers={num_adapted_layers} is invalid; allowed: 1..{len(targets)}")
                targets = targets[:num_adapted_layers]
            config = adapter_config(config.method, r, alpha, dropout, adapter_dtype, targets)
        if method in PEFT_METHODS:
            model = _peft_lora(model, config, frozen_a=method == "peft_lora_frozen_a", device=device)
        else:
            add_adapters(model, config)
    else:
        add_adapters(model, AdapterConfig(method="full_ft"))
    if gradient_checkpointing:
        # Non-reentrant checkpointing needs no input that requires grad (frozen embeddings).
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    return model


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


def batch_maker(spec: ModelSpec | str, batch_size: int, seq_len: int, target_len: int | None = None):
    """make_batch(device) -> the inputs of one training batch: full-length, unpadded sequences.

    encoder: input_ids + one class label per sequence (GLUE); seq2seq: source and target of
    seq_len (or target_len) tokens (WMT16); causal: labels = input_ids (instruction tuning).
    Token values are irrelevant to memory; they are all 3 (a valid id in every vocabulary).
    """
    spec = load_model_spec(spec)
    target_len = target_len or seq_len

    def make(device) -> dict:
        ids = torch.full((batch_size, seq_len), 3, dtype=torch.long, device=device)
        if spec.family == "encoder":
            return {"input_ids": ids, "labels": torch.zeros(batch_size, dtype=torch.long, device=device)}
        if spec.family == "seq2seq":
            return {"input_ids": ids, "labels": torch.full((batch_size, target_len), 3, dtype=torch.long, device=device)}
        return {"input_ids": ids, "labels": ids}

    return make
