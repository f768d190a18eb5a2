"""lorafa.peft.use_lora_fa: a PEFT LoRA model turned into LoRA-FA keeps lorafa's bytes, gives PEFT's
frozen-A gradients, and stays a PEFT model (save, load in plain PEFT, merge, Trainer)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import model_inputs, tiny_llama, tiny_roberta
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from lorafa import AdapterConfig, activation_report, adapter_layers, add_adapters, load_adapters
from lorafa import peft as lorafa_peft
from lorafa.adapters import corrected_b_grad, effective_keep, keep_mask, masked
from lorafa.peft import lora_fa_layers, use_lora_fa

TARGETS = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
LLAMA_TARGETS = ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"]


def peft_model(base: nn.Module, dropout: float = 0.1, **extra) -> nn.Module:
    """PEFT LoRA on `base`; a classifier's head trains (SEQ_CLS), as with lorafa's add_adapters."""
    torch.manual_seed(0)  # the same A for every copy
    causal = "CAUSAL_LM" if "CausalLM" in type(base).__name__ else None
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, task_type=causal or "SEQ_CLS",
                        target_modules=LLAMA_TARGETS if causal else TARGETS, **extra)
    return get_peft_model(copy.deepcopy(base), config)


def randomise_b(model: nn.Module) -> None:
    """B starts at zero; give it values so outputs and dx depend on the adapter."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


class SeededDropout(nn.Module):
    """PEFT's dropout replaced by lorafa's mask for the next seed: both models then drop the same
    elements, so their gradients can be compared exactly."""

    def __init__(self, p: float, seeds):
        super().__init__()
        self.p, self.seeds = p, seeds

    def forward(self, x):
        keep = effective_keep(self.p)
        return masked(x, keep_mask(x.shape, keep, x.device, next(self.seeds))) / keep


def test_b_gradients_equal_peft_frozen_a_with_the_same_dropout_mask(monkeypatch):
    base = tiny_roberta()
    ours, ref = peft_model(base), peft_model(base)
    randomise_b(ours), randomise_b(ref)
    use_lora_fa(ours)
    for _, p in ref.named_parameters():
        if "lora_A" in _:
            p.requires_grad_(False)
    seeds = list(range(1000, 1000 + len(lora_fa_layers(ours))))
    monkeypatch.setattr(lorafa_peft, "draw_seed", iter(seeds).__next__)
    ref_seeds = iter(seeds)
    for module in ref.modules():
        if hasattr(module, "lora_dropout"):
            module.lora_dropout["default"] = SeededDropout(0.1, ref_seeds)
    inputs = model_inputs("roberta", batch=3, seq=11)
    labels = torch.tensor([0, 1, 1])
    grads = {}
    for name, model in (("ours", ours), ("ref", ref)):
        model.train()
        model(**inputs, labels=labels).loss.backward()
        grads[name] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads["ours"].keys() == grads["ref"].keys() and not any("lora_A" in n for n in grads["ours"])
    assert sum("lora_B" in n for n in grads["ours"]) == len(seeds) >= 6
    for n, g in grads["ours"].items():
        torch.testing.assert_close(g, grads["ref"][n], rtol=1e-5, atol=1e-7, msg=n)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_bytes_kept_equal_lorafa_lora_fa(dropout):
    """What PEFT's frozen A keeps (b·s·d_in dropout output and mask per layer at dropout 0.1) is gone:
    the converted PEFT model keeps exactly what lorafa's own LoRA-FA keeps."""
    base = tiny_roberta()
    inputs = model_inputs("roberta", batch=4, seq=16)
    converted = use_lora_fa(peft_model(base, dropout)).train()
    frozen_a = peft_model(base, dropout).train()
    for n, p in frozen_a.named_parameters():
        if "lora_A" in n:
            p.requires_grad_(False)
    ours = add_adapters(copy.deepcopy(base), AdapterConfig(method="lora_fa", r=4, alpha=8, dropout=dropout,
                                                           target_modules=TARGETS)).train()
    kept = {name: activation_report(m, **inputs).total_bytes for name, m in
            (("converted", converted), ("frozen_a", frozen_a), ("lorafa", ours))}
    assert kept["converted"] == kept["lorafa"]
    if dropout:
        assert kept["frozen_a"] > kept["converted"]


