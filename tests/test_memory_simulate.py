"""The fake-tensor simulator against exact measurement on tiny real models, and its options."""

import pytest
import torch

from lorafa import activation_report
from lorafa.memory.measure import measure_peak_memory
from lorafa.memory.point import MemoryPoint
from lorafa.memory.simulate import simulate_step
from lorafa.memory.workload import batch_maker, prepare_model
from lorafa.results import RunRecord

MiB = 2**20


@pytest.mark.parametrize("name, method, attn, dropout", [
    ("tiny-llama", "lora_fa", "sdpa", 0.1), ("tiny-llama", "lora", "eager", 0.1), ("tiny-llama", "full_ft", "sdpa", 0.0),
    ("tiny-roberta", "lora", "sdpa", 0.0), ("tiny-t5", "lora_fa", "eager", 0.1), ("minilm-l6", "lora_fa", "eager", 0.1),
    ("tiny-llama", "peft_lora_frozen_a", "sdpa", 0.1), ("tiny-roberta", "peft_lora", "eager", 0.1)])
def test_simulated_activations_equal_measured_on_cpu(name, method, attn, dropout):
    point = MemoryPoint(model=name, method=method, batch_size=2, seq_len=16, r=4, dropout=dropout,
                        attn_implementation=attn)
    make = batch_maker(point)
    real = prepare_model(point, device="cpu").train()
    measured = activation_report(real, **make("cpu")).total_bytes
    simulated = simulate_step(prepare_model(point), make, block=1).activation_bytes
    assert simulated == measured > 0


def sim(method="lora_fa", **kw):
    kw = {"model": "tiny-llama", "batch_size": 4, "seq_len": 64, "r": 8, "attn_implementation": "sdpa",
          "capacity_gb": None, **kw}
    return measure_peak_memory(method=method, **kw)


def test_ordering_and_breakdown_adds_up():
    ft, lora, fa = sim("full_ft"), sim("lora"), sim("lora_fa")
    assert fa.activation_bytes < lora.activation_bytes
    assert fa.peak_bytes < lora.peak_bytes < ft.peak_bytes
    for res in (ft, lora, fa):
        assert sum(res.breakdown.values()) == res.peak_bytes
        assert set(res.breakdown) == {"weights", "gradients", "optimizer_states", "activations", "other"}
    # Trainable parameters carry 12 bytes of fp32 state (master copy + two moments) each.
    n = sum(p.numel() for p in prepare_model(MemoryPoint("tiny-llama", "full_ft", 4, 64)).parameters())
    assert ft.persistent["optimizer_states"] == 12 * n


def test_lora_fa_dropout_keeps_no_mask_but_lora_does():
    assert sim("lora_fa", dropout=0.1).activation_bytes == sim("lora_fa").activation_bytes
    assert sim("lora", dropout=0.1).activation_bytes > sim("lora").activation_bytes


def test_peft_frozen_a_equals_lora_fa_without_dropout_but_keeps_the_mask_with_it():
    """PEFT's LoRA with requires_grad=False on lora_A: LoRA-FA's saving needs dropout 0."""
    peft0, fa0 = sim("peft_lora_frozen_a", seq_len=32), sim("lora_fa", seq_len=32)
    assert peft0.options["num_adapted_layers"] == fa0.options["num_adapted_layers"] == 28
    assert peft0.persistent == fa0.persistent and peft0.activation_bytes == fa0.activation_bytes
    peft, fa = sim("peft_lora_frozen_a", seq_len=32, dropout=0.1), sim("lora_fa", seq_len=32, dropout=0.1)
    assert fa.activation_bytes == fa0.activation_bytes
    # about one b·s·d_in dropout mask per adapted layer, bool as on CUDA
    masks = 4 * 32 * (6 * 128 + 344) * 4  # elements: q, k, v, o, gate, up (d_in 128), down (344); 4 blocks
    assert 0.9 * masks <= peft.activation_bytes - fa.activation_bytes <= masks


