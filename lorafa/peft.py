"""LoRA-FA for a PEFT model, with lorafa's backward, in one call.

    from peft import LoraConfig, get_peft_model
    from lorafa.peft import use_lora_fa

    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules="all-linear"))
    use_lora_fa(model)          # A frozen; backward keeps x·Aᵀ and a dropout seed instead of x
    Trainer(model=model, ...)   # trains B only (and whatever else PEFT left trainable)

Why not PEFT's own LoRA-FA: `create_lorafa_optimizer` (and every "LoRA-FA" that sets
requires_grad=False on A) changes what is trained, not what is kept. With lora_dropout > 0
PEFT's dropout module still keeps its b×s×d_in mask and output for backward, so the memory
saving the paper is about does not happen (RoBERTa-base, batch 8 x 128, benchmarks/bench_peft.py).

The plug-in point is PEFT's LoRA variants (`peft.tuners.lora.layer.LoraVariant`, the mechanism
behind DoRA): a `lora.Linear` hands an adapter listed in its `lora_variant` dict to that
variant's `forward(module, active_adapter, x, result)` after its base layer has run. use_lora_fa
registers LoRAFAVariant there, whose forward is lorafa's LoRAFAFunction given the base output.
Nothing else changes: parameter names, PEFT's config, save_pretrained / from_pretrained,
merge_and_unload, adapter switching and disabling, multi-adapter batches. An adapter saved
from such a model is a plain LoRA adapter (LoRA-FA is LoRA at inference time), which plain PEFT
and lorafa.load_adapters both load. Only the adapters present at the call are converted.
"""

from __future__ import annotations

import torch
from torch import nn

from lorafa.adapters import LoRAFAFunction, compute_dtype, corrected_b_grad, draw_seed

try:  # PEFT is a dependency of lorafa, but keep the error readable if it is missing
    from peft.tuners.lora.layer import Linear as PeftLoraLinear
    from peft.tuners.lora.layer import LoraVariant
except ImportError as err:  # pragma: no cover
    raise ImportError("lorafa.peft needs the `peft` package (pip install peft)") from err

__all__ = ["LoRAFAVariant", "use_lora_fa", "lora_fa_layers"]


def _dropout_p(module: nn.Module) -> float:
    """The adapter's active dropout probability: PEFT keeps nn.Dropout(p) or nn.Identity (p 0)."""
    return float(module.p) if isinstance(module, nn.Dropout) and module.training else 0.0


class LoRAFAVariant(LoraVariant):
    """PEFT LoRA variant: the adapter's forward and backward are lorafa's LoRA-FA; merging is
    plain LoRA's (W + s·B·A)."""

    @staticmethod
    def init(module, adapter_name: str, **kwargs) -> None:
        module.lora_A[adapter_name].weight.requires_grad_(False)

    @staticmethod
    def merge_safe(module, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        return orig_weight + module.get_delta_weight(active_adapter).to(orig_weight.dtype)

    @staticmethod
    def merge_unsafe(module, active_adapter: str, orig_weight: torch.Tensor) -> None:
        orig_weight.data += module.get_delta_weight(active_adapter).to(orig_weight.dtype)

    @staticmethod
    def unmerge(module, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        return orig_weight - module.get_delta_weight(active_adapter).to(orig_weight.dtype)

    @staticmethod
    def forward(module, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs) -> torch.Tensor:
        lora_a = module.lora_A[active_adapter].weight
        lora_b = module.lora_B[active_adapter].weight
        p = _dropout_p(module.lora_dropout[active_adapter])
        seed = draw_seed() if p > 0 else None
        return LoRAFAFunction.apply(x, result, None, None, lora_a, lora_b, module.scaling[active_adapter], p, seed,
                                    compute_dtype(x, lora_a.dtype))


def lora_fa_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The PEFT LoRA layers of `model` that run at least one adapter as LoRA-FA."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, PeftLoraLinear) and any(isinstance(v, LoRAFAVariant) for v in m.lora_variant.values())}


def use_lora_fa(model: nn.Module, adapter_name: str | None = None, b_grad_correction: bool = False) -> nn.Module:
    """Turn the LoRA adapter `adapter_name` (default: every adapter) of a PEFT model into LoRA-FA,
    in place: A frozen, and backward keeps x·Aᵀ (b×s×r) and a dropout seed instead of x and the
    dropout mask. Returns the model.

    b_grad_correction: also replace B's gradient by the 2025 revision's corrected one (what PEFT's
    create_lorafa_optimizer does inside its optimizer; here a gradient hook, so any optimizer works).

    Only `lora.Linear` layers (nn.Linear and transformers' Conv1D bases) can be converted; an
    adapter that already has a variant (DoRA, ...) or a LoRA bias is refused, as is a model with
    no PEFT LoRA layer.
    """
    layers = {name: m for name, m in model.named_modules() if isinstance(m, PeftLoraLinear)}
    if not layers:
        raise TypeError(f"use_lora_fa needs a PEFT LoRA model (peft.get_peft_model with a LoraConfig); "
                        f"{type(model).__name__} has no peft lora.Linear layer")
    converted = 0
    for name, layer in layers.items():
        for adapter in layer.lora_A.keys():
            if adapter_name is not None and adapter != adapter_name:
                continue
            existing = layer.lora_variant.get(adapter)
            if existing is not None and not isinstance(existing, LoRAFAVariant):
                raise ValueError(f"{name}: adapter {adapter!r} already runs as {type(existing).__name__}; "
                                 "LoRA-FA replaces plain LoRA only")
            if layer.lora_bias.get(adapter, False):
                raise ValueError(f"{name}: adapter {adapter!r} has lora_bias=True, which LoRA-FA does not support")
            if existing is None:
                variant = LoRAFAVariant()
                layer.lora_variant[adapter] = variant
                variant.init(layer, adapter)
                if b_grad_correction:
                    b = layer.lora_B[adapter].weight
                    a, s = layer.lora_A[adapter].weight, layer.scaling[adapter]
                    b.register_hook(lambda grad, a=a, s=s: corrected_b_grad(grad, a, s))
            converted += 1
    if adapter_name is not None and not converted:
        raise ValueError(f"no LoRA layer has an adapter named {adapter_name!r}")
    return model
