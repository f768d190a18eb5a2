"""AdamW in the paper's mixed precision: 16-bit weights and gradients, 32-bit states.

Table 1 counts 12 bytes of optimizer state per trainable parameter (Rajbhandari et al.,
2020): an fp32 master copy plus AdamW's two fp32 moments. torch.optim.AdamW on a bf16
parameter keeps bf16 moments and no master copy, so it cannot show that setting; this small
optimizer does, on real tensors (the CUDA meter) and fake ones (the simulator) alike.
"""

from __future__ import annotations

import torch


class MixedPrecisionAdamW:
    """AdamW with an fp32 master copy of every non-fp32 trainable parameter and fp32 moments.

    States are made on construction, as after a first step, so a measured step is the steady
    state. Parameters are updated one at a time (like foreach=False) to keep temporaries small.
    """

    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.step_count = 0
        self.state = []
        for p in self.params:
            master = p.detach().to(torch.float32, copy=True) if p.dtype != torch.float32 else None
            like = p if master is None else master
            self.state.append({"master": master, "exp_avg": torch.zeros_like(like, dtype=torch.float32),
                               "exp_avg_sq": torch.zeros_like(like, dtype=torch.float32)})

    def state_tensors(self):
        for s in self.state:
            yield from (t for t in s.values() if t is not None)

    @torch.no_grad()
    def step(self) -> None:
        self.step_count += 1
        beta1, beta2 = self.betas
        bc1, bc2 = 1 - beta1 ** self.step_count, 1 - beta2 ** self.step_count
        for p, s in zip(self.params, self.state):
            if p.grad is None:
                continue
            w = s["master"] if s["master"] is not None else p
            g = p.grad.to(torch.float32)
            s["exp_avg"].mul_(beta1).add_(g, alpha=1 - beta1)
            s["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
            del g
            if self.weight_decay:
                w.mul_(1 - self.lr * self.weight_decay)
            denom = (s["exp_avg_sq"] / bc2).sqrt_().add_(self.eps)
            w.addcdiv_(s["exp_avg"], denom, value=-self.lr / bc1)
            del denom
            if s["master"] is not None:
                p.copy_(w)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None
