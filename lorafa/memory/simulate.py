"""The fake-tensor memory simulator: one training step of a real model, without its weights.

Memory does not depend on weight values. So: build the transformers model on the meta device,
inject adapters there (PEFT-style .to() swaps fail under FakeTensorMode; meta first, fake
afterwards avoids that), give it FakeTensor parameters, and run forward, backward and the
optimizer step under `LiveMemory`, which counts every live storage. A LLaMA-7B point takes
seconds on a laptop CPU.

The fake device is "cpu": this torch build cannot fake CUDA tensors without CUDA, and the
CPU kernels keep the same tensors for backward as CUDA's (sdpa: output + logsumexp).
Dropout: on CPU, F.dropout multiplies by a noise tensor of the input's dtype and keeps it for
backward (2 bytes per element in bf16); on CUDA it runs the fused native_dropout, which keeps
a bool mask (1 byte). measure_peak_memory simulates the GPU's (dropout_as_cuda=True), so that
LoRA's and PEFT's adapter-dropout masks and RoBERTa's/T5's attention and hidden dropout masks
count as on the paper's GPUs; simulate_step's default (False) keeps the CPU's, which the
exactness tests compare with real CPU runs.
Known gap: with attention dropout > 0 (RoBERTa, T5 in training) CPU sdpa falls back to the
math kernel, which keeps the attention matrix, where CUDA's flash kernel would not; so
simulated sdpa peaks of those models are too high (eager ones are unaffected).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.weak import WeakIdKeyDictionary

from lorafa.adapters import LoraLayer
from lorafa.memory.optim import MixedPrecisionAdamW
from lorafa.memory.tracker import LiveMemory


@dataclass
class StepMemory:
    """What one simulated (or measured) training step held.

    peak_bytes and peak_breakdown: at the highest point. activation_bytes: storages saved for
    backward at the end of forward (parameters and buffers excluded), as activation_report
    measures them. persistent: weights, gradients and optimizer states after the step.
    """

    peak_bytes: int
    peak_breakdown: dict
    activation_bytes: int
    persistent: dict = field(default_factory=dict)
    step_time_s: float | None = None  # measured (CUDA) steps only


@contextlib.contextmanager
def _masks_as_on_real_tensors():
    """Let transformers choose attention masks as it does for real tensors.

    Without an attention mask, transformers looks at the position ids' values to detect
    packed sequences; a FakeTensor has no values, so it assumes packing and builds a 4-D
    mask, where real tensors get sdpa's is_causal=True and no mask (flash attention). Our
    batches hold one unpadded sequence per row, for which the real answer is "not packed".
    """
    try:
        from transformers import masking_utils
    except ImportError:
        yield
        return
    original = masking_utils.find_packed_sequence_indices
    masking_utils.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = original


@contextlib.contextmanager
def _dropout_as_on_cuda():
    """F.dropout as CUDA runs it in training: torch.native_dropout, which keeps a bool mask."""
    import torch.nn.functional as F

    original = F.dropout

    def dropout(input, p=0.5, training=True, inplace=False):
        if not training or p == 0 or p == 1 or not input.is_floating_point():
            return original(input, p, training, inplace)
        out = torch.native_dropout(input, p, True)[0]
        return input.copy_(out) if inplace else out

    F.dropout = dropout
    try:
        yield
    finally:
        F.dropout = original


def _fakeify(model: nn.Module, device: str) -> None:
    """Replace every parameter and buffer by an empty tensor of the same shape (fake under
    FakeTensorMode), keeping tied parameters tied."""
    memo: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is None:
                continue
            if id(p) not in memo:
                memo[id(p)] = nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device=device),
                                           requires_grad=p.requires_grad)
            module._parameters[name] = memo[id(p)]
        for name, b in list(module._buffers.items()):
            if b is not None:
                if id(b) not in memo:
                    memo[id(b)] = torch.empty(b.shape, dtype=b.dtype, device=device)
                module._buffers[name] = memo[id(b)]


def _is_adapter_param(model: nn.Module) -> set[int]:
    """Adapter weights: ours (LoraLayer) and PEFT's (lora_A / lora_B submodules)."""
    ours = {id(p) for m in model.modules() if isinstance(m, LoraLayer) for p in (m.lora_A.weight, m.lora_B.weight)}
    peft = {id(p) for n, p in model.named_parameters() if ".lora_A." in n or ".lora_B." in n}
    return ours | peft


def zero3_units(model: nn.Module) -> list[list[nn.Parameter]]:
    """What ZeRO-3 gathers at once: each transformer block's parameters, and each other
    module's own parameters (embeddings, heads, final norm)."""
    blocks = [b for m in model.modules() if isinstance(m, nn.ModuleList) for b in m]
    units = [list(b.parameters()) for b in blocks]
    inside = {id(p) for u in units for p in u}
    for m in model.modules():
        own = [p for p in m.parameters(recurse=False) if id(p) not in inside]
        inside.update(id(p) for p in own)
        if own:
            units.append(own)
    return units


