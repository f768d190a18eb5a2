"""A dry run of a paper-scale configuration: the same code path, cut to minutes on a CPU.

    spec, notes = rehearsal_spec(spec, root)      # spec: the paper run's lorafa.spec.RunSpec
    lorafa.recipe.run(spec)                       # one optimizer step, a handful of evaluations

What a GPU box without this project's test machines would meet first (a config that does not
compose, a hub model loaded with the wrong head, a task's preprocessing or metric that breaks
on the real tokenizer, a precision setting, a record that cannot be written) shows up here,
because nothing else changes:
- the weights: the model's own architecture (conf/model) with random weights, saved once as a
  from_pretrained directory under <root>/models/ and loaded from there as `model.path`, so that
  from_pretrained, the task's head and the record's weight provenance all run. 7B causal LMs
  keep their real layer shapes but only `CAUSAL_LAYERS` layers (7B parameters do not fit
  this machine's memory). The tokenizer: RoBERTa's byte-level BPE from the data directory;
  T5 and LLaMA, whose SentencePiece models are on the hub only, get the project's BPE
  (models/tiny-bpe), the vocabulary kept at the model's size where it is larger;
- the schedule: one optimizer step on `TRAIN_EXAMPLES` examples, evaluation on
  `EVAL_EXAMPLES` (instruction tasks: of their held-out rows), generation (WMT16, CoT) cut to
  `MAX_NEW_TOKENS` tokens, MMLU to `MMLU_SUBJECTS` subjects (none where the run skips it) of
  `MMLU_EXAMPLES` questions;
- the precision: what the CPU can run of the paper's setting (`cpu_precision`): on a CPU
  with bf16 units bf16 stays bf16 (torch autocasts on CPU) and fp16, whose autocast is
  CUDA-only in transformers' Trainer, becomes bf16; on a CPU without them both become fp32,
  because emulated bf16 is ~30x slower (RoBERTa-base, one step on 2 x 128 tokens, AVX2: 56 s
  against 1.9 s in fp32), which would make the dry run take hours; there the bf16 path is
  run by tests/test_pipeline.py on a tiny model instead. The mapping is printed;
- the records: `dry_run` in the configuration (so no hash equals a real run's), under a
  results root of their own; the analysis drops them wherever they are.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

from lorafa.models import ModelSpec, local_bpe_tokenizer
from lorafa.paths import REPO_ROOT, data_dir

CAUSAL_LAYERS = 2
TRAIN_BATCH = 2
TRAIN_EXAMPLES = 4
EVAL_BATCH = 4
EVAL_EXAMPLES = 8
MAX_LENGTH = 128
MAX_NEW_TOKENS = 16
MMLU_SUBJECTS = ["abstract_algebra", "anatomy"]
MMLU_EXAMPLES = 2
PROJECT_BPE = REPO_ROOT / "models" / "tiny-bpe"
# What the hub holds for each family, so that loading it with the task's head goes through
# from_pretrained as a downloaded checkpoint would (a fresh head, the body from the file).
HUB_CLASSES = {"encoder": "AutoModelForMaskedLM", "seq2seq": "AutoModelForSeq2SeqLM", "causal": "AutoModelForCausalLM"}


def rehearsal_spec(spec, root: str | Path):
    """The dry run of `spec` (a RunSpec) under `root`, and the changes it made, in words."""
    import torch

    root = Path(root)
    model, notes = rehearsal_weights(spec.model, root / "models")
    trainer, data = spec.trainer, spec.data
    precision = trainer.precision if torch.cuda.is_available() else cpu_precision(trainer.precision, notes)
    if not torch.cuda.is_available():
        model = dataclasses.replace(model, dtype=cpu_dtype(model.dtype, notes))
    notes.append(f"precision {precision}, model dtype {model.dtype}")
    trainer = dataclasses.replace(
        trainer, max_steps=1, batch_size=min(trainer.batch_size, TRAIN_BATCH), grad_accum=1,
        eval_batch_size=min(trainer.eval_batch_size, EVAL_BATCH), logging_steps=1,
        eval_steps=1 if trainer.eval_steps else None,  # Figure 4's periodic evaluation still runs, once
        max_new_tokens=min(trainer.max_new_tokens, MAX_NEW_TOKENS), precision=precision)
    data = dataclasses.replace(
        data, max_train_samples=TRAIN_EXAMPLES, max_eval_samples=EVAL_EXAMPLES,
        max_length=min(data.max_length, MAX_LENGTH), max_target_length=min(data.max_target_length, MAX_LENGTH),
        mmlu_subjects=list(MMLU_SUBJECTS if data.mmlu_subjects is None else data.mmlu_subjects)[:len(MMLU_SUBJECTS)],
        mmlu_max_examples=MMLU_EXAMPLES, cot_max_new_tokens=min(data.cot_max_new_tokens, MAX_NEW_TOKENS))
    notes.append(f"1 optimizer step on {TRAIN_EXAMPLES} examples (batch {trainer.batch_size}), evaluation on "
                 f"{EVAL_EXAMPLES}, sequences <= {data.max_length} tokens, generation <= {trainer.max_new_tokens}")
    return dataclasses.replace(spec, model=model, trainer=trainer, data=data, results_root=str(root),
                               dry_run=True), notes


def cpu_precision(precision: str, notes: list[str], bf16_units: bool | None = None) -> str:
    """What a CPU runs of a GPU run's precision; why it differs is appended to `notes`."""
    if precision == "fp32":
        return precision
    if bf16_units is None:
        bf16_units = has_bf16_units()
    if not bf16_units:
        notes.append(f"precision {precision} -> fp32 (this CPU has no bf16 units: emulated bf16 is ~30x slower)")
        return "fp32"
    if precision == "fp16":
        notes.append("precision fp16 -> bf16 (fp16 autocast needs CUDA)")
    return "bf16"


