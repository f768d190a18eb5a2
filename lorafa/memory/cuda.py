"""The CUDA meter: peak memory of one real training step on a GPU.

The same step as the simulator (setup.prepare_model, setup.batch_maker, MixedPrecisionAdamW),
randomly initialised (memory does not depend on weight values). One warm-up step first, so
the measured step is the steady state; then torch.cuda.reset_peak_memory_stats and
max_memory_allocated around the second, whose wall time (CUDA-synchronised) is step_time_s.

On a CPU device (the dry run of this meter, make dry-run) the same step runs with no allocator
to read: the peak reported is the sum of the accounted parts (weights, states, gradients, the
tensors saved for backward).
"""

from __future__ import annotations

import time

import torch
from torch.utils.weak import WeakIdKeyDictionary

from lorafa.memory.optim import MixedPrecisionAdamW
from lorafa.memory.simulate import StepMemory


def cuda_step(model, make_batch, *, loss_fn=lambda out: out.loss, device: str = "cuda") -> StepMemory:
    """Measure one training step of `model` (already on `device`, adapters injected)."""
    on_gpu = torch.device(device).type == "cuda"
    if on_gpu and not torch.cuda.is_available():
        raise RuntimeError("backend='cuda' needs a CUDA GPU; use backend='simulate' on this machine")
    sync = (lambda: torch.cuda.synchronize(device)) if on_gpu else (lambda: None)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = MixedPrecisionAdamW(trainable)
    model.train()
    sync()
    # before the states: parameters and buffers only
    weights = torch.cuda.memory_allocated(device) if on_gpu else sum(
        t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))

    def step(record_saved: bool) -> int:
        saved = WeakIdKeyDictionary()
        params = {p.untyped_storage().data_ptr() for p in list(model.parameters()) + list(model.buffers())}

        def pack(t):
            st = t.untyped_storage()
            if record_saved and st.data_ptr() not in params:
                saved[st] = st.nbytes()
            return t

        batch = make_batch(device)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(**batch)
            loss = loss_fn(out)
        nbytes = sum(saved.values())
        loss.backward()
        del out, loss, batch
        opt.step()
        return nbytes

    step(False)
    sync()
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    activation_bytes = step(True)
    sync()
    step_time_s = time.perf_counter() - start
    states = sum(t.numel() * t.element_size() for t in opt.state_tensors())
    grads = sum(p.grad.numel() * p.grad.element_size() for p in trainable if p.grad is not None)
    peak = torch.cuda.max_memory_allocated(device) if on_gpu else weights + states + grads + activation_bytes
    # The peak's composition is not observable on a GPU; gradients and activations at the
    # peak are bounded by their totals, and the rest is reported as "other".
    breakdown = {"weights": weights, "optimizer_states": states, "gradients": grads,
                 "activations": activation_bytes}
    breakdown["other"] = max(0, peak - sum(breakdown.values()))
    opt.zero_grad()
    return StepMemory(peak_bytes=peak, peak_breakdown=breakdown, activation_bytes=activation_bytes,
                      persistent={"weights": weights, "gradients": grads, "optimizer_states": states},
                      step_time_s=step_time_s)
