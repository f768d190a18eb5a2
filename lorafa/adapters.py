"""LoRA and LoRA-FA adapter layers.

    y = base(x) + scaling · B(A(dropout(x)))

`lora` is plain autograd: backward keeps dropout(x) (b×s×d_in), the dropout mask and x·Aᵀ.
On a CPU its mask comes from LoRA-FA's generator (`keep_mask`) rather than F.dropout's
bernoulli_, which there costs more than the rest of the adapter (MiniLM-L6, a training step
on 16 x 60 tokens: LoRA 0.64 s without dropout, 0.97 s with F.dropout's); so a CPU step time
compares the adapters, not two random number generators. On a GPU, and in the memory
simulator, it is F.dropout, as in PEFT.
`lora_fa` freezes A and runs the adapter through `LoRAFAFunction`, which keeps only
x·Aᵀ (b×s×r) and an integer seed from which it regenerates the dropout mask in backward.
Freezing A alone (what PEFT and other implementations do) is not enough: the dropout op
still saves a b×s×d_in tensor for backward whenever dropout > 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import unset_fake_temporarily

from lorafa.config import INITS, AdapterConfig
from lorafa.validation import fail

_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps", "hpu")


# --------------------------------------------------------------------------- initialisers

def init_lora_a(weight: torch.Tensor, kind: str) -> None:
    """Initialise A (shape r × d_in, PEFT's layout) in place. B always starts at zero."""
    with torch.no_grad():
        if kind == "kaiming_uniform":  # PEFT's and nn.Linear's default
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        elif kind == "std_normal":
            nn.init.normal_(weight, mean=0.0, std=1.0)
        elif kind == "all_one":
            nn.init.ones_(weight)
        elif kind == "orthogonal":
            # orthogonal_ needs a float32 (or float64) tensor; rows come out orthonormal.
            w = torch.empty(weight.shape, dtype=torch.float32, device=weight.device)
            nn.init.orthogonal_(w)
            weight.copy_(w)
        else:
            fail("init_a", kind, ", ".join(INITS))


# --------------------------------------------------------------------------- the LoRA-FA function

def draw_seed() -> int:
    """A dropout seed from torch's CPU generator, so torch.manual_seed makes runs repeatable.

    Under a fake-tensor memory simulator every op returns a fake tensor; the seed is a
    plain number, so it is drawn outside fake mode.
    """
    with unset_fake_temporarily():
        return int(torch.randint(0, 2**62, (), dtype=torch.int64))


_MASK_BITS = 15


def effective_keep(dropout: float) -> float:
    """The keep probability the mask realises: 1 - dropout rounded to a multiple of 2⁻¹⁵."""
    return round((1.0 - dropout) * 2**_MASK_BITS) / 2**_MASK_BITS


def keep_mask(shape, keep: float, device: torch.device, seed: int) -> torch.Tensor:
    """The 0/1 dropout keep-mask (int16) for `seed`: the same seed gives the same mask, bit for bit.

    Regenerating the mask is LoRA-FA's price for not storing it, so it must cost less than
    the dA product it skips. Drawing one 64-bit random number per four elements and
    comparing 15-bit lanes is about 4x cheaper on CPU than bernoulli_ and stays in int16,
    whose product with a float tensor is fast (a bool mask is not, on CPU). The keep
    probability is quantised to 2⁻¹⁵ (see effective_keep). Apply it with `masked`: a float
    tensor times an int16 one is a slow mixed-dtype loop on CPU (SmolLM2's shapes: 3.2 ns an
    element, against 0.1 to convert the mask and 0.1 to multiply two floats).
    """
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    numel = math.prod(shape)
    bits = torch.empty((numel + 3) // 4, dtype=torch.int64, device=device).random_(generator=gen)
    lanes = bits.view(torch.int16)[:numel].view(shape)
    # random_ leaves the top bit of each int64 zero, so only the low 15 bits of a lane are used.
    return lanes.bitwise_and_(2**_MASK_BITS - 1).lt_(round(keep * 2**_MASK_BITS))


def masked(t: torch.Tensor, mask: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """t · mask for keep_mask's int16 0/1 mask, multiplied in t's dtype (see keep_mask)."""
    mask = mask.to(t.dtype)
    return t.mul_(mask) if inplace else t * mask


class DropoutMask(torch.autograd.Function):
    """h · mask for plain LoRA on a CPU: backward keeps the int16 mask, as `h * mask` would,
    but both products run in h's dtype (see keep_mask); autograd's own mixed-dtype product
    costs more than the rest of the adapter."""

    @staticmethod
    def forward(ctx, h, mask):
        ctx.save_for_backward(mask)
        return masked(h, mask)

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return masked(grad, mask), None


class LoRAFAFunction(torch.autograd.Function):
    """out = base + scaling · dropout(x) · Aᵀ · Bᵀ, keeping only x·Aᵀ for backward.

    Written by hand because autograd cannot be told to drop the dropout mask and recompute
    it. The mask is regenerated from `seed` in backward; the 1/keep factor of inverted
    dropout is folded into the scalar, so the mask itself is pure 0/1 and x·Aᵀ is saved
    without it. A must be frozen: dA would need x, which is exactly what is not kept.

    The base output comes in one of two ways. `base_out` given: any base layer ran
    already, its own backward yields its part of dx, and this function returns the adapter's
    part. `weight` (and `bias`) given instead, for a frozen nn.Linear: the base product runs
    here too, and backward writes the adapter's part of dx into the base's dx in place (one
    addmm with dropout 0), sparing autograd a b×s×d_in buffer and a pass to add the two.

    Shapes: x (..., d_in), base_out (..., d_out), weight (d_out, d_in), lora_a (r, d_in),
    lora_b (d_out, r).
    """

    @staticmethod
    def forward(ctx, x, base_out, weight, bias, lora_a, lora_b, scaling: float, dropout: float, seed,
                compute_dtype):
        if lora_a.requires_grad:
            raise RuntimeError("LoRA-FA needs A frozen (requires_grad=False): dA would need the input x, which it does not keep")
        owned = base_out is None  # the base product is ours: the adapter's term can be added in place
        if owned:
            base_out = F.linear(x, weight, bias)  # under autocast exactly as the base layer would run
        keep = effective_keep(dropout)
        scale = scaling / keep if seed is not None else scaling
        xc = x.to(compute_dtype)
        if seed is not None:
            xc = masked(xc, keep_mask(x.shape, keep, x.device, seed))
        a = lora_a.to(compute_dtype)
        b = lora_b.to(compute_dtype)
        xa = F.linear(xc, a)  # (..., r): the only activation kept
        del xc
        d_out = base_out.shape[-1]
        if base_out.dtype == compute_dtype:  # one fused kernel: base_out + scale · xa·Bᵀ
            if owned:  # in place: out-of-place addmm first copies base_out (a b×s×d_out pass)
                out = base_out
                out.view(-1, d_out).addmm_(xa.reshape(-1, xa.shape[-1]), b.t(), alpha=scale)
            else:
                out = torch.addmm(base_out.reshape(-1, d_out), xa.reshape(-1, xa.shape[-1]), b.t(), alpha=scale)
                out = out.view(base_out.shape)
        else:
            out = base_out + (F.linear(xa, b) * scale).to(base_out.dtype)
        ctx.save_for_backward(xa, weight, lora_a, lora_b)
        ctx.scale, ctx.keep, ctx.seed = scale, keep, seed
        ctx.compute_dtype, ctx.base_dtype, ctx.x_dtype, ctx.x_shape = compute_dtype, base_out.dtype, x.dtype, x.shape
        return out

    @staticmethod
    def backward(ctx, grad_out):
        xa, weight, lora_a, lora_b = ctx.saved_tensors
        cd = ctx.compute_dtype
        g = grad_out.reshape(-1, grad_out.shape[-1])
        gc = g.to(cd)
        grad_x = grad_b = None
        if ctx.needs_input_grad[5]:
            grad_b = torch.mm(gc.t(), xa.reshape(-1, xa.shape[-1])).mul_(ctx.scale).to(lora_b.dtype)
        if ctx.needs_input_grad[0]:
            dxa = torch.mm(gc, lora_b.to(cd)).mul_(ctx.scale)  # scale the r-wide tensor, not the d_in-wide one
            a = lora_a.to(cd)
            if weight is None:  # the base layer's backward supplies its own part of dx
                dx = torch.mm(dxa, a)
                if ctx.seed is not None:
                    masked(dx, keep_mask(dx.shape, ctx.keep, dx.device, ctx.seed), inplace=True)
            else:
                bd = ctx.base_dtype
                dx = torch.mm(g.to(bd), weight.to(bd))
                if ctx.seed is None and bd == cd:
                    dx.addmm_(dxa, a)  # accumulate in place: no extra buffer, no extra pass
                else:
                    dx_adapter = torch.mm(dxa, a)
                    if ctx.seed is not None:
                        masked(dx_adapter, keep_mask(dx_adapter.shape, ctx.keep, dx.device, ctx.seed), inplace=True)
                    dx.add_(dx_adapter.to(bd))
            grad_x = dx.view(ctx.x_shape).to(ctx.x_dtype)
        grad_base = grad_out if ctx.needs_input_grad[1] else None
        return grad_x, grad_base, None, None, None, grad_b, None, None, None, None


def compute_dtype(x: torch.Tensor, adapter_dtype: torch.dtype) -> torch.dtype:
    """The adapter's matmul dtype: autocast's when autocast is on for x's device, else the adapter's."""
    device = x.device.type
    if device in _AUTOCAST_DEVICES and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return adapter_dtype


def corrected_b_grad(grad: torch.Tensor, lora_a: torch.Tensor, scaling: float) -> torch.Tensor:
    """The 2025 LoRA-FA revision's B-gradient (PEFT's LoraFAOptimizer): the one that best matches
    full fine-tuning's gradient projected on A's row space, (1/s²) · g_B · (A Aᵀ + 1e-8 I)⁺,
    in float32. As a gradient hook it works with any optimizer and costs no activation memory."""
    a = lora_a.detach().float()
    gram = a @ a.t() + 1e-8 * torch.eye(a.shape[0], device=a.device)
    return ((grad.float() @ torch.linalg.pinv(gram)) / scaling**2).to(grad.dtype)


# --------------------------------------------------------------------------- the layer

def _conv1d_class():
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers is optional for the bare layer
        return ()
    return Conv1D


def is_linear_like(module: nn.Module) -> bool:
    """nn.Linear, transformers' Conv1D (GPT-2), or a quantised linear exposing in/out features."""
    if isinstance(module, (nn.Linear, _conv1d_class())):
        return True
    return hasattr(module, "in_features") and hasattr(module, "out_features") and hasattr(module, "weight") \
        and not isinstance(module, LoraLayer)


def _features(base: nn.Module) -> tuple[int, int, bool]:
    """(d_in, d_out, fan_in_fan_out). Conv1D stores its weight as (d_in, d_out)."""
    conv1d = _conv1d_class()
    if conv1d and isinstance(base, conv1d):
        return base.weight.shape[0], base.weight.shape[1], True
    return base.in_features, base.out_features, False


def _adapter_dtype(base: nn.Module, name: str) -> torch.dtype:
    if name == "auto":
        dtype = base.weight.dtype
        return dtype if dtype.is_floating_point else torch.float32  # quantised storage
    return getattr(torch, name)


class LoraLayer(nn.Module):
    """A frozen base linear plus a LoRA (method "lora") or LoRA-FA (method "lora_fa") adapter.

    Parameter names follow PEFT (`base_layer`, `lora_A.weight` of shape r × d_in,
    `lora_B.weight` of shape d_out × r), so adapters move between the two unchanged.
    """

    def __init__(self, base_layer: nn.Module, config: AdapterConfig):
        super().__init__()
        if config.method not in ("lora", "lora_fa"):
            raise ValueError(f"LoraLayer needs method 'lora' or 'lora_fa', got {config.method!r}")
        self.base_layer = base_layer
        self.method = config.method
        self.r = config.r
        self.scaling = config.scaling
        self.dropout = config.dropout
        self.in_features, self.out_features, self.fan_in_fan_out = _features(base_layer)
        weight = base_layer.weight
        factory = dict(device=weight.device, dtype=_adapter_dtype(base_layer, config.adapter_dtype))
        self.lora_A = nn.Linear(self.in_features, config.r, bias=False, **factory)
        self.lora_B = nn.Linear(config.r, self.out_features, bias=False, **factory)
        init_lora_a(self.lora_A.weight, config.init_a)
        nn.init.zeros_(self.lora_B.weight)
        for p in self.base_layer.parameters():
            p.requires_grad_(False)
        self.lora_A.weight.requires_grad_(config.method == "lora")
        self.lora_B.weight.requires_grad_(True)
        self.merged = False
        if config.b_grad_correction:
            self.lora_B.weight.register_hook(self._corrected_b_grad)

    # Models read e.g. `self.wo.weight.dtype` (T5); answer for the base layer, as PEFT does.
    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self):
        return getattr(self.base_layer, "bias", None)

    def _corrected_b_grad(self, grad: torch.Tensor) -> torch.Tensor:
        return corrected_b_grad(grad, self.lora_A.weight, self.scaling)

    def _compute_dtype(self, x: torch.Tensor) -> torch.dtype:
        return compute_dtype(x, self.lora_A.weight.dtype)

    def _owns_base_product(self, args, kwargs) -> bool:
        """A frozen plain nn.Linear whose forward nobody wrapped (hooks, accelerate's offload
        hooks replace `forward`) can run its product inside LoRAFAFunction."""
        base = self.base_layer
        return (type(base) is nn.Linear and not args and not kwargs and not base.weight.requires_grad
                and "forward" not in base.__dict__ and not base._forward_hooks and not base._forward_pre_hooks)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.merged:
            return self.base_layer(x, *args, **kwargs)
        training_dropout = self.dropout > 0 and self.training
        if self.method == "lora_fa":
            seed = draw_seed() if training_dropout else None
            adapter = (self.lora_A.weight, self.lora_B.weight, self.scaling, self.dropout, seed, self._compute_dtype(x))
            if self._owns_base_product(args, kwargs):
                return LoRAFAFunction.apply(x, None, self.base_layer.weight, self.base_layer.bias, *adapter)
            return LoRAFAFunction.apply(x, self.base_layer(x, *args, **kwargs), None, None, *adapter)
        out = self.base_layer(x, *args, **kwargs)
        h, scaling = x.to(self._compute_dtype(x)), self.scaling
        if training_dropout and h.device.type == "cpu":
            # the 0/1 int16 mask is what backward keeps; 1/keep is folded into the scalar
            keep = effective_keep(self.dropout)
            h, scaling = DropoutMask.apply(h, keep_mask(h.shape, keep, h.device, draw_seed())), scaling / keep
        elif training_dropout:
            h = F.dropout(h, self.dropout, training=True)
        return out + (self.lora_B(self.lora_A(h)) * scaling).to(out.dtype)

    # --- merging: W ← W + s·B·A, so inference costs nothing extra

    def delta_weight(self) -> torch.Tensor:
        """s·B·A in the base weight's layout and dtype (computed in float32)."""
        delta = (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling
        if self.fan_in_fan_out:
            delta = delta.t()
        return delta.to(self.base_layer.weight.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.base_layer.weight.add_(self.delta_weight())
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base_layer.weight.sub_(self.delta_weight())
            self.merged = False

    def extra_repr(self) -> str:
        return (f"method={self.method}, r={self.r}, scaling={self.scaling:g}, dropout={self.dropout:g}, "
                f"in={self.in_features}, out={self.out_features}, merged={self.merged}")
