"""add_adapters: choose target layers, wrap them, set what trains; merge and count."""

from __future__ import annotations

from torch import nn

from lorafa.adapters import LoraLayer, is_linear_like
from lorafa.config import AdapterConfig

# Last name component of query/value projections: RoBERTa/BERT, T5, LLaMA/OPT/Mistral.
QV_NAMES = ("query", "value", "q", "v", "q_proj", "v_proj")
# Task heads of *ForSequenceClassification models: RoBERTa/BERT, LLaMA/GPT-2, T5/BART.
CLASSIFIER_HEADS = ("classifier", "score", "classification_head")

CONFIG_ATTR = "lorafa_config"


def _block_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Transformer blocks live in an nn.ModuleList (encoder.layer, model.layers, block, h)."""
    return tuple(f"{name}." for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and name)


def default_modules_to_save(model: nn.Module) -> tuple[str, ...]:
    """The paper trains the classification head in full beside the adapters. RoBERTa's head
    is dense + tanh + out_proj over <s>; BERT splits the same two layers between the encoder's
    pooler (dense + tanh over [CLS]) and the classifier, so for BERT both train."""
    if not type(model).__name__.endswith("ForSequenceClassification"):
        return ()
    for attr in CLASSIFIER_HEADS:
        if isinstance(getattr(model, attr, None), nn.Module):
            prefix = getattr(model, "base_model_prefix", "")
            pooler = getattr(getattr(model, prefix, None), "pooler", None) if prefix else None
            return (attr, f"{prefix}.pooler") if isinstance(pooler, nn.Module) else (attr,)
    return ()


def _in_any(name: str, roots) -> bool:
    return any(name == r or name.startswith(r + ".") for r in roots)


def _matches_suffix(name: str, suffix: str) -> bool:
    return name == suffix or name.endswith("." + suffix)


def linear_candidates(model: nn.Module, modules_to_save=()) -> list[str]:
    """Names of the linear layers that may carry an adapter (heads and output embeddings excluded)."""
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [name for name, m in model.named_modules()
            if name and is_linear_like(m) and m is not out_emb and not _in_any(name, modules_to_save)]


def select_targets(model: nn.Module, config: AdapterConfig, modules_to_save=()) -> list[str]:
    """The module names that get an adapter under `config.target_modules`."""
    candidates = [n for n in linear_candidates(model, modules_to_save)
                  if not any(_matches_suffix(n, s) for s in config.exclude_modules)]
    spec = config.target_modules
    if spec in ("all-linear", "qv"):
        blocks = _block_prefixes(model)
        chosen = [n for n in candidates if n.startswith(blocks)]
        if spec == "qv":
            chosen = [n for n in chosen if n.rsplit(".", 1)[-1] in QV_NAMES]
        if not chosen:
            raise ValueError(f"AdapterConfig.target_modules={spec!r} matches no linear layer in this "
                             f"model; candidate module names: {_short_names(candidates)}")
        return chosen
    chosen = []
    for suffix in spec:
        hits = [n for n in candidates if _matches_suffix(n, suffix)]
        if not hits:
            raise ValueError(f"AdapterConfig.target_modules entry {suffix!r} matches no linear layer; "
                             f"allowed: the presets all-linear, qv, or suffixes of candidate module names: "
                             f"{_short_names(candidates)}")
        chosen += [n for n in hits if n not in chosen]
    return chosen


def _short_names(names: list[str]) -> str:
    return ", ".join(sorted({n.rsplit(".", 1)[-1] for n in names})) or "(none)"


def add_adapters(model: nn.Module, config: AdapterConfig) -> nn.Module:
    """Adapt `model` in place and return it.

    full_ft: every parameter trains, nothing is added. lora / lora_fa: every parameter is
    frozen, the target linears are wrapped in LoraLayer, and `modules_to_save` (by default
    a sequence-classification head) trains in full.
    """
    if not isinstance(config, AdapterConfig):
        raise ValueError(f"config must be an AdapterConfig, got {type(config).__name__}")
    if adapter_layers(model):
        raise ValueError("model already has adapters; add_adapters applies once")
    setattr(model, CONFIG_ATTR, config)
    if config.method == "full_ft":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    modules_to_save = config.modules_to_save
    if modules_to_save is None:
        modules_to_save = default_modules_to_save(model)
    absent = [n for n in modules_to_save if not _has_submodule(model, n)]
    if absent:
        raise ValueError(f"AdapterConfig.modules_to_save names modules this model lacks: {absent}; "
                         f"top-level modules: {[n for n, _ in model.named_children()]}")
    targets = select_targets(model, config, modules_to_save)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoraLayer(getattr(parent, child), config))
    for name in modules_to_save:
        for p in model.get_submodule(name).parameters():
            p.requires_grad_(True)
    model.lorafa_modules_to_save = tuple(modules_to_save)
    return model


def _has_submodule(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def adapter_layers(model: nn.Module) -> dict[str, LoraLayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold s·B·A into every base weight; forward then skips the adapters."""
    for layer in adapter_layers(model).values():
        layer.merge()
    return model


def unmerge_adapters(model: nn.Module) -> nn.Module:
    for layer in adapter_layers(model).values():
        layer.unmerge()
    return model


def count_trainable(model: nn.Module) -> int:
    """The paper's "# TPs": elements of parameters that require grad (shared ones once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
