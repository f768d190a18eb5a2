"""Selective activation recomputation (lorafa.recompute): the same outputs and gradients as the
stock model, for less kept for backward."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration
from transformers.loss.loss_utils import ForCausalLMLoss

from conftest import TINY_MODELS
from lorafa import AdapterConfig, activation_report, add_adapters
from lorafa.recompute import chunked_causal_lm_loss, enable_selective_recompute, stock_class


def tiny_t5_gated(seed: int = 0) -> T5ForConditionalGeneration:
    """T5 v1.1 / Flan-T5's feed-forward: gated GELU."""
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=120, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
                   dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, feed_forward_proj="gated-gelu")
    return T5ForConditionalGeneration(cfg).eval()


BUILDERS = {**{k: TINY_MODELS[k] for k in ("roberta", "bert", "t5", "llama", "smollm")}, "t5_gated": tiny_t5_gated}
EXPECTED = {"roberta": (5, 0, 0), "bert": (5, 0, 0), "t5": (12, 0, 0), "t5_gated": (12, 4, 0), "llama": (5, 2, 1),
            "smollm": (5, 2, 1)}


def batch(kind: str) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 120, (2, 9), generator=g)
    if kind in ("roberta", "bert"):
        return {"input_ids": ids, "labels": torch.tensor([0, 1])}
    if kind.startswith("t5"):
        return {"input_ids": ids, "labels": torch.randint(3, 120, (2, 5), generator=g)}
    labels = ids.clone()
    labels[0, :3] = -100  # prompt tokens carry no loss, as in instruction tuning
    return {"input_ids": ids, "labels": labels}


def adapted(kind: str, method: str, dtype: torch.dtype):
    model = BUILDERS[kind]()
    if method == "full_ft":
        add_adapters(model, AdapterConfig(method="full_ft"))
    else:
        add_adapters(model, AdapterConfig(method=method, r=4, alpha=8, dropout=0.1))
        for name, p in model.named_parameters():  # B starts at zero: give it values, so every gradient flows
            if name.endswith("lora_B.weight"):
                torch.nn.init.normal_(p, std=0.1)
    return model.to(dtype).train()


def loss_and_grads(model, inputs):
    torch.manual_seed(7)  # the adapters' dropout draws the same masks in both runs
    model.zero_grad(set_to_none=True)
    loss = model(**inputs).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("method", ["full_ft", "lora", "lora_fa"])
@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_gradients_equal_the_stock_models(kind, method, dtype, tol):
    stock = adapted(kind, method, dtype)
    model = copy.deepcopy(stock)
    counts = enable_selective_recompute(model)
    assert (counts["norms"], counts["gated_mlps"], counts["causal_lm_loss"]) == EXPECTED[kind]
    inputs = batch(kind)
    ref_loss, ref = loss_and_grads(stock, inputs)
    loss, grads = loss_and_grads(model, inputs)
    assert relative_error(loss, ref_loss) <= tol
    assert grads.keys() == ref.keys() and len(ref) > 0
    for name in ref:
        assert relative_error(grads[name], ref[name]) <= tol, name


def test_evaluation_and_generation_use_the_stock_forward():
    stock = adapted("llama", "lora_fa", torch.float32).eval()
    model = copy.deepcopy(stock)
    enable_selective_recompute(model)
    inputs = batch("llama")
    with torch.no_grad():
        a, b = stock(**inputs), model(**inputs)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.loss, b.loss)
    assert model(input_ids=inputs["input_ids"]).logits is not None  # no labels: logits as usual
    assert model(**inputs).logits is None  # training: the loss only, by chunks
    out = model.generate(inputs["input_ids"][:1, :4], max_new_tokens=3, do_sample=False)
    assert torch.equal(out, stock.generate(inputs["input_ids"][:1, :4], max_new_tokens=3, do_sample=False))


def test_enabling_twice_changes_nothing_more_and_keeps_class_names():
    model = adapted("llama", "lora_fa", torch.float32)
    first = enable_selective_recompute(model)
    assert enable_selective_recompute(model) == {"norms": 0, "gated_mlps": 0, "causal_lm_loss": 0}
    assert sum(first.values()) == 8
    assert type(model).__name__ == "LlamaForCausalLM" and stock_class(model).__name__ == "LlamaForCausalLM"
    assert type(copy.deepcopy(model)) is type(model)


