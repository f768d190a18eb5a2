"""lorafa: LoRA-FA (LoRA with frozen A) whose activation saving holds in every configuration.

    from lorafa import AdapterConfig, add_adapters
    model = add_adapters(model, AdapterConfig(method="lora_fa", r=8, alpha=16))

Attributes are imported lazily so that `import lorafa.results` (used by the analysis
scripts) does not pull in torch and transformers.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "AdapterConfig": "lorafa.config",
    "METHODS": "lorafa.config",
    "INITS": "lorafa.config",
    "add_adapters": "lorafa.inject",
    "merge_adapters": "lorafa.inject",
    "unmerge_adapters": "lorafa.inject",
    "count_trainable": "lorafa.inject",
    "adapter_layers": "lorafa.inject",
    "save_adapters": "lorafa.io",
    "load_adapters": "lorafa.io",
    "enable_selective_recompute": "lorafa.recompute",
    "use_lora_fa": "lorafa.peft",
    "activation_report": "lorafa.memory.activations",
    "ActivationReport": "lorafa.memory.activations",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lorafa' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