def test_saved_adapter_loads_in_plain_peft_and_in_lorafa_with_the_same_outputs(tmp_path):
    base = tiny_roberta()
    model = use_lora_fa(peft_model(base))
    randomise_b(model)
    model.save_pretrained(tmp_path / "adapter")
    inputs = model_inputs("roberta")
    expected = model.eval()(**inputs).logits
    plain = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "adapter").eval()
    assert not lora_fa_layers(plain)  # plain PEFT: no lorafa in the loaded model
    torch.testing.assert_close(plain(**inputs).logits, expected)
    # the classifier head is in modules_to_save of PEFT's SEQ_CLS models only; these share it
    ours = load_adapters(copy.deepcopy(base), tmp_path / "adapter", method="lora_fa").eval()
    torch.testing.assert_close(ours(**inputs).logits, expected)


def test_merge_and_unload_keeps_the_outputs():
    model = use_lora_fa(peft_model(tiny_llama(), dropout=0.1))
    randomise_b(model)
    inputs = model_inputs("llama")
    expected = model.eval()(**inputs).logits
    model.merge_adapter()
    torch.testing.assert_close(model(**inputs).logits, expected, rtol=1e-5, atol=1e-5)
    model.unmerge_adapter()
    torch.testing.assert_close(model(**inputs).logits, expected, rtol=1e-5, atol=1e-5)
    merged = model.merge_and_unload()
    torch.testing.assert_close(merged(**inputs).logits, expected, rtol=1e-5, atol=1e-5)


def test_a_transformers_trainer_trains_only_b(tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    model = use_lora_fa(peft_model(tiny_llama(), dropout=0.1))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(3, 120, (16, 12), generator=torch.Generator().manual_seed(0))
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=3, learning_rate=1e-2,
                             report_to="none", use_cpu=True, save_strategy="no", logging_strategy="no")
    Trainer(model=model, args=args, train_dataset=data).train()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_B" in n for n in changed)
    assert len(changed) == sum("lora_B" in n for n in before)
    model.save_pretrained(tmp_path / "adapter")  # trained with it, saved, loaded by plain PEFT: the same model
    plain = PeftModel.from_pretrained(tiny_llama(), tmp_path / "adapter").eval()
    inputs = model_inputs("llama")
    torch.testing.assert_close(plain(**inputs).logits, model.eval()(**inputs).logits)


def test_b_grad_correction_is_the_corrected_gradient():
    base = tiny_roberta()
    plain, corrected = use_lora_fa(peft_model(base, 0.0)), use_lora_fa(peft_model(base, 0.0), b_grad_correction=True)
    randomise_b(plain), randomise_b(corrected)
    inputs, labels = model_inputs("roberta"), torch.tensor([0, 1])
    for m in (plain, corrected):
        m.train()(**inputs, labels=labels).loss.backward()
    layer = next(iter(lora_fa_layers(plain).values()))
    name = next(n for n, m in plain.named_modules() if m is layer)
    got = dict(corrected.named_modules())[name].lora_B["default"].weight.grad
    want = corrected_b_grad(layer.lora_B["default"].weight.grad, layer.lora_A["default"].weight, layer.scaling["default"])
    torch.testing.assert_close(got, want)


def test_refuses_what_it_cannot_convert():
    with pytest.raises(TypeError, match="needs a PEFT LoRA model"):
        use_lora_fa(tiny_roberta())
    with pytest.raises(ValueError, match="already runs as"):
        use_lora_fa(peft_model(tiny_roberta(), use_dora=True))
    with pytest.raises(ValueError, match="no LoRA layer has an adapter named"):
        use_lora_fa(peft_model(tiny_roberta()), adapter_name="other")


def _corrected_pair(dropout: float = 0.0):
    """PEFT's LoRA model (for create_lorafa_optimizer) and lorafa's lora_fa_corrected model with the
    same base, A and B."""
    base = tiny_llama()
    theirs = peft_model(base, dropout)
    randomise_b(theirs)
    ours = add_adapters(copy.deepcopy(base), AdapterConfig(method="lora_fa", r=4, alpha=8, dropout=dropout,
                                                           target_modules=LLAMA_TARGETS, b_grad_correction=True))
    inner = theirs.base_model.model
    with torch.no_grad():
        for name, layer in adapter_layers(ours).items():
            layer.lora_A.weight.copy_(inner.get_submodule(name).lora_A["default"].weight)
            layer.lora_B.weight.copy_(inner.get_submodule(name).lora_B["default"].weight)
    return theirs, ours