def cpu_dtype(dtype: str, notes: list[str], bf16_units: bool | None = None) -> str:
    """The weights' dtype a CPU computes in at a usable speed (16-bit base weights, as LLaMA's
    are loaded, would run every matmul in emulated bf16 on a CPU without bf16 units)."""
    if dtype not in ("bfloat16", "float16") or (has_bf16_units() if bf16_units is None else bf16_units):
        return dtype
    notes.append(f"model dtype {dtype} -> float32 (this CPU has no bf16 units)")
    return "float32"


def has_bf16_units() -> bool:
    """Whether oneDNN runs bf16 natively here (AVX-512 BF16 / AMX), as torch itself asks."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a private op: absent means unknown, so the safe answer
        return False


def rehearsal_weights(spec: ModelSpec, cache: Path) -> tuple[ModelSpec, list[str]]:
    """`spec` pointing at a from_pretrained directory of its architecture with random weights
    (built and saved the first time), and what differs from the real model, in words."""
    arch, notes = dict(spec.arch), []
    layer_key = "num_hidden_layers" if "num_hidden_layers" in arch else None
    if spec.family == "causal" and layer_key and arch[layer_key] > CAUSAL_LAYERS:
        notes.append(f"{spec.name}: {CAUSAL_LAYERS} of its {arch[layer_key]} layers (real layer shapes)")
        arch[layer_key] = CAUSAL_LAYERS
    tokenizer, tokenizer_name = rehearsal_tokenizer(spec)
    arch.update(vocab_size=max(arch.get("vocab_size", 0), len(tokenizer)), pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if spec.family == "seq2seq":
        arch["decoder_start_token_id"] = tokenizer.pad_token_id
    notes.append(f"{spec.name}: random weights, tokenizer {tokenizer_name}")
    digest = hashlib.sha256(json.dumps(arch, sort_keys=True).encode()).hexdigest()[:8]
    folder = cache / f"{spec.name}-{digest}"
    if not (folder / "config.json").is_file():
        _save_random_model(arch, spec.family, tokenizer, folder)
    # relative to the checkout where it lies there (models.resolve reads it so): the path is part of
    # the run's configuration, and so of its hash, which must not depend on the machine
    folder = folder.resolve()
    path = folder.relative_to(REPO_ROOT).as_posix() if REPO_ROOT in folder.parents else str(folder)
    return dataclasses.replace(spec, arch=arch, path=path, package=None, tokenizer=None), notes


def rehearsal_tokenizer(spec: ModelSpec):
    """(tokenizer, what it is): the hub's where it is on this machine, else a stand-in."""
    from transformers import AutoTokenizer

    if spec.arch.get("model_type") == "roberta":
        return roberta_bpe(), "GPT-2's byte-level BPE (data directory) with RoBERTa's special ids"
    tokenizer = AutoTokenizer.from_pretrained(str(PROJECT_BPE))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, f"the project's BPE ({PROJECT_BPE.relative_to(REPO_ROOT)}; the hub's SentencePiece is unreachable)"


