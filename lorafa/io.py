"""Save and load adapters in PEFT's on-disk format.

A directory holds adapter_config.json and adapter_model.safetensors exactly as PEFT writes
them for a LoRA adapter (keys `base_model.model.<module>.lora_A.weight`), so
`peft.PeftModel.from_pretrained(base, dir)` loads ours and `load_adapters` loads PEFT's.
LoRA-FA is LoRA at inference time; what PEFT has no field for (method, init, b-gradient
correction) goes to lorafa_config.json beside it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lorafa.config import AdapterConfig
from lorafa.inject import CONFIG_ATTR, add_adapters, adapter_layers

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
LORAFA_CONFIG = "lorafa_config.json"
PREFIX = "base_model.model."


def _task_type(model: nn.Module) -> str | None:
    name = type(model).__name__
    for suffix, task in (("ForSequenceClassification", "SEQ_CLS"), ("ForConditionalGeneration", "SEQ_2_SEQ_LM"),
                         ("ForSeq2SeqLM", "SEQ_2_SEQ_LM"), ("ForCausalLM", "CAUSAL_LM"),
                         ("ForTokenClassification", "TOKEN_CLS"), ("ForQuestionAnswering", "QUESTION_ANS")):
        if name.endswith(suffix):
            return task
    return None


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def save_adapters(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write the adapters (and trained heads) of `model` to directory `path`."""
    layers = adapter_layers(model)
    config: AdapterConfig | None = getattr(model, CONFIG_ATTR, None)
    if not layers or config is None:
        raise ValueError("model has no adapters to save (full_ft models are saved with save_pretrained)")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    modules_to_save = list(getattr(model, "lorafa_modules_to_save", ()))
    state = {}
    for name, layer in layers.items():
        state[f"{PREFIX}{name}.lora_A.weight"] = layer.lora_A.weight
        state[f"{PREFIX}{name}.lora_B.weight"] = layer.lora_B.weight
    for name in modules_to_save:
        for key, value in model.get_submodule(name).state_dict().items():
            state[f"{PREFIX}{name}.{key}"] = value
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    tmp = out / (PEFT_WEIGHTS + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, out / PEFT_WEIGHTS)
    base_config = getattr(model, "config", None)
    peft_config = {
        "peft_type": "LORA",
        "task_type": _task_type(model),
        "base_model_name_or_path": getattr(base_config, "_name_or_path", None) or None,
        "r": config.r,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": sorted(layers),  # full names: PEFT matches them exactly
        "use_rslora": config.rslora,
        "fan_in_fan_out": any(layer.fan_in_fan_out for layer in layers.values()),
        "bias": "none",
        "modules_to_save": modules_to_save or None,
        "init_lora_weights": True,
        "inference_mode": True,
    }
    _write_json(out / PEFT_CONFIG, peft_config)
    _write_json(out / LORAFA_CONFIG, config.to_dict())
    return out


def _config_from_peft(peft: dict, model: nn.Module, method: str | None) -> AdapterConfig:
    if peft.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"adapter peft_type={peft.get('peft_type')!r} is not supported; allowed: LORA")
    targets = peft.get("target_modules")
    if isinstance(targets, str) and targets != "all-linear":
        # PEFT allows a regex over full module names; resolve it to the names it matches.
        targets = [n for n, _ in model.named_modules() if re.fullmatch(targets, n)]
    modules_to_save = peft.get("modules_to_save")
    if modules_to_save is not None:
        # PEFT adds every usual head name (classifier, score) for SEQ_CLS and ignores absent ones.
        names = [n for n, _ in model.named_modules()]
        modules_to_save = [n for n in names for m in modules_to_save if n == m or n.endswith("." + m)]
    return AdapterConfig(method=method or "lora", r=int(peft["r"]), alpha=peft.get("lora_alpha", 8),
                         dropout=float(peft.get("lora_dropout", 0.0)), target_modules=targets or "all-linear",
                         rslora=bool(peft.get("use_rslora", False)),
                         modules_to_save=modules_to_save if modules_to_save is not None else None)


def load_adapters(model: nn.Module, path: str | os.PathLike, method: str | None = None) -> nn.Module:
    """Add the adapters saved in `path` (by save_adapters or by PEFT) to `model` and load them.

    `method` overrides the saved method; a PEFT LoRA adapter loads as "lora" by default,
    or as "lora_fa" to keep training it with A frozen.
    """
    src = Path(path)
    for required in (PEFT_CONFIG, PEFT_WEIGHTS):
        if not (src / required).is_file():
            raise FileNotFoundError(f"no {required} in adapter directory {src}")
    peft = json.loads((src / PEFT_CONFIG).read_text())
    if (src / LORAFA_CONFIG).is_file():
        saved = json.loads((src / LORAFA_CONFIG).read_text())
        known = {f.name for f in fields(AdapterConfig)}
        saved = {k: v for k, v in saved.items() if k in known}
        if method:
            saved["method"] = method
            if method != "lora_fa":
                saved["b_grad_correction"] = False
        # The saved targets may be a preset; the exact layer list in adapter_config.json wins.
        saved["target_modules"] = peft["target_modules"]
        config = AdapterConfig(**saved)
    else:
        config = _config_from_peft(peft, model, method)
    if adapter_layers(model):
        raise ValueError("model already has adapters; load into a fresh base model")
    add_adapters(model, config)
    state = load_file(str(src / PEFT_WEIGHTS))
    # PEFT keeps the adapter name in some keys (".default."); the saved format drops it.
    state = {k[len(PREFIX):] if k.startswith(PREFIX) else k: v for k, v in state.items()}
    state = {k.replace(".default.", ".").replace("modules_to_save.", ""): v for k, v in state.items()}
    model_state = model.state_dict()
    unexpected = sorted(k for k in state if k not in model_state)
    if unexpected:
        raise ValueError(f"adapter file {src / PEFT_WEIGHTS} has keys that match no parameter: {unexpected[:5]}")
    expected = {f"{n}.lora_{ab}.weight" for n in adapter_layers(model) for ab in "AB"}
    missing = sorted(expected - set(state))
    if missing:
        raise ValueError(f"adapter file {src / PEFT_WEIGHTS} lacks weights for: {missing[:5]}")
    with torch.no_grad():
        for key, value in state.items():
            target = model_state[key]
            if target.shape != value.shape:
                raise ValueError(f"adapter weight {key} has shape {tuple(value.shape)}, model expects {tuple(target.shape)}")
            target.copy_(value.to(target.dtype))
    return model