def test_memory_options():
    base = sim()
    # Checkpointing keeps only block inputs; the fp32 logits (32000-word vocabulary) remain.
    assert sim(gradient_checkpointing=True).activation_bytes < base.activation_bytes - 3 * MiB
    assert sim(attn_implementation="eager").activation_bytes > base.activation_bytes
    nf4 = sim(quantization="nf4")
    assert nf4.persistent["weights"] < base.persistent["weights"]
    sharded = sim(zero_shards=4)
    assert sharded.persistent["weights"] < base.persistent["weights"]
    assert sharded.persistent["optimizer_states"] == base.persistent["optimizer_states"]  # adapters stay whole
    two = sim(num_adapted_layers=2)
    assert two.options["num_adapted_layers"] == 2 and two.persistent["optimizer_states"] < base.persistent["optimizer_states"]


def test_nf4_weights_are_a_quarter_plus_constants():
    from lorafa.memory.nf4 import nf4_bytes

    assert nf4_bytes(4096 * 4096) == 4096 * 4096 // 2 + 4096 * 4096 // 64 + 4 * (4096 * 4096 // 64 // 256) + 1028
    assert nf4_bytes(128, double_quant=False) == 64 + 8


def test_record_and_oom_status():
    res = sim(capacity_gb=MiB / 1e9)
    assert res.status == "oom"
    rec = RunRecord(run_id="x", task=None, **res.record_fields())
    assert rec.memory_source == "simulated" and rec.status == "oom"
    assert rec.peak_memory_bytes == res.peak_bytes and rec.task is None
    assert set(rec.options) >= {"attn_implementation", "gradient_checkpointing", "quantization", "zero_shards",
                                "num_adapted_layers", "dropout", "adapter_dtype"}


@pytest.mark.parametrize("kw, match", [(dict(backend="tpu"), "simulate, cuda"), (dict(zero_shards=0), "zero_shards"),
                                       (dict(method="full_ft", zero_shards=2), "lora and lora_fa"),
                                       (dict(attn_implementation="flash"), "eager, sdpa"),
                                       (dict(quantization="int3"), "nf4"), (dict(batch_size=0), "batch_size"),
                                       (dict(num_adapted_layers=999), "1..28")])
def test_bad_input_names_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        sim(**kw)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_simulator_matches_cuda_meter():
    for method in ("lora", "lora_fa"):
        s, c = sim(method), sim(method, backend="cuda")
        assert c.activation_bytes == s.activation_bytes
        assert abs(c.peak_bytes - s.peak_bytes) <= 0.05 * c.peak_bytes


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_cuda_backend_says_it_needs_a_gpu():
    with pytest.raises(RuntimeError, match="backend='simulate'"):
        sim(backend="cuda")


def test_zero3_points_do_not_depend_on_the_garbage_collector():
    """The same ZeRO-3 configuration gives the same bytes whenever Python's gc runs (its stale
    parameter ids once let a new parameter pass for a freed adapter's: 16.5-17.3 GB for one
    LLaMA-7B point), and LoRA-FA's frozen A stays whole while the frozen base is sharded."""
    import gc

    results = []
    try:
        for threshold in (None, 1, 50):
            gc.collect()
            if threshold is None:
                gc.disable()
            else:
                gc.enable()
                gc.set_threshold(threshold, 1, 1)
            results.append(sim(zero_shards=4, seq_len=32))
    finally:
        gc.enable()
        gc.set_threshold(700, 10, 10)
    assert len({(r.peak_bytes, r.persistent["weights"]) for r in results}) == 1
    model = prepare_model(MemoryPoint("tiny-llama", "lora_fa", 4, 32, r=8))
    adapter = {id(p) for n, p in model.named_parameters() if "lora_" in n}
    expected = sum(p.numel() * p.element_size() if id(p) in adapter or p.requires_grad
                   else -(-p.numel() * p.element_size() // 4) for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    assert results[0].persistent["weights"] - buffers >= expected  # plus the gathered block in flight
