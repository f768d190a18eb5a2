"""LiveMemory: a TorchDispatchMode that counts the bytes of every live tensor storage.

Works on fake tensors (no data, so paper-scale models fit on any machine) and on real ones.
Every op's outputs pass through __torch_dispatch__; each new storage is counted once (views
share it) in the category of the current phase, and uncounted when Python frees it (a weak
reference callback, as torch's own MemTracker does; MemTracker itself refuses frozen
parameters, hence this small class). The peak and the per-category totals at the peak are
kept, so a simulation yields what the paper's Figure 3 shows.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

CATEGORIES = ("weights", "gradients", "optimizer_states", "activations", "other")


def _storages(t: torch.Tensor):
    # Tensor subclasses that wrap others (e.g. DTensor) would need flattening; plain and
    # fake tensors have exactly one storage.
    return [t.untyped_storage()]


class LiveMemory(TorchDispatchMode):
    """Count live storage bytes by category; `phase` names the category of new allocations.

    block: round every storage up to this many bytes (the CUDA caching allocator's 512),
    so a simulated peak is comparable with torch.cuda.max_memory_allocated.
    """

    def __init__(self, block: int = 1):
        super().__init__()
        self.block = max(1, int(block))
        self.phase = "other"
        self._live = WeakIdKeyDictionary()  # storage -> [bytes, category]
        self._refs = {}  # id(weakref) -> weakref, kept so the callbacks fire
        self.by_category = dict.fromkeys(CATEGORIES, 0)
        self.current = 0
        self.peak = 0
        self.peak_breakdown = dict(self.by_category)

    # ------------------------------------------------------------------ bookkeeping

    def _round(self, nbytes: int) -> int:
        return -(-nbytes // self.block) * self.block if nbytes else 0

    def track(self, t: torch.Tensor, category: str | None = None, nbytes: int | None = None) -> None:
        """Count `t`'s storage (if new) in `category` (default: the current phase)."""
        for st in _storages(t):
            if st in self._live:
                continue
            size = self._round(st.nbytes() if nbytes is None else nbytes)
            entry = [size, category or self.phase]
            self._live[st] = entry
            ref = weakref.ref(st, self._make_free(entry))
            self._refs[id(ref)] = ref
            self._add(size, entry[1])

    def _make_free(self, entry):
        def free(ref):
            self._refs.pop(id(ref), None)
            self._add(-entry[0], entry[1])
        return free

    def recategorize(self, t: torch.Tensor, category: str) -> None:
        """Move `t`'s storage to `category` (a gradient buffer is only known to be one later)."""
        for st in _storages(t):
            entry = self._live.get(st)
            if entry is None:
                self.track(t, category)
            elif entry[1] != category:
                self.by_category[entry[1]] -= entry[0]
                self.by_category[category] += entry[0]
                entry[1] = category

    def reserve(self, nbytes: int, category: str):
        """Count `nbytes` that exist outside torch's view (e.g. a ZeRO-3 gathered layer)."""
        self._add(nbytes, category)

    def _add(self, nbytes: int, category: str) -> None:
        self.by_category[category] += nbytes
        self.current += nbytes
        if self.current > self.peak:
            self.peak = self.current
            self.peak_breakdown = dict(self.by_category)

    def reset_peak(self) -> None:
        self.peak = self.current
        self.peak_breakdown = dict(self.by_category)

    # ------------------------------------------------------------------ dispatch

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.track(t)
        return out
