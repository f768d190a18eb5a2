"""Models and tokenizers: from a local directory, the hub, or (no checkpoint at all) a config.

The `model` config group gives each model a hub id, an optional local `path` and its
architecture (`arch`, transformers config kwargs). A local path or the hub is loaded with
from_pretrained; a model with neither is built from `arch` with random weights and the
GPT-2 byte-level BPE tokenizer from the data directory (the tiny models of scale=mini
before they are pretrained, and the tests).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM,
                          AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase)

from lorafa.paths import REPO_ROOT, data_dir

FAMILIES = ("encoder", "seq2seq", "causal")
DTYPES = ("float32", "bfloat16", "float16")
# Which model families can serve which task families.
COMPATIBLE = {
    "classification": ("encoder", "causal"),
    "regression": ("encoder", "causal"),
    "seq2seq": ("seq2seq",),
    "instruction": ("causal",),
    "mmlu": ("causal",),
}


@dataclass
class ModelSpec:
    name: str
    family: str
    hub_id: str | None = None
    path: str | None = None
    tokenizer: str | None = None  # a tokenizer directory for models built from `arch`
    arch: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float32"
    attn_implementation: str | None = None

    def validate(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"model.family={self.family!r} is invalid; allowed: {', '.join(FAMILIES)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"model.dtype={self.dtype!r} is invalid; allowed: {', '.join(DTYPES)}")
        for key in ("path", "tokenizer"):
            value = getattr(self, key)
            if value is not None and not _resolve(value).is_dir():
                raise ValueError(f"model.{key}={value!r} is not a directory (tried {_resolve(value)})")
        if self.path is None and self.hub_id is None and not self.arch.get("model_type"):
            raise ValueError(f"model {self.name!r} needs model.path, model.hub_id or model.arch.model_type")

    @property
    def source(self) -> str | None:
        """Where from_pretrained reads: the local directory, else the hub id; None: build from arch."""
        return self.path or self.hub_id


def _source(source: str) -> str:
    """A local directory (relative to the repository) if it exists, else a hub id."""
    local = _resolve(source)
    return str(local) if local.is_dir() else source


def _resolve(path: str) -> Path:
    """Relative paths in model configs are relative to the repository."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else REPO_ROOT / p


def check_compatible(model: ModelSpec, task_family: str, task_name: str) -> None:
    allowed = COMPATIBLE[task_family]
    if model.family not in allowed:
        raise ValueError(f"model={model.name!r} is a {model.family} model, but task={task_name!r} "
                         f"({task_family}) needs a model of family: {', '.join(allowed)}")


def local_bpe_tokenizer(root: Path | None = None) -> PreTrainedTokenizerBase:
    """RoBERTa's byte-level BPE (GPT-2's vocabulary and merges) from the data directory."""
    from transformers import RobertaTokenizer

    folder = (root or data_dir()) / "tokenizers" / "gpt2"
    vocab, merges = folder / "encoder.json", folder / "vocab.bpe"
    if not vocab.is_file() or not merges.is_file():
        raise FileNotFoundError(f"no tokenizer at {folder} (encoder.json, vocab.bpe); set LORAFA_DATA_DIR")
    return RobertaTokenizer(vocab=str(vocab), merges=str(merges))


def load_tokenizer(spec: ModelSpec) -> PreTrainedTokenizerBase:
    if spec.source:
        tokenizer = AutoTokenizer.from_pretrained(_source(spec.source))
    elif spec.tokenizer:
        tokenizer = AutoTokenizer.from_pretrained(str(_resolve(spec.tokenizer)))
    else:
        tokenizer = local_bpe_tokenizer()
    if tokenizer.pad_token is None:  # LLaMA ships without one
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _auto_class(family: str, task_family: str):
    if task_family in ("classification", "regression"):
        return AutoModelForSequenceClassification
    return AutoModelForSeq2SeqLM if family == "seq2seq" else AutoModelForCausalLM


def load_model(spec: ModelSpec, task_family: str, tokenizer, num_labels: int | None = None):
    """The model for a task: the family's Auto class with the task's head."""
    auto = _auto_class(spec.family, task_family)
    kwargs: dict[str, Any] = {}
    if auto is AutoModelForSequenceClassification:
        kwargs["num_labels"] = num_labels or 1
        if task_family == "regression":
            kwargs["problem_type"] = "regression"
    if spec.attn_implementation:
        kwargs["attn_implementation"] = spec.attn_implementation
    dtype = getattr(torch, spec.dtype)
    if spec.source:
        model = auto.from_pretrained(_source(spec.source), dtype=dtype, **kwargs)
    else:
        arch = dict(spec.arch)
        # The architecture's vocabulary must match the tokenizer actually used.
        arch.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                    bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        if spec.family == "seq2seq":
            arch["decoder_start_token_id"] = tokenizer.pad_token_id
        config = AutoConfig.for_model(**arch, **kwargs)
        model = auto.from_config(config, dtype=dtype)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model
