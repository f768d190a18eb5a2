"""The training step the memory backends measure: model, adapters, batch and loss.

Shared by the simulator and the CUDA meter so both measure the very same step.
"""

from __future__ import annotations

import torch

from lorafa.config import AdapterConfig
from lorafa.inject import add_adapters, select_targets
from lorafa.memory.nf4 import quantize_nf4
from lorafa.memory.specs import ModelSpec, build_model, load_model_spec

ATTN_IMPLEMENTATIONS = ("eager", "sdpa")
QUANTIZATIONS = (None, "nf4")


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
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation={attn_implementation!r} is invalid; allowed: {', '.join(ATTN_IMPLEMENTATIONS)}")
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization={quantization!r} is invalid; allowed: None, nf4")
    if quantization and method == "full_ft":
        raise ValueError("quantization='nf4' needs method lora or lora_fa (quantised weights cannot be trained)")
    model = build_model(spec, device=device, dtype=dtype, attn_implementation=attn_implementation)
    if quantization == "nf4":
        quantize_nf4(model)
    if method != "full_ft":
        config = adapter_config(method, r, alpha, dropout, adapter_dtype, target_modules)
        if num_adapted_layers is not None:
            targets = select_targets(model, config)
            if not 0 < num_adapted_layers <= len(targets):
                raise ValueError(f"num_adapted_layers={num_adapted_layers} is invalid; allowed: 1..{len(targets)}")
            config = adapter_config(method, r, alpha, dropout, adapter_dtype, targets[:num_adapted_layers])
        add_adapters(model, config)
    else:
        add_adapters(model, AdapterConfig(method="full_ft"))
    if gradient_checkpointing:
        # Non-reentrant checkpointing needs no input that requires grad (frozen embeddings).
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    return model


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
