"""Table 1's formulas against the simulator on a single linear layer, and the GPT-level totals."""

import pytest
import torch
from torch import nn

from lorafa import AdapterConfig, add_adapters
from lorafa.memory.analytic import gpt_model_memory, linear_layer_memory
from lorafa.memory.simulate import simulate_step


class OneLinear(nn.Module):
    def __init__(self, d_in, d_out):
        super().__init__()
        self.proj = nn.Linear(d_in, d_out, bias=False, dtype=torch.bfloat16)

    def forward(self, x):
        return self.proj(x)


@pytest.mark.parametrize("method", ["full_ft", "lora", "lora_fa"])
@pytest.mark.parametrize("d_in, d_out", [(64, 64), (64, 256)])
def test_table1_equals_simulated_linear_layer(method, d_in, d_out):
    b, s, r = 3, 10, 4
    with torch.device("meta"):
        model = OneLinear(d_in, d_out)
    add_adapters(model, AdapterConfig(method=method, r=r, adapter_dtype="bfloat16", target_modules=["proj"]))
    step = simulate_step(model, lambda dev: {"x": torch.empty(b, s, d_in, dtype=torch.bfloat16, device=dev)},
                         loss_fn=lambda out: out.float().sum(), block=1)
    table1 = linear_layer_memory(method, d_in, d_out, r, b, s)
    assert step.activation_bytes == table1["activations"]
    assert step.persistent == {k: table1[k] for k in ("weights", "gradients", "optimizer_states")}


@pytest.mark.parametrize("method", ["full_ft", "lora", "lora_fa"])
def test_gpt_model_is_six_linear_layers_per_block(method):
    d, L, r, b, s = 256, 3, 8, 2, 32
    shapes = [(d, d)] * 4 + [(d, 4 * d), (4 * d, d)]  # q, k, v, o, fc1, fc2
    layers = [linear_layer_memory(method, i, o, r, b, s) for i, o in shapes]
    gpt = gpt_model_memory(method, d, L, r, b, s)
    for key in ("trainable_params", "weights", "gradients", "optimizer_states"):
        assert gpt[key] == L * sum(layer[key] for layer in layers)
    # q, k and v share one input, which is stored once.
    shared = {"full_ft": 2 * 2 * b * s * d, "lora": 2 * 2 * b * s * d, "lora_fa": 0}[method]
    assert gpt["activations"] == L * (sum(layer["activations"] for layer in layers) - shared)


def test_paper_statements():
    d, L, r = 4096, 32, 64
    ft, lora, fa = (gpt_model_memory(m, d, L, r, 1, 1) for m in ("full_ft", "lora", "lora_fa"))
    n, n_r = 12 * d * d * L, 18 * d * r * L
    assert ft["gradients"] + ft["optimizer_states"] == 14 * n
    assert lora["weights"] - 2 * n + lora["gradients"] + lora["optimizer_states"] == 16 * n_r
    assert fa["weights"] - 2 * n + fa["gradients"] + fa["optimizer_states"] == 9 * n_r
    with pytest.raises(ValueError, match="full_ft, lora, lora_fa"):
        linear_layer_memory("qlora", d, d, r, 1, 1)