def _frozen_base_bytes(params, adapters: set[int]) -> int:
    unique = {id(p): p for p in params if id(p) not in adapters and not p.requires_grad}
    return sum(p.numel() * p.element_size() for p in unique.values())


def _track_weights(tracker: LiveMemory, model: nn.Module, adapters: set[int], zero_shards: int,
                   inflight: int) -> WeakIdKeyDictionary:
    """Count every parameter and buffer once as weights (a frozen base weight by its ZeRO-3
    shard, plus the gathered unit in flight); returns their storages, which are not activations."""
    seen = set()
    for p in list(model.parameters()) + list(model.buffers()):
        if id(p) in seen:
            continue
        seen.add(id(p))
        nbytes = p.untyped_storage().nbytes()
        if zero_shards > 1 and isinstance(p, nn.Parameter) and not p.requires_grad and id(p) not in adapters:
            nbytes = -(-nbytes // zero_shards)
        tracker.track(p, "weights", nbytes)
    tracker.reserve(inflight, "weights")
    storages = WeakIdKeyDictionary({p.untyped_storage(): True for p in model.parameters()})
    for b in model.buffers():
        storages[b.untyped_storage()] = True
    return storages


def _forward_counting_saved(model: nn.Module, batch: dict, loss_fn: Callable, weight_storages) -> tuple:
    """(output, loss, bytes autograd keeps for backward): the saved tensors' storages, each
    once, weights excluded."""
    saved = WeakIdKeyDictionary()

    def pack(t):
        st = t.untyped_storage()
        if st not in weight_storages:
            saved[st] = st.nbytes()
        # Detached, as in activation_report: a saved output returned as itself makes a cycle
        # (grad_fn -> saved tensor -> grad_fn) that only Python's gc frees.
        return t.detach()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(**batch)
        loss = loss_fn(out)
    return out, loss, sum(saved.values())


def simulate_step(model: nn.Module, make_batch: Callable[[str], dict], *,
                  loss_fn: Callable = lambda out: out.loss, device: str = "cpu", block: int = 512,
                  zero_shards: int = 1, optimizer: bool = True, dropout_as_cuda: bool = False) -> StepMemory:
    """Simulate one training step of `model` (on the meta device, adapters already injected).

    make_batch(device) -> keyword inputs; loss_fn(output) -> scalar loss. zero_shards > 1:
    frozen base weights are sharded over that many GPUs and one gathered unit (the largest
    block) is in flight; adapters, gradients and optimizer states stay whole (paper §3.2).
    dropout_as_cuda: dropout keeps CUDA's bool mask instead of the CPU's input-dtype noise.
    The model is consumed (its parameters become fake tensors).
    """
    adapters = _is_adapter_param(model)
    inflight = 0
    if zero_shards > 1:  # measured on meta, before fake-ification; a unit's own shard is already counted
        inflight = max((_frozen_base_bytes(u, adapters) for u in zero3_units(model)), default=0)
        inflight -= inflight // zero_shards
    cuda_dropout = _dropout_as_on_cuda() if dropout_as_cuda else contextlib.nullcontext()
    with FakeTensorMode(), _masks_as_on_real_tensors(), cuda_dropout:
        _fakeify(model, device)
        # _fakeify made new parameter objects: the ids gathered above are stale, and a new
        # parameter may reuse a freed one's id, by gc's timing (ZeRO-3 points then came out
        # 16.5-17.3 GB for one configuration, a frozen A sharded or a base weight not).
        adapters = _is_adapter_param(model)
        tracker = LiveMemory(block=block)
        with tracker:
            weight_storages = _track_weights(tracker, model, adapters, zero_shards, inflight)
            trainable = [p for p in model.parameters() if p.requires_grad]
            tracker.phase = "optimizer_states"
            opt = MixedPrecisionAdamW(trainable) if optimizer else None
            for p in trainable:
                p.register_post_accumulate_grad_hook(lambda q: tracker.recategorize(q.grad, "gradients"))

            tracker.phase = "activations"
            model.train()
            batch = make_batch(device)
            out, loss, activation_bytes = _forward_counting_saved(model, batch, loss_fn, weight_storages)

            tracker.phase = "other"  # backward's temporaries; gradients are moved by their hooks
            loss.backward()
            del out, loss, batch
            if opt is not None:
                opt.step()
            persistent = {k: tracker.by_category[k] for k in ("weights", "gradients", "optimizer_states")}
        return StepMemory(peak_bytes=tracker.peak, peak_breakdown=dict(tracker.peak_breakdown),
                          activation_bytes=activation_bytes, persistent=persistent)
