"""QLoRA's NF4 base weights, as bitsandbytes stores them, for memory accounting only.

bitsandbytes' Linear4bit keeps the weight packed two 4-bit codes a byte, plus one absmax
per block of 64 weights; with double quantisation (the paper's setting) those absmax are
themselves 8-bit, with one fp32 absmax per 256 of them and a 256-entry fp32 code table.
Forward and backward dequantise the weight into a temporary 16-bit matrix and keep
nothing else (bitsandbytes' MatMul4Bit saves only the quantised state).

`NF4Linear` reproduces exactly those sizes and that lifetime; it does not reproduce the
values (this repository does not depend on bitsandbytes), so use it in the simulator only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BLOCK = 64  # weights per absmax (bitsandbytes' default blocksize for 4-bit)
BLOCK2 = 256  # absmax per second-level absmax (double quantisation)


def nf4_bytes(numel: int, double_quant: bool = True) -> int:
    """Bytes bitsandbytes keeps for a 4-bit weight of `numel` elements."""
    blocks = -(-numel // BLOCK)
    packed = -(-numel // 2)
    if not double_quant:
        return packed + 4 * blocks
    return packed + blocks + 4 * -(-blocks // BLOCK2) + 4 * 256 + 4  # codes, absmax8, absmax2, code table, offset


class _Dequantized(torch.autograd.Function):
    """y = x·Wᵀ with W dequantised on the fly, twice (forward and backward), never saved."""

    @staticmethod
    def forward(ctx, x, packed, shape, bias):
        w = torch.empty(shape, dtype=x.dtype, device=x.device)  # stands for dequantize_4bit(packed)
        ctx.shape = shape
        return F.linear(x, w, bias)

    @staticmethod
    def backward(ctx, grad_out):
        w = torch.empty(ctx.shape, dtype=grad_out.dtype, device=grad_out.device)
        return grad_out @ w, None, None, None


class NF4Linear(nn.Module):
    """A frozen linear layer with bitsandbytes' NF4 storage (sizes and lifetimes only)."""

    def __init__(self, linear: nn.Linear, double_quant: bool = True):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        numel = self.in_features * self.out_features
        device = linear.weight.device
        # One uint8 parameter holding packed codes and quantisation constants, as Params4bit
        # (plus its quant_state) do; frozen, so it is never trained.
        self.weight = nn.Parameter(torch.empty(nf4_bytes(numel, double_quant), 1, dtype=torch.uint8, device=device),
                                   requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        self.compute_dtype = linear.weight.dtype

    def forward(self, x):
        return _Dequantized.apply(x, self.weight, (self.out_features, self.in_features), self.bias)


def quantize_nf4(model: nn.Module, skip=(), double_quant: bool = True) -> nn.Module:
    """Swap every nn.Linear except the output embeddings and `skip` for NF4Linear, in place.

    bitsandbytes (via transformers) likewise leaves the LM head / classifier in 16 bits.
    """
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and module is not out_emb \
                and not any(name == s or name.startswith(s + ".") for s in skip):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, NF4Linear(module, double_quant))
    return model
