"""The paper's analytic memory model (Section 2.2, Table 1, Section 3.1), in bytes.

16-bit mixed precision: 2-byte weights, gradients and activations; 12 bytes of optimizer
state per trainable parameter (fp32 master copy and AdamW's two fp32 moments).
Adapters are counted in 16 bits, as the paper does. No torch needed.
"""

from __future__ import annotations

from lorafa.validation import require_choice

METHODS = ("full_ft", "lora", "lora_fa")
KEYS = ("trainable_params", "weights", "gradients", "optimizer_states", "activations")


def _check(method: str) -> None:
    require_choice("method", method, METHODS)


def linear_layer_memory(method: str, d_in: int, d_out: int, r: int, batch_size: int, seq_len: int) -> dict:
    """Table 1 for one linear layer (d_in → d_out; the table's d_in = d_out = d).

    Activations: Full-FT keeps the input X (2bsd_in); LoRA keeps X for dA and XA for dB
    (2bsd_in + 2bsr); LoRA-FA keeps only XA (2bsr).
    """
    _check(method)
    bs = batch_size * seq_len
    base = d_in * d_out
    adapter = (d_in + d_out) * r
    trainable = {"full_ft": base, "lora": adapter, "lora_fa": d_out * r}[method]
    weights = 2 * base if method == "full_ft" else 2 * (base + adapter)
    activations = {"full_ft": 2 * bs * d_in, "lora": 2 * bs * d_in + 2 * bs * r, "lora_fa": 2 * bs * r}[method]
    return {"trainable_params": trainable, "weights": weights, "gradients": 2 * trainable,
            "optimizer_states": 12 * trainable, "activations": activations}


def gpt_model_memory(method: str, d: int, n_layers: int, r: int, batch_size: int, seq_len: int) -> dict:
    """Section 2.2 / 3.1 for a GPT-type model of L blocks (4 d×d attention linears, d→4d→d FFN).

    n = 12d²L base parameters, n_r = 18drL LoRA parameters (half of them, B, for LoRA-FA).
    Activations are the linear layers' inputs only, as in the paper: 14bsdL for Full-FT,
    14bsdL + 12bsrL for LoRA, 12bsrL for LoRA-FA; attention, norms and GeLU come on top.
    """
    _check(method)
    n, n_r = 12 * d * d * n_layers, 18 * d * r * n_layers
    bs = batch_size * seq_len
    trainable = {"full_ft": n, "lora": n_r, "lora_fa": n_r // 2}[method]
    weights = 2 * n if method == "full_ft" else 2 * n + 2 * n_r
    activations = {"full_ft": 14 * bs * d * n_layers, "lora": 14 * bs * d * n_layers + 12 * bs * r * n_layers,
                   "lora_fa": 12 * bs * r * n_layers}[method]
    return {"trainable_params": trainable, "weights": weights, "gradients": 2 * trainable,
            "optimizer_states": 12 * trainable, "activations": activations}