def _steps(theirs, ours, their_opt, our_opt, n: int):
    for step in range(n):
        inputs = model_inputs("llama", batch=3, seq=10, seed=step)
        for model, opt in ((theirs, their_opt), (ours, our_opt)):
            opt.zero_grad()
            model.train()(**inputs, labels=inputs["input_ids"]).loss.backward()
            opt.step()


def _b_pairs(theirs, ours, their_opt, our_opt):
    """(name, our B, PEFT's B, our Adam first moment, PEFT's) per adapted layer."""
    inner = theirs.base_model.model
    for name, layer in adapter_layers(ours).items():
        their_b = inner.get_submodule(name).lora_B["default"].weight
        their_state = their_opt.state[f"base_model.model.{name}.lora"]
        yield name, layer.lora_B.weight, their_b, our_opt.state[layer.lora_B.weight]["exp_avg"], their_state["exp_avg_B"]


def test_lora_fa_corrected_with_adamw_equals_peft_create_lorafa_optimizer(monkeypatch):
    """lorafa's lora_fa_corrected (a gradient hook) + torch's AdamW against PEFT's LoraFAOptimizer,
    three steps. Read from PEFT 0.21's source, the two differ in exactly two places, both undone
    here: PEFT computes the corrected gradient under bf16 autocast wherever bf16 is available
    (this CPU included; see the next test), and its AdamW is transformers' old AdamW, whose eps
    sits outside the bias correction (eps 0 makes the two AdamWs the same function). PEFT adds
    no other state: its Adam moments are those of the corrected gradient, as ours."""
    import peft.optimizers.lorafa as peft_lorafa
    from peft.optimizers import create_lorafa_optimizer

    monkeypatch.setattr(peft_lorafa, "is_bf16_available", lambda *a, **k: False)
    theirs, ours = _corrected_pair()
    their_opt = create_lorafa_optimizer(theirs, r=4, lora_alpha=8, lr=1e-2)
    their_opt.param_groups[0]["eps"] = 0.0
    our_opt = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-2, eps=0.0, weight_decay=0.0)
    _steps(theirs, ours, their_opt, our_opt, 3)
    pairs = list(_b_pairs(theirs, ours, their_opt, our_opt))
    assert len(pairs) == len(adapter_layers(ours)) > 0
    for name, b, their_b, m, their_m in pairs:
        torch.testing.assert_close(m, their_m, rtol=1e-4, atol=1e-7, msg=name)
        torch.testing.assert_close(b, their_b, rtol=1e-4, atol=1e-6, msg=name)


def test_peft_computes_the_correction_in_bf16_where_available():
    """As shipped, PEFT's corrected gradient is a bf16 matmul on any machine with bf16 (a CPU too):
    the first Adam moment agrees with lorafa's float32 one to bf16 precision, not float32's."""
    import peft.optimizers.lorafa as peft_lorafa
    from peft.optimizers import create_lorafa_optimizer

    if not peft_lorafa.is_bf16_available():
        pytest.skip("PEFT computes in float32 here: the previous test covers it")
    theirs, ours = _corrected_pair()
    their_opt = create_lorafa_optimizer(theirs, r=4, lora_alpha=8, lr=1e-2)
    our_opt = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    _steps(theirs, ours, their_opt, our_opt, 1)
    worst = max(((m - their_m).abs().max() / their_m.abs().max()).item()
                for _, _, _, m, their_m in _b_pairs(theirs, ours, their_opt, our_opt))
    assert 1e-5 < worst < 2e-2  # bf16 keeps 8 bits of mantissa: about 0.4% per rounding


def test_bench_peft_tiny_shapes(tmp_path):
    """benchmarks/bench_peft.py at one layer and 2 x 16 tokens: its CSV has every variant, and the
    PEFT model after use_lora_fa keeps what lorafa's LoRA-FA keeps, less than PEFT's frozen A."""
    from benchmarks import bench_peft

    rows = {r["variant"]: r for r in bench_peft.main(["--layers", "1", "--batch", "2", "--seq", "16", "--reps", "1",
                                                      "--out", str(tmp_path / "peft.csv")])}
    assert set(rows) == set(bench_peft.VARIANTS) and (tmp_path / "peft.md").is_file()
    assert rows["peft_use_lora_fa"]["kept_mib"] == rows["lorafa_lora_fa"]["kept_mib"] < rows["peft_frozen_a"]["kept_mib"]
    assert all(r["step_s"] > 0 for r in rows.values())
