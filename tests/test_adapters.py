"""LoRA / LoRA-FA layers: gradients against plain autograd, dtypes, merging, initialisers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from lorafa import AdapterConfig
from lorafa.adapters import LoraLayer, draw_seed, effective_keep, keep_mask


def make_layer(method="lora_fa", d_in=24, d_out=20, r=4, dropout=0.0, dtype=torch.float64, **kw):
    torch.manual_seed(0)
    base = nn.Linear(d_in, d_out).to(dtype)
    cfg = AdapterConfig(method=method, r=r, alpha=8, dropout=dropout,
                        adapter_dtype="auto" if dtype != torch.float32 else "float32", **kw)
    layer = LoraLayer(base, cfg).train()
    with torch.no_grad():  # B starts at zero; give it values so every gradient path is exercised
        layer.lora_B.weight.normal_()
    return layer


def reference_forward(layer: LoraLayer, x, b_weight, mask):
    """Plain autograd: y = base(x) + s · (x ⊙ mask / keep) Aᵀ Bᵀ with an explicit mask."""
    h = x * mask / effective_keep(layer.dropout) if mask is not None else x
    return layer.base_layer(x) + (h @ layer.lora_A.weight.t() @ b_weight.t()) * layer.scaling


@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_lora_fa_gradients_match_plain_autograd(dropout, dtype, tol):
    layer = make_layer(dropout=dropout, dtype=dtype)
    x = torch.randn(3, 7, 24, dtype=dtype, requires_grad=True)
    torch.manual_seed(123)  # fixes the dropout seed drawn inside forward
    y = layer(x)
    grad_out = torch.randn_like(y)
    y.backward(grad_out)

    torch.manual_seed(123)
    mask = keep_mask(x.shape, effective_keep(dropout), x.device, draw_seed()).to(dtype) if dropout else None
    x_ref = x.detach().clone().requires_grad_(True)
    b_ref = layer.lora_B.weight.detach().clone().requires_grad_(True)
    y_ref = reference_forward(layer, x_ref, b_ref, mask)
    y_ref.backward(grad_out)

    scale = max(1.0, y_ref.abs().max().item())
    torch.testing.assert_close(y, y_ref, atol=tol * scale, rtol=tol)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=tol * scale, rtol=tol)
    torch.testing.assert_close(layer.lora_B.weight.grad, b_ref.grad, atol=tol * scale, rtol=tol)
    assert layer.lora_A.weight.grad is None and not layer.lora_A.weight.requires_grad
    assert layer.base_layer.weight.grad is None


def test_lora_dropout_on_the_cpu_is_the_same_mask_as_lora_fas():
    """Plain LoRA on a CPU draws its dropout mask as LoRA-FA does (keep_mask, 1/keep folded into
    the scalar): the same output and gradients as an explicit mask, A trained too."""
    layer = make_layer(method="lora", dropout=0.1)
    x = torch.randn(3, 7, 24, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(123)
    y = layer(x)
    grad_out = torch.randn_like(y)
    y.backward(grad_out)

    torch.manual_seed(123)
    mask = keep_mask(x.shape, effective_keep(0.1), x.device, draw_seed()).to(x.dtype)
    x_ref, a_ref, b_ref = (t.detach().clone().requires_grad_(True) for t in (x, layer.lora_A.weight, layer.lora_B.weight))
    h = x_ref * mask / effective_keep(0.1)
    y_ref = layer.base_layer(x_ref) + (h @ a_ref.t() @ b_ref.t()) * layer.scaling
    y_ref.backward(grad_out)
    assert 0 < int(mask.sum()) < mask.numel()  # some inputs dropped, not all
    for got, want in ((y, y_ref), (x.grad, x_ref.grad), (layer.lora_A.weight.grad, a_ref.grad),
                      (layer.lora_B.weight.grad, b_ref.grad)):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("autocast", [False, True])
def test_fused_linear_path_equals_the_general_path(dropout, autocast):
    """A frozen nn.Linear base runs inside LoRAFAFunction; a hooked one through the general path."""
    fused = make_layer(dropout=dropout, dtype=torch.float32)
    general = make_layer(dropout=dropout, dtype=torch.float32)
    general.load_state_dict(fused.state_dict())
    calls = []
    general.base_layer.register_forward_hook(lambda *a: calls.append(1))
    assert fused._owns_base_product((), {}) and not general._owns_base_product((), {})
    x = torch.randn(3, 5, 24)
    grads = []
    for layer in (fused, general):
        xi = x.clone().requires_grad_(True)
        torch.manual_seed(9)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = layer(xi)
        y.float().pow(2).sum().backward()
        grads.append((y.detach().float(), xi.grad, layer.lora_B.weight.grad))
    assert calls == [1]
    tol = 2e-2 if autocast else 1e-6
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)


def test_dropout_masks_differ_between_steps_and_follow_the_global_seed():
    layer = make_layer(dropout=0.5, dtype=torch.float32)
    x = torch.randn(2, 5, 24)
    torch.manual_seed(7)
    a, b = layer(x), layer(x)
    torch.manual_seed(7)
    a2 = layer(x)
    assert not torch.equal(a, b)
    assert torch.equal(a, a2)
    layer.eval()  # no dropout at evaluation
    assert torch.equal(layer(x), layer(x))


@pytest.mark.parametrize("shape", [(64, 512), (3, 7, 5)])  # numel a multiple of 4, and not
def test_keep_mask_is_bit_exact_and_has_the_right_rate(shape):
    cpu = torch.device("cpu")
    m1, m2 = keep_mask(shape, 0.9, cpu, 42), keep_mask(shape, 0.9, cpu, 42)
    assert m1.shape == shape and torch.equal(m1, m2)
    assert not torch.equal(m1, keep_mask(shape, 0.9, cpu, 43))
    assert set(m1.unique().tolist()) <= {0, 1}
    big = keep_mask((1000, 1000), 0.9, cpu, 7).double()
    assert abs(big.mean().item() - 0.9) < 0.002
    # neighbouring elements are independent (the four lanes of one random word)
    corr = torch.corrcoef(torch.stack([big.flatten()[:-1], big.flatten()[1:]]))[0, 1]
    assert abs(corr.item()) < 0.01
    assert abs(effective_keep(0.1) - 0.9) < 2**-15


def test_lora_matches_reference_and_trains_both_matrices():
    layer = make_layer(method="lora", dtype=torch.float64)
    x = torch.randn(2, 5, 24, dtype=torch.float64, requires_grad=True)
    layer(x).sum().backward()
    a = layer.lora_A.weight.detach().clone().requires_grad_(True)
    b = layer.lora_B.weight.detach().clone().requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    (layer.base_layer(x2) + (x2 @ a.t() @ b.t()) * layer.scaling).sum().backward()
    torch.testing.assert_close(layer.lora_A.weight.grad, a.grad)
    torch.testing.assert_close(layer.lora_B.weight.grad, b.grad)
    torch.testing.assert_close(x.grad, x2.grad)


def test_lora_fa_refuses_a_trainable_a():
    layer = make_layer(dtype=torch.float32)
    layer.lora_A.weight.requires_grad_(True)
    with pytest.raises(RuntimeError, match="frozen"):
        layer(torch.randn(2, 24))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_lora_fa_in_low_precision_tracks_float64(dtype):
    ref = make_layer(dropout=0.0, dtype=torch.float64)
    low = make_layer(dropout=0.0, dtype=torch.float32)
    low.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
    low = low.to(dtype)
    x = torch.randn(4, 6, 24, dtype=torch.float64)
    xr, xl = x.clone().requires_grad_(True), x.to(dtype).requires_grad_(True)
    gy = torch.randn(4, 6, 20, dtype=torch.float64)
    ref(xr).backward(gy)
    yl = low(xl)
    assert yl.dtype == dtype
    yl.backward(gy.to(dtype))
    tol = {torch.float32: 1e-5, torch.bfloat16: 5e-2, torch.float16: 1e-2}[dtype]
    rel = lambda a, b: ((a.double() - b).norm() / b.norm()).item()  # noqa: E731
    assert rel(yl, ref(xr).detach()) < tol
    assert rel(xl.grad, xr.grad) < tol
    assert rel(low.lora_B.weight.grad, ref.lora_B.weight.grad) < tol


@pytest.mark.parametrize("method", ["lora", "lora_fa"])
def test_autocast_bf16_computes_the_adapter_in_bf16(method):
    layer = make_layer(method=method, dtype=torch.float32)
    layer.base_layer.to(torch.bfloat16)  # paper setting: bf16 base, fp32 adapters (PEFT's default)
    x = torch.randn(3, 5, 24, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert layer.lora_B.weight.grad.dtype == torch.float32
    assert x.grad is not None and x.grad.dtype == torch.float32
    with torch.no_grad():
        exact = layer.base_layer(x.bfloat16()).float() + layer.scaling * (x @ layer.lora_A.weight.t() @ layer.lora_B.weight.t())
    assert ((y.float() - exact).norm() / exact.norm()).item() < 2e-2


@pytest.mark.parametrize("method", ["lora", "lora_fa"])
@pytest.mark.parametrize("base_kind", ["linear", "conv1d"])
def test_merge_equals_unmerged_and_unmerge_restores(method, base_kind):
    torch.manual_seed(0)
    base = nn.Linear(24, 20) if base_kind == "linear" else Conv1D(20, 24)
    if base_kind == "conv1d":
        nn.init.normal_(base.weight, std=0.2)
    layer = LoraLayer(base, AdapterConfig(method=method, r=4, alpha=8)).eval()
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    w0 = base.weight.detach().clone()
    x = torch.randn(3, 24)
    y = layer(x)
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(layer(x), y, atol=1e-5, rtol=0)
    torch.testing.assert_close(layer(x), base(x))  # merged forward is the base forward alone
    layer.unmerge()
    torch.testing.assert_close(base.weight, w0, atol=1e-6, rtol=0)
    torch.testing.assert_close(layer(x), y, atol=1e-6, rtol=0)


def test_conv1d_adapter_equals_linear_adapter_with_transposed_weight():
    torch.manual_seed(0)
    conv = Conv1D(20, 24)
    nn.init.normal_(conv.weight)
    lin = nn.Linear(24, 20)
    with torch.no_grad():
        lin.weight.copy_(conv.weight.t())
        lin.bias.copy_(conv.bias)
    la = LoraLayer(conv, AdapterConfig(r=4))
    lb = LoraLayer(lin, AdapterConfig(r=4))
    with torch.no_grad():
        lb.lora_A.weight.copy_(la.lora_A.weight)
        la.lora_B.weight.normal_()
        lb.lora_B.weight.copy_(la.lora_B.weight)
    assert la.fan_in_fan_out and not lb.fan_in_fan_out
    x = torch.randn(2, 3, 24)
    torch.testing.assert_close(la(x), lb(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("init", ["kaiming_uniform", "std_normal", "all_one", "orthogonal"])
def test_initialisers(init):
    layer = LoraLayer(nn.Linear(256, 64), AdapterConfig(r=16, init_a=init))
    a = layer.lora_A.weight.detach()
    assert torch.count_nonzero(layer.lora_B.weight) == 0
    if init == "kaiming_uniform":  # a=sqrt(5): bound = 1/sqrt(fan_in), as PEFT and nn.Linear
        bound = 1 / math.sqrt(256)
        assert a.abs().max() <= bound and a.abs().max() > 0.9 * bound
        assert abs(a.std().item() - bound / math.sqrt(3)) < 0.1 * bound
    elif init == "std_normal":
        assert abs(a.std().item() - 1.0) < 0.05 and abs(a.mean().item()) < 0.05
    elif init == "all_one":
        assert torch.equal(a, torch.ones_like(a))
    else:
        torch.testing.assert_close(a @ a.t(), torch.eye(16), atol=1e-5, rtol=0)


def test_scaling_and_rslora():
    assert AdapterConfig(r=16, alpha=32).scaling == 2.0
    assert AdapterConfig(r=16, alpha=32, rslora=True).scaling == 8.0
    layer = LoraLayer(nn.Linear(8, 8), AdapterConfig(r=4, alpha=8, rslora=True))
    assert layer.scaling == 4.0


def test_b_grad_correction_applies_the_2025_formula():
    """Corrected dB = (1/s²) · dB · pinv(A Aᵀ) (PEFT's LoraFAOptimizer), as a hook."""
    plain = make_layer(dtype=torch.float32)
    corrected = make_layer(dtype=torch.float32, b_grad_correction=True)
    corrected.load_state_dict(plain.state_dict())
    x = torch.randn(3, 7, 24)
    gy = torch.randn(3, 7, 20)
    plain(x).backward(gy)
    corrected(x).backward(gy)
    a = plain.lora_A.weight.detach().double()
    expected = (plain.lora_B.weight.grad.double() @ torch.linalg.pinv(a @ a.t())) / plain.scaling**2
    torch.testing.assert_close(corrected.lora_B.weight.grad.double(), expected, rtol=1e-4, atol=1e-6)
    # no extra activation cost: the hook acts on the gradient, after backward has run
    assert not torch.allclose(corrected.lora_B.weight.grad, plain.lora_B.weight.grad)
