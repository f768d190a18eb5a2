"""One memory point: a validated, documented description of the training step to measure.

    point = MemoryPoint(model="llama-7b", method="lora_fa", batch_size=16, seq_len=1024, r=64)
    result = measure(point)                      # lorafa.memory.measure
    record, reused = run_point(point, results_dir() / "paper")

experiments/memory.py turns its Hydra config (conf/memory/) into a MemoryPoint; every field is
checked here, once, before any model is built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from lorafa.models import ModelSpec, load_model_spec
from lorafa.validation import fail, is_number, require, require_choice, require_int, require_known_keys

BACKENDS = ("simulate", "cuda")
# full_ft, lora and lora_fa are ours (lorafa.adapters); peft_lora and peft_lora_frozen_a are
# PEFT's LoRA as `get_peft_model` injects it, the latter with requires_grad=False on every lora_A
# (what "freezing A" means in PEFT and most other code bases). They are the reference for how
# much of LoRA-FA's saving frozen A alone gives: with dropout > 0, PEFT's nn.Dropout still keeps
# a b×s×d_in mask per adapted layer.
METHODS = ("full_ft", "lora", "lora_fa", "peft_lora", "peft_lora_frozen_a")
PEFT_METHODS = ("peft_lora", "peft_lora_frozen_a")
ATTN_IMPLEMENTATIONS = ("eager", "sdpa")
QUANTIZATIONS = (None, "nf4")
CAPACITY_UNIT = 10**9  # capacity_gb is in the paper's GB (an A100 80GB holds 80·10^9 bytes)


@dataclass(frozen=True)
class MemoryPoint:
    """One AdamW training step in the paper's mixed precision (16-bit weights and activations,
    fp32 master copies and moments of the trainable parameters), and where it is recorded.

    model: a ModelSpec, a conf/model name or its dict (Hydra's composed `model`).
    method: full_ft | lora | lora_fa | peft_lora | peft_lora_frozen_a (PEFT's, as reference).
    batch_size, seq_len: the batch; target_len: T5's target length (None: seq_len).
    backend: simulate (fake tensors, any CPU) | cuda (the same step for real on a GPU).
    r, alpha (None: 4·r), dropout, adapter_dtype, target_modules: the adapters.
    num_adapted_layers: adapt only the first N target layers (Figure 2b); None: all.
    attn_implementation: eager | sdpa; gradient_checkpointing: recompute block activations;
    selective_recompute: recompute norms, gated activations and the causal-LM loss in backward
    (lorafa.recompute; the paper's section 3.2).
    quantization: None | nf4 (QLoRA); zero_shards: > 1 shards the frozen base (ZeRO-3).
    capacity_gb: status "oom" above this many 10^9 bytes (None: never).
    experiment, scale: the record's experiment name and results folder.
    dry_run: a rehearsal of the point (lorafa.dryrun.rehearsal_point, make dry-run): backend
        cuda runs the same step on the CPU when there is no GPU.
    """

    model: ModelSpec
    method: str
    batch_size: int
    seq_len: int
    backend: str = "simulate"
    r: int = 8
    alpha: float | None = None
    dropout: float = 0.0
    adapter_dtype: str = "bfloat16"
    target_modules: str | tuple = "all-linear"
    num_adapted_layers: int | None = None
    attn_implementation: str = "eager"
    gradient_checkpointing: bool = False
    selective_recompute: bool = False
    quantization: str | None = None
    zero_shards: int = 1
    target_len: int | None = None
    capacity_gb: float | None = 80
    experiment: str = "memory"
    scale: str = "paper"
    dry_run: bool = False

    @classmethod
    def from_dict(cls, values: dict, **override) -> MemoryPoint:
        values = {**values, **override}
        require_known_keys("memory point", values, {f.name for f in dataclasses.fields(cls)})
        return cls(**values)

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 - frozen
        set_("model", load_model_spec(self.model))  # an unknown name lists the available ones
        if isinstance(self.target_modules, list):
            set_("target_modules", tuple(self.target_modules))
        for name, allowed in (("backend", BACKENDS), ("method", METHODS), ("quantization", QUANTIZATIONS),
                              ("attn_implementation", ATTN_IMPLEMENTATIONS)):
            require_choice(name, getattr(self, name), allowed)
        for name in ("batch_size", "seq_len", "r", "zero_shards"):
            require_int(name, getattr(self, name))
        for name in ("gradient_checkpointing", "selective_recompute", "dry_run"):
            require(isinstance(getattr(self, name), bool), name, getattr(self, name), "true or false")
        for name in ("num_adapted_layers", "target_len"):
            require_int(name, getattr(self, name), allow_none=True)
        require(is_number(self.dropout) and 0 <= self.dropout < 1, "dropout", self.dropout, "a number in [0, 1)")
        require(self.capacity_gb is None or (is_number(self.capacity_gb) and self.capacity_gb > 0),
                "capacity_gb", self.capacity_gb, "a number > 0 or null")
        require(bool(self.experiment) and not any(c in self.experiment for c in "\\\n"), "experiment_name",
                self.experiment, "a non-empty name")
        self._check_combinations()

    def _check_combinations(self) -> None:
        if self.zero_shards > 1 and self.method == "full_ft":
            fail("zero_shards", self.zero_shards, "1 with full_ft: ZeRO-3 is modelled for lora and lora_fa only "
                                                  "(the paper's §3.2 shards frozen base weights, adapters stay whole)")
        if self.quantization and self.method not in ("lora", "lora_fa"):
            fail("quantization", self.quantization, f"null with method={self.method!r}: nf4 is modelled for our "
                                                    "lora and lora_fa only (quantised weights cannot be trained)")
        if self.backend == "cuda" and (self.quantization or self.zero_shards > 1):
            fail("backend", self.backend, "simulate with quantization or zero_shards > 1, which are simulated "
                                          "only (backend='cuda' measures one unquantised GPU)")

    @property
    def lora_alpha(self) -> float:
        return float(4 * self.r if self.alpha is None else self.alpha)

    @property
    def capacity_bytes(self) -> int | None:
        return None if self.capacity_gb is None else int(self.capacity_gb * CAPACITY_UNIT)

    def config(self) -> dict[str, Any]:
        """The resolved configuration the record stores and hashes (the model by its name: the
        architecture comes with it, and is recorded as the record's `weights`)."""
        return {"experiment": self.experiment, "model": self.model.name, "method": self.method,
                "batch_size": self.batch_size, "seq_len": self.seq_len, "backend": self.backend, "r": self.r,
                "alpha": self.lora_alpha, "dropout": float(self.dropout), "adapter_dtype": self.adapter_dtype,
                "target_modules": (self.target_modules if isinstance(self.target_modules, str)
                                   else list(self.target_modules)),
                "num_adapted_layers": self.num_adapted_layers, "attn_implementation": self.attn_implementation,
                "gradient_checkpointing": bool(self.gradient_checkpointing), "quantization": self.quantization,
                "zero_shards": self.zero_shards, "target_len": self.target_len,
                "capacity_bytes": self.capacity_bytes,
                # added later: in the hash only when on, so the records made before it keep theirs
                **({"selective_recompute": True} if self.selective_recompute else {}),
                # a rehearsal's model is cut (lorafa.dryrun): its architecture is part of what it measured
                **({"dry_run": True, "arch": dict(self.model.arch)} if self.dry_run else {})}

    def run_id(self, digest: str) -> str:
        parts = (self.experiment.replace("/", "_"), self.model.name, self.method, f"b{self.batch_size}",
                 f"s{self.seq_len}", f"r{self.r}", digest)
        return "-".join(str(p) for p in parts)
