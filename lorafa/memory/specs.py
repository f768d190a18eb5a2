"""The paper's model architectures, kept in conf/model/*.yaml so nothing needs the hub.

    spec = load_model_spec("llama-7b")
    model = build_model(spec, device="meta")        # the real transformers class, no weights

A spec names a hub id (or a local `path`) for training, but its `arch` alone builds the
model: AutoConfig.for_model(**arch). When a hub or local config can be read,
`compare_with_reference` says where the two disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lorafa.paths import REPO_ROOT

FAMILIES = ("encoder", "seq2seq", "causal")
CONF_DIR = REPO_ROOT / "conf" / "model"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    arch: dict = field(default_factory=dict)
    hub_id: str | None = None
    path: str | None = None

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"ModelSpec.family={self.family!r} is invalid; allowed: {', '.join(FAMILIES)}")
        if "model_type" not in self.arch:
            raise ValueError(f"ModelSpec.arch of {self.name!r} lacks model_type")


def available_specs() -> list[str]:
    return sorted(p.stem for p in CONF_DIR.glob("*.yaml"))


def load_model_spec(name_or_path: str | Path | dict | ModelSpec) -> ModelSpec:
    """A spec from a conf/model name ("llama-7b"), a YAML path, or an already-parsed dict."""
    if isinstance(name_or_path, ModelSpec):
        return name_or_path
    if isinstance(name_or_path, dict):
        data = dict(name_or_path)
    else:
        path = Path(name_or_path)
        if path.suffix not in (".yaml", ".yml"):
            path = CONF_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise ValueError(f"model={str(name_or_path)!r} is unknown; allowed: {', '.join(available_specs())} "
                             f"or a path to a YAML file")
        data = yaml.safe_load(path.read_text())
    return ModelSpec(name=data["name"], family=data["family"], arch=dict(data["arch"]),
                     hub_id=data.get("hub_id"), path=data.get("path"))


def build_config(spec: ModelSpec, attn_implementation: str | None = None, **overrides):
    from transformers import AutoConfig

    arch = {**spec.arch, **overrides}
    config = AutoConfig.for_model(**arch)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    return config


def model_class(spec: ModelSpec):
    """The head the paper trains: classification (GLUE), translation (WMT16), causal LM (instructions)."""
    import transformers as tf

    return {"encoder": tf.AutoModelForSequenceClassification, "seq2seq": tf.AutoModelForSeq2SeqLM,
            "causal": tf.AutoModelForCausalLM}[spec.family]


def build_model(spec: ModelSpec | str, *, device="meta", dtype="bfloat16", attn_implementation: str | None = None,
                num_labels: int = 2, **overrides):
    """The real transformers model for `spec`, randomly initialised (or empty on the meta device).

    attn_implementation: "eager" | "sdpa" | None (transformers' default). A model that does not
    support the requested one (T5 has no sdpa) raises ValueError from transformers.
    """
    import torch

    spec = load_model_spec(spec)
    if spec.family == "encoder":
        overrides.setdefault("num_labels", num_labels)
    config = build_config(spec, **overrides)
    kwargs = {"dtype": getattr(torch, dtype) if isinstance(dtype, str) else dtype}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    with torch.device(device):
        return model_class(spec).from_config(config, **kwargs)


def compare_with_reference(spec: ModelSpec, reference) -> dict[str, tuple]:
    """{key: (ours, reference)} for every arch key whose value differs from `reference`.

    reference: a transformers config or a dict (e.g. a hub config.json). Keys the reference
    lacks are compared with its class defaults, as transformers itself would fill them.
    """
    ref = reference if isinstance(reference, dict) else reference.to_dict()
    defaults = build_config(ModelSpec(spec.name, spec.family, {"model_type": spec.arch["model_type"]})).to_dict()
    diffs = {}
    for key, ours in spec.arch.items():
        theirs = ref.get(key, defaults.get(key))
        if ours != theirs and not (isinstance(ours, float) and isinstance(theirs, float)
                                   and abs(ours - theirs) <= 1e-12 * max(abs(ours), 1.0)):
            diffs[key] = (ours, theirs)
    return diffs


def load_reference_config(spec: ModelSpec, local_files_only: bool = False) -> dict | None:
    """The hub's or the local directory's config.json as a dict, or None if neither is reachable.

    local_files_only: look in `path` and the local hub cache only (no network, no retries).
    """
    source = spec.path or spec.hub_id
    if not source:
        return None
    try:
        from transformers import AutoConfig

        local_only = local_files_only or spec.path is not None
        return AutoConfig.from_pretrained(source, local_files_only=local_only).to_dict()
    except Exception:  # offline, gated repo, no such directory: nothing to compare against
        return None
