"""AdapterConfig: what to adapt and how. Validated on construction, so bad input fails early."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

from lorafa.validation import fail, is_number, require, require_choice

METHODS = ("full_ft", "lora", "lora_fa")
INITS = ("kaiming_uniform", "std_normal", "all_one", "orthogonal")
TARGET_PRESETS = ("all-linear", "qv")
ADAPTER_DTYPES = ("float32", "bfloat16", "float16", "float64", "auto")


def _fail(field_name: str, value, allowed: str) -> None:
    fail(f"AdapterConfig.{field_name}", value, allowed)


@dataclass
class AdapterConfig:
    """Configuration of LoRA / LoRA-FA adapters.

    method: "lora" trains A and B; "lora_fa" freezes A and trains B, saving only x·Aᵀ for
        backward; "full_ft" adds nothing and trains every parameter.
    r, alpha: rank and scale; scaling = alpha / r (alpha / sqrt(r) with rslora).
    dropout: probability applied to the adapter's input, as in LoRA.
    target_modules: "all-linear" (every linear inside the transformer blocks), "qv" (query
        and value projections, LoRA-qv), or module-name suffixes such as ["q_proj", "v_proj"].
    init_a: initialiser of A (B always starts at zero, so the adapted model starts equal
        to the base model).
    modules_to_save: modules trained in full beside the adapters; None means the task head
        of a sequence-classification model, as in the paper.
    adapter_dtype: dtype of A and B. "float32" (PEFT's default for half-precision bases)
        keeps optimizer updates exact; "auto" uses the base layer's dtype.
    b_grad_correction: the 2025 LoRA-FA revision's gradient for B,
        (1/scaling²) · g_B · pinv(A Aᵀ), applied by a gradient hook (lora_fa only).
    """

    method: str = "lora_fa"
    r: int = 8
    alpha: float = 16
    dropout: float = 0.0
    target_modules: str | Sequence[str] = "all-linear"
    init_a: str = "kaiming_uniform"
    rslora: bool = False
    b_grad_correction: bool = False
    modules_to_save: Sequence[str] | None = None
    adapter_dtype: str = "float32"
    exclude_modules: Sequence[str] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        require_choice("AdapterConfig.method", self.method, METHODS)
        require(not isinstance(self.r, bool) and isinstance(self.r, int) and self.r > 0, "AdapterConfig.r", self.r,
                "an integer > 0")
        require(is_number(self.alpha) and self.alpha > 0, "AdapterConfig.alpha", self.alpha, "a finite number > 0")
        require(is_number(self.dropout) and 0.0 <= self.dropout < 1.0, "AdapterConfig.dropout", self.dropout,
                "a number in [0, 1)")
        require_choice("AdapterConfig.init_a", self.init_a, INITS)
        require_choice("AdapterConfig.adapter_dtype", self.adapter_dtype, ADAPTER_DTYPES)
        if isinstance(self.target_modules, str):
            if self.target_modules not in TARGET_PRESETS:
                _fail("target_modules", self.target_modules,
                      f"one of the presets {', '.join(TARGET_PRESETS)} or a list of module-name suffixes")
        else:
            targets = list(self.target_modules)
            if not targets or not all(isinstance(t, str) and t for t in targets):
                _fail("target_modules", self.target_modules,
                      f"one of the presets {', '.join(TARGET_PRESETS)} or a non-empty list of module-name suffixes")
            self.target_modules = tuple(targets)
        if self.b_grad_correction and self.method != "lora_fa":
            _fail("b_grad_correction", self.b_grad_correction, "True only with method='lora_fa'")
        if self.modules_to_save is not None:
            self.modules_to_save = tuple(self.modules_to_save)
        self.exclude_modules = tuple(self.exclude_modules)
        self.dropout = float(self.dropout)

    @property
    def scaling(self) -> float:
        return self.alpha / math.sqrt(self.r) if self.rslora else self.alpha / self.r

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("target_modules", "modules_to_save", "exclude_modules"):
            if isinstance(d[k], tuple):
                d[k] = list(d[k])
        return d
