"""Adapters on disk in PEFT's format: our round trip, PEFT loading ours, ours loading PEFT's."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

from lorafa import AdapterConfig, add_adapters, adapter_layers, load_adapters, save_adapters
from tests.conftest import TINY_MODELS, model_inputs


def trained_like(kind: str, method: str, **kw):
    """A tiny model with adapters whose B (and head) are non-zero, as after training."""
    model = add_adapters(TINY_MODELS[kind](), AdapterConfig(method=method, r=4, alpha=8, **kw)).eval()
    torch.manual_seed(5)
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            layer.lora_B.weight.normal_(std=0.2)
        for name in getattr(model, "lorafa_modules_to_save", ()):
            for p in model.get_submodule(name).parameters():
                p.add_(torch.randn_like(p) * 0.1)
    return model


def logits(model, kind):
    with torch.no_grad():
        return model(**model_inputs(kind)).logits


@pytest.mark.parametrize("kind", list(TINY_MODELS))
@pytest.mark.parametrize("method", ["lora", "lora_fa"])
def test_round_trip_and_peft_loads_ours(tmp_path, kind, method):
    model = trained_like(kind, method, dropout=0.05, init_a="orthogonal")
    expected = logits(model, kind)
    save_adapters(model, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}

    ours = load_adapters(TINY_MODELS[kind](), tmp_path).eval()
    torch.testing.assert_close(logits(ours, kind), expected, atol=0, rtol=0)
    assert ours.lorafa_config.method == method and ours.lorafa_config.init_a == "orthogonal"
    if method == "lora_fa":  # training can go on with A frozen
        assert all(not l.lora_A.weight.requires_grad for l in adapter_layers(ours).values())

    peft_model = PeftModel.from_pretrained(TINY_MODELS[kind](), str(tmp_path)).eval()
    torch.testing.assert_close(logits(peft_model, kind), expected, atol=1e-6, rtol=1e-6)


def test_saved_keys_and_config_follow_peft(tmp_path):
    model = trained_like("roberta", "lora_fa")
    save_adapters(model, tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "SEQ_CLS" and cfg["r"] == 4 and cfg["lora_alpha"] == 8
    assert cfg["modules_to_save"] == ["classifier"]
    keys = set(load_file(tmp_path / "adapter_model.safetensors"))
    assert "base_model.model.roberta.encoder.layer.0.attention.self.query.lora_A.weight" in keys
    assert "base_model.model.classifier.out_proj.weight" in keys
    assert len([k for k in keys if "lora_" in k]) == 2 * len(adapter_layers(model))


@pytest.mark.parametrize("kind", ["roberta", "llama", "smollm"])
def test_peft_lora_adapter_loads_into_ours(tmp_path, kind):
    base = TINY_MODELS[kind]()
    targets = ["query", "value"] if kind == "roberta" else ["q_proj", "v_proj", "down_proj"]
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=16, target_modules=targets,
                                                 task_type="SEQ_CLS" if kind == "roberta" else "CAUSAL_LM"))
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.add_(torch.randn_like(p) * 0.2)
    peft_model.eval()
    expected = logits(peft_model, kind)
    peft_model.save_pretrained(str(tmp_path))

    ours = load_adapters(TINY_MODELS[kind](), tmp_path).eval()
    torch.testing.assert_close(logits(ours, kind), expected, atol=1e-6, rtol=1e-6)
    assert ours.lorafa_config.method == "lora" and ours.lorafa_config.scaling == 4.0
    as_fa = load_adapters(TINY_MODELS[kind](), tmp_path, method="lora_fa").eval()
    torch.testing.assert_close(logits(as_fa, kind), expected, atol=1e-6, rtol=1e-6)
    assert all(not l.lora_A.weight.requires_grad for l in adapter_layers(as_fa).values())


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_adapters(TINY_MODELS["llama"](), tmp_path)
    save_adapters(trained_like("llama", "lora"), tmp_path)
    with pytest.raises(ValueError, match="shape"):  # a base model of another width
        from transformers import LlamaConfig, LlamaForCausalLM
        other = LlamaForCausalLM(LlamaConfig(vocab_size=120, hidden_size=48, intermediate_size=88,
                                             num_hidden_layers=2, num_attention_heads=4))
        load_adapters(other, tmp_path)
    with pytest.raises(ValueError, match="no adapters"):
        save_adapters(add_adapters(TINY_MODELS["llama"](), AdapterConfig(method="full_ft")), tmp_path)
