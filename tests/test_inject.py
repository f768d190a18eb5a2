"""add_adapters on real (tiny) transformers models: targets, presets, what trains, # TPs."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from lorafa import AdapterConfig, add_adapters, adapter_layers, count_trainable, merge_adapters, unmerge_adapters
from tests.conftest import TINY_MODELS, model_inputs, tiny_llama, tiny_roberta

ALL_LINEAR = {  # linears per block x blocks: what "all-linear" must find
    "roberta": 6 * 2,                # query key value attention.output intermediate output
    "bert": 6 * 2,                   # the same names (the pooler is the head's, not a block's)
    "t5": 2 * (4 + 2) + 2 * (8 + 2),  # encoder: attn q,k,v,o + wi,wo; decoder: self + cross attn + wi,wo
    "llama": 7 * 2,                  # q k v o gate up down
    "smollm": 7 * 2,                 # the same, with grouped k v and tied embeddings (lm_head stays out)
    "gpt2": 4 * 2,                   # c_attn c_proj (attn) c_fc c_proj (mlp), Conv1D
}


@pytest.mark.parametrize("kind", list(TINY_MODELS))
def test_all_linear_adapts_every_block_linear_and_nothing_else(kind):
    model = add_adapters(TINY_MODELS[kind](), AdapterConfig(method="lora_fa", r=4))
    layers = adapter_layers(model)
    assert len(layers) == ALL_LINEAR[kind]
    for name in layers:
        assert "lm_head" not in name and "classifier" not in name and "embed" not in name
    for name, m in model.named_modules():  # every remaining linear is a head or inside an adapter
        if isinstance(m, (nn.Linear, Conv1D)) and not any(name.startswith(n + ".") for n in layers):
            assert name in ("lm_head", "classifier.dense", "classifier.out_proj", "classifier", "bert.pooler.dense"), name


@pytest.mark.parametrize("kind,names", [("roberta", {"query", "value"}), ("bert", {"query", "value"}), ("t5", {"q", "v"}),
                                         ("llama", {"q_proj", "v_proj"}), ("smollm", {"q_proj", "v_proj"})])
def test_qv_preset(kind, names):
    model = add_adapters(TINY_MODELS[kind](), AdapterConfig(method="lora", r=4, target_modules="qv"))
    found = {n.rsplit(".", 1)[-1] for n in adapter_layers(model)}
    assert found == names


@pytest.mark.parametrize("method", ["lora", "lora_fa"])
def test_trainable_parameters_are_the_papers_tps(method):
    """# TPs: lora (d_in+d_out)·r and lora_fa d_out·r per adapted layer, plus the head."""
    r = 4
    model = tiny_roberta()
    head = sum(p.numel() for p in model.classifier.parameters())
    add_adapters(model, AdapterConfig(method=method, r=r))
    expected = head + sum((l.in_features + l.out_features) * r if method == "lora" else l.out_features * r
                          for l in adapter_layers(model).values())
    assert count_trainable(model) == expected
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_B" in n or n.startswith("classifier.") or (method == "lora" and "lora_A" in n) for n in trainable)
    assert any(n.startswith("classifier.") for n in trainable)  # the head trains, as in the paper


def test_full_ft_trains_everything_and_adds_nothing():
    model = tiny_roberta()
    for p in model.parameters():
        p.requires_grad_(False)
    total = sum(p.numel() for p in model.parameters())
    add_adapters(model, AdapterConfig(method="full_ft"))
    assert count_trainable(model) == total and not adapter_layers(model)


@pytest.mark.parametrize("kind", list(TINY_MODELS))
@pytest.mark.parametrize("method", ["lora", "lora_fa"])
def test_adapted_model_starts_equal_to_base_and_merge_equals_unmerged(kind, method):
    base = TINY_MODELS[kind]()
    inputs = model_inputs(kind)
    with torch.no_grad():
        y0 = base(**inputs).logits
    model = add_adapters(base, AdapterConfig(method=method, r=4, dropout=0.1)).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, y0)  # B = 0
        for layer in adapter_layers(model).values():
            layer.lora_B.weight.normal_(std=0.1)
        y = model(**inputs).logits
        assert not torch.allclose(y, y0)
        merge_adapters(model)
        torch.testing.assert_close(model(**inputs).logits, y, atol=1e-5, rtol=1e-5)
        unmerge_adapters(model)
        torch.testing.assert_close(model(**inputs).logits, y, atol=1e-5, rtol=1e-5)


def test_lora_fa_model_trains_with_an_optimizer_that_never_sees_a():
    model = add_adapters(tiny_llama(), AdapterConfig(method="lora_fa", r=4, dropout=0.1)).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    a_ids = {id(l.lora_A.weight) for l in adapter_layers(model).values()}
    assert not a_ids & {id(p) for g in opt.param_groups for p in g["params"]}
    a_before = {n: l.lora_A.weight.detach().clone() for n, l in adapter_layers(model).items()}
    ids = model_inputs("llama", batch=4, seq=12)["input_ids"]
    losses = []
    for _ in range(15):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1
    for n, l in adapter_layers(model).items():
        assert torch.equal(l.lora_A.weight, a_before[n]) and l.lora_A.weight.grad is None


def test_explicit_suffixes_and_exclusions():
    model = add_adapters(tiny_llama(), AdapterConfig(r=2, target_modules=["q_proj", "down_proj"],
                                                     exclude_modules=["layers.1.mlp.down_proj"]))
    assert sorted(adapter_layers(model)) == ["model.layers.0.mlp.down_proj", "model.layers.0.self_attn.q_proj",
                                             "model.layers.1.self_attn.q_proj"]


def test_adding_twice_is_refused():
    model = add_adapters(tiny_llama(), AdapterConfig(r=2))
    with pytest.raises(ValueError, match="already has adapters"):
        add_adapters(model, AdapterConfig(r=2))


def test_bert_trains_its_whole_head_pooler_and_classifier():
    """BERT's pooler (dense + tanh) and classifier are RoBERTa's classifier.dense and out_proj."""
    model = add_adapters(TINY_MODELS["bert"](), AdapterConfig(method="lora_fa", r=4))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    head = {n for n in trainable if not "lora_B" in n}
    assert head == {"bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"}
    assert count_trainable(model) == 32 * 32 + 32 + 32 * 2 + 2 + sum(
        layer.out_features * 4 for layer in adapter_layers(model).values())