@pytest.mark.parametrize("chunk", [1, 4, 1000])
@pytest.mark.parametrize("num_items", [None, 11])
def test_chunked_loss_is_transformers_causal_lm_loss(chunk, num_items):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 7, 16, generator=g, dtype=torch.float64, requires_grad=True)
    head = torch.nn.Linear(16, 50, bias=False).double()
    labels = torch.randint(0, 50, (3, 7), generator=g)
    labels[1, :4] = -100
    ref = ForCausalLMLoss(head(hidden), labels, vocab_size=50, num_items_in_batch=num_items)
    ours = chunked_causal_lm_loss(hidden, head, labels, num_items_in_batch=num_items, chunk_tokens=chunk)
    assert abs(ours.item() - ref.item()) <= 1e-12 * abs(ref.item())
    (g_ref,) = torch.autograd.grad(ref, hidden)
    (g_ours,) = torch.autograd.grad(ours, hidden)
    assert relative_error(g_ours, g_ref) <= 1e-12


def kept_shapes(model, inputs) -> list[tuple]:
    shapes = []

    def pack(t):
        shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(**inputs)
    del out
    return shapes


def test_llama_7b_shaped_layers_keep_less():
    """The issue's measurement: 2 layers of LLaMA-7B's shape, bf16, sdpa, LoRA-FA r 64 on all
    linears, dropout 0. Per token, each RMSNorm keeps its bf16 input (8 KiB), each MLP gate and up
    (43 KiB), and nothing of the vocabulary's size is kept."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=2,
                      num_attention_heads=32, num_key_value_heads=32, attn_implementation="sdpa")
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("meta"):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(default)
    model = model.to_empty(device="cpu")
    for p in model.parameters():  # values do not matter to what is kept
        p.data.zero_()
    add_adapters(model, AdapterConfig(method="lora_fa", r=64, alpha=128, dropout=0.0, adapter_dtype="bfloat16"))
    model.train()
    tokens = 16
    ids = torch.randint(3, 32000, (1, tokens))
    inputs = {"input_ids": ids, "labels": ids}
    before = activation_report(model, **inputs)
    assert any(32000 in s for s in kept_shapes(model, inputs))  # stock: the logits are kept
    enable_selective_recompute(model)
    after = activation_report(model, **inputs)
    kib = lambda name, rep: rep.by_module.get(name, 0) / tokens / 1024  # noqa: E731
    for layer in range(2):
        for norm in ("input_layernorm", "post_attention_layernorm"):
            name = f"model.layers.{layer}.{norm}"
            # the first norm reads the frozen embeddings: nothing to keep, before or after
            assert (kib(name, before) >= 16 or name == "model.layers.0.input_layernorm") and kib(name, after) <= 8.2, name
        mlp = f"model.layers.{layer}.mlp"
        # the MLP and its activation module; its adapters (x·Aᵀ, 0.125 KiB each) are counted apart
        mlp_kib = lambda rep: sum(kib(n, rep) for n in rep.by_module if n == mlp or n.startswith(mlp + ".act"))  # noqa: E731
        assert mlp_kib(before) >= 64 and mlp_kib(after) <= 43.1
    assert kib("model.layers.0.input_layernorm", after) == 0 and kib("model.norm", after) <= 8.2
    assert not any(32000 in s for s in kept_shapes(model, inputs))
    assert after.total_bytes < before.total_bytes


@pytest.mark.parametrize("task,model,extra", [
    ("glue/mrpc", "tiny-roberta", []),
    ("alpaca", "tiny-llama", ["data.mmlu_subjects=[anatomy]", "data.mmlu_max_examples=4", "data.max_length=128"]),
])
def test_the_same_seeded_run_gives_the_same_metrics(tmp_path, task, model, extra):
    """trainer.selective_recompute through the whole pipeline: a different config (its own
    record), the same training and the same metrics."""
    from test_pipeline import run_tiny

    plain = run_tiny(tmp_path / "plain", task, model, extra=extra)
    recomputed = run_tiny(tmp_path / "recomputed", task, model, extra=[*extra, "trainer.selective_recompute=true"])
    assert plain.status == recomputed.status == "ok"
    assert recomputed.config["trainer"]["selective_recompute"] is True
    assert "selective_recompute" not in plain.config["trainer"]  # records from before the option keep their hash
    assert recomputed.metrics.keys() == plain.metrics.keys()
    for key, value in plain.metrics.items():
        assert recomputed.metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