def roberta_bpe(root: Path | None = None):
    """RoBERTa's tokenizer as far as this machine has it: GPT-2's byte-level BPE (the same
    merges, so the same segmentation) with RoBERTa's special tokens where RoBERTa has them
    (<s> 0, <pad> 1, </s> 2, <unk> 3, <mask> 50264): position ids and padding follow the model's
    config as with the hub's tokenizer. The other ids differ from the hub's (fairseq's order)."""
    from transformers import RobertaTokenizer

    gpt2 = (root or data_dir()) / "tokenizers" / "gpt2"
    if not (gpt2 / "encoder.json").is_file():
        local_bpe_tokenizer(root)  # raises, naming the folder it tried
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({token: i + 4 for token, i in json.loads((gpt2 / "encoder.json").read_text()).items()})
    vocab["<mask>"] = max(vocab.values()) + 4  # 50264: RoBERTa keeps 3 unused ids before it
    merges = [tuple(line.split()) for line in (gpt2 / "vocab.bpe").read_text(encoding="utf-8").splitlines()[1:] if line]
    return RobertaTokenizer(vocab=vocab, merges=merges)


def _save_random_model(arch: dict, family: str, tokenizer, folder: Path) -> None:
    """Written to a temporary folder first, so an interrupted save leaves nothing half-made."""
    import torch
    import transformers
    from transformers import AutoConfig

    print(f"[dry-run] building {folder.name} (random weights) ...", flush=True)
    # Causal LMs as the hub keeps them (16-bit), the rest in float32.
    dtype = torch.bfloat16 if family == "causal" else torch.float32
    model = getattr(transformers, HUB_CLASSES[family]).from_config(AutoConfig.for_model(**arch), dtype=dtype)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def rehearsal_point(point):
    """The dry run of a memory point (a lorafa.memory.point.MemoryPoint): the GPU meter's step
    (backend cuda), run on the CPU when there is no GPU, at batch <= 2 and sequence <= 64 on
    the same architecture (7B causal LMs cut to `CAUSAL_LAYERS` layers, Figure 2b's adapted
    layer counts cut in proportion), and what changed, in words. ValueError for the points the
    meter cannot take (nf4, ZeRO-3: simulated only)."""
    if point.quantization or point.zero_shards > 1:
        raise ValueError("simulated only: backend cuda measures one unquantised GPU (no dry run of it)")
    model, notes, n_adapted = point.model, [], point.num_adapted_layers
    layers = model.arch.get("num_hidden_layers")
    if model.family == "causal" and layers and layers > CAUSAL_LAYERS:
        model = dataclasses.replace(model, arch={**model.arch, "num_hidden_layers": CAUSAL_LAYERS})
        notes.append(f"{model.name}: {CAUSAL_LAYERS} of its {layers} layers (real layer shapes)")
        if n_adapted is not None:
            n_adapted = max(1, round(n_adapted * CAUSAL_LAYERS / layers))
    short = lambda n: None if n is None else min(n, 64)  # noqa: E731
    adapter_dtype = point.adapter_dtype
    if not _has_gpu():  # the step's bf16 weights and activations (lorafa.memory.measure)
        adapter_dtype = cpu_dtype(adapter_dtype, notes)
    rehearsal = dataclasses.replace(point, model=model, backend="cuda", batch_size=min(point.batch_size, 2),
                                    adapter_dtype=adapter_dtype,
                                    seq_len=short(point.seq_len), target_len=short(point.target_len),
                                    num_adapted_layers=n_adapted, capacity_gb=None, dry_run=True)
    notes.append(f"backend cuda's step{'' if _has_gpu() else ' on the CPU (no GPU)'}, batch "
                 f"{rehearsal.batch_size}, sequence {rehearsal.seq_len}, random weights")
    return rehearsal, notes


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()
