"""activation_report: what a forward pass keeps for backward, measured, not estimated.

Every tensor autograd saves passes through torch.autograd.graph.saved_tensors_hooks; we
record its storage once (several ops often save the same tensor, and views share storage),
skip parameters and buffers (they exist with or without training), and attribute it
to the innermost module running when it was saved.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn

from lorafa.adapters import LoraLayer, is_linear_like

CATEGORIES = ("adapter input", "linear input", "attention", "norm", "mlp", "other")
_ATTENTION_WORDS = ("attn", "attention")
_MLP_WORDS = ("mlp", "intermediate", "ffn", "feed_forward", "densereludense", "densegatedactdense")


@dataclass
class ActivationReport:
    total_bytes: int
    by_module: dict[str, int]
    by_category: dict[str, int] = field(default_factory=dict)
    n_tensors: int = 0

    def __str__(self) -> str:
        rows = [f"saved activations: {self.total_bytes / 2**20:.2f} MiB in {self.n_tensors} tensors"]
        rows += [f"  {cat:<14} {b / 2**20:10.2f} MiB" for cat, b in self.by_category.items() if b]
        return "\n".join(rows)


def _storage_key(t: torch.Tensor):
    storage = t.untyped_storage()
    return (t.device, storage.data_ptr()), storage.nbytes()


def _category(name: str, module: nn.Module, inside_adapter: bool) -> str:
    if inside_adapter:
        return "adapter input"
    if is_linear_like(module):
        return "linear input"
    cls = type(module).__name__.lower()
    if "norm" in cls:
        return "norm"
    path = name.lower().split(".") + [cls]
    if any(w in part for part in path for w in _ATTENTION_WORDS):
        return "attention"
    if any(w in part for part in path for w in _MLP_WORDS):
        return "mlp"
    return "other"


def activation_report(model: nn.Module, **inputs) -> ActivationReport:
    """Run `model(**inputs)` once and report the bytes kept for backward.

    The model's mode decides what is measured: call model.train() to include dropout.
    The graph is released before returning; no backward is run.
    """
    excluded = {_storage_key(t)[0] for t in list(model.parameters()) + list(model.buffers())}
    names = {m: n for n, m in model.named_modules()}
    stack: list[nn.Module] = []
    adapter_depth = [0]
    seen: dict = {}

    def pre_hook(module, args):
        stack.append(module)
        if isinstance(module, LoraLayer):
            adapter_depth[0] += 1

    def post_hook(module, args, output):
        stack.pop()
        if isinstance(module, LoraLayer):
            adapter_depth[0] -= 1

    def pack(t: torch.Tensor):
        key, nbytes = _storage_key(t)
        if key not in excluded and key not in seen and nbytes:
            owner = stack[-1] if stack else model
            if adapter_depth[0]:  # attribute lora_A / lora_B / dropout inside an adapter to the adapter
                owner = next(m for m in reversed(stack) if isinstance(m, LoraLayer))
            seen[key] = (nbytes, owner, bool(adapter_depth[0]))
        # Detached: a pack hook that returns an output tensor itself makes a reference cycle
        # (grad_fn -> saved tensor -> grad_fn) that Python's gc cannot see, and with no backward
        # to free it, the graph, its activations and this closure (the model) would outlive the
        # call: about 0.4 GB per MiniLM run, which OOM-killed a 58-run suite. The alias keeps
        # the storage alive, so storages stay distinct for the dedupe above.
        return t.detach()

    # No hooks inside adapter layers: what they save is attributed to the adapter anyway, and a
    # hook on a base layer would make LoraLayer take its general (unfused) path.
    inside = {id(c) for m in names if isinstance(m, LoraLayer) for c in m.modules() if c is not m}
    handles = []
    for m in names:
        if id(m) in inside:
            continue
        handles.append(m.register_forward_pre_hook(pre_hook))
        handles.append(m.register_forward_hook(post_hook, always_call=True))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            output = model(**inputs)
        del output
    finally:
        for h in handles:
            h.remove()

    return _report(seen, names)


def _report(seen: dict, names: dict[nn.Module, str]) -> ActivationReport:
    """The report of the saved storages {key: (bytes, owning module, inside an adapter)}."""
    by_module: dict[str, int] = defaultdict(int)
    by_category = dict.fromkeys(CATEGORIES, 0)
    for nbytes, owner, in_adapter in seen.values():
        name = names.get(owner, "")
        by_module[name] += nbytes
        by_category[_category(name, owner, in_adapter)] += nbytes
    return ActivationReport(total_bytes=sum(by_module.values()), by_module=dict(by_module),
                            by_category=by_category, n_tensors=len(seen))
