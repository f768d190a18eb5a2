"""Selective activation recomputation of the frozen base (the paper's section 3.2).

    from lorafa.recompute import enable_selective_recompute
    changed = enable_selective_recompute(model)   # after add_adapters, before training

LoRA-FA removes the adapters' share of activation memory; what remains is what the frozen
base keeps for backward. Three parts of it can be recomputed, for a few elementwise
operations, from tensors that are kept anyway (LLaMA-7B in bf16, per token):

- normalisation layers: LlamaRMSNorm and T5LayerNorm compute in fp32 whatever their input, so
  backward keeps an fp32 copy of the input (16 KiB per norm at width 4096); recomputed, a norm
  keeps its input in its own dtype only (8 KiB). nn.LayerNorm (RoBERTa, BERT) keeps its input
  and two statistics per row; recomputed, its input only (it gains where autocast runs it in
  fp32 on a 16-bit input).
- the gated MLP activation act(gate) * up (LLaMA's SiLU, T5 v1.1's gated GELU): the activation
  keeps its input and the product keeps both of its operands (3 x 21.5 KiB per layer at width
  11008); recomputed, only gate and up are kept (43 KiB). A plain GELU (RoBERTa, BERT) or ReLU
  (T5) already keeps one tensor of that size: nothing to gain, left as it is.
- the causal-LM loss: transformers computes the logits for every token, upcasts them to fp32
  and keeps them for the cross-entropy's backward (125 KiB per token at vocabulary 32,000);
  computed here over chunks of tokens from the final hidden states, with each chunk's head and
  loss recomputed in backward, so no tensor of vocabulary size outlives its chunk.

How: torch.utils.checkpoint (non-reentrant) around exactly the stock code: the norm module's
own forward, the MLP's own activation expression, the lm_head and cross-entropy of
transformers' ForCausalLMLoss per chunk. The recomputation runs the same operations on the
same inputs, so outputs and gradients are those of the stock model (the chunked loss sums in
another order: equal to rounding). The regions hold no linear layer and draw no random
numbers, so the adapters' dropout and LoRA-FA's own saved tensors are untouched.

What was looked at: transformers' gradient checkpointing recomputes whole blocks, linears
included (about a third more compute, and LoRA-FA's saved x·Aᵀ is then recomputed too); torch's
selective checkpoint policies (create_selective_checkpoint_contexts) choose which ops of a
checkpointed region to keep, but a region must still be declared, which is what this module
does; Liger kernel's fused linear cross-entropy is Triton (GPUs only); torchtune's chunked
cross-entropy chunks the logits but keeps every chunk for backward; PEFT has none of these.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

LOSS_CHUNK_TOKENS = 1024  # tokens per chunk of the causal-LM loss: 1024 x 32,000 fp32 logits = 131 MB at a time


def recomputed(fn, *args):
    """fn(*args), keeping only args for backward and running fn again there. Without grad
    (evaluation) it is a plain call."""
    if not torch.is_grad_enabled():
        return fn(*args)
    return checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=False)


# ---------------------------------------------------------------------------- normalisation

def is_norm(module: nn.Module) -> bool:
    name = type(module).__name__
    return isinstance(module, nn.LayerNorm) or name.endswith("RMSNorm") or name == "T5LayerNorm"


def _norm_forward(self, hidden_states):
    stock = functools.partial(self._lorafa_stock_class.forward, self)
    if not (hidden_states.requires_grad or any(p.requires_grad for p in self.parameters())):
        return stock(hidden_states)  # nothing to differentiate (LLaMA's first norm after frozen embeddings)
    return recomputed(stock, hidden_states)


# ---------------------------------------------------------------------------- gated MLP

def _gated_product(act, gate, up):
    return act(gate) * up


def _llama_mlp_forward(self, x):
    """LlamaMLP.forward (Mistral's and Qwen2's are the same code), the product recomputed."""
    product = recomputed(functools.partial(_gated_product, self.act_fn), self.gate_proj(x), self.up_proj(x))
    return self.down_proj(product)


def _t5_gated_forward(self, hidden_states):
    """T5DenseGatedActDense.forward, the product recomputed."""
    hidden_states = recomputed(functools.partial(_gated_product, self.act), self.wi_0(hidden_states),
                               self.wi_1(hidden_states))
    hidden_states = self.dropout(hidden_states)
    weight = self.wo.weight  # (an adapter layer answers with its base layer's)
    if isinstance(weight, torch.Tensor) and hidden_states.dtype != weight.dtype and weight.dtype != torch.int8:
        hidden_states = hidden_states.to(weight.dtype)  # as the stock code (wo kept in fp32 for int8)
    return self.wo(hidden_states)


def _gated_mlp_forward(module: nn.Module):
    """The replacement forward of a gated MLP module, or None if it is not one we know."""
    if all(hasattr(module, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn")):
        return _llama_mlp_forward
    if type(module).__name__ == "T5DenseGatedActDense":
        return _t5_gated_forward
    return None


# ---------------------------------------------------------------------------- causal-LM loss

def _chunk_loss_sum(head: nn.Module, ignore_index: int, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float()  # transformers' ForCausalLMLoss upcasts the same way
    return F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum")


def chunked_causal_lm_loss(hidden: torch.Tensor, head: nn.Module, labels: torch.Tensor, *,
                           num_items_in_batch=None, ignore_index: int = -100, shift_labels=None,
                           chunk_tokens: int = LOSS_CHUNK_TOKENS) -> torch.Tensor:
    """transformers' ForCausalLMLoss(head(hidden), labels), chunk by chunk of tokens, each
    chunk's logits recomputed in backward: the same value without keeping the logits.

    Mean over the labelled tokens, or the sum over num_items_in_batch when the Trainer gives it
    (gradient accumulation, several processes), as ForCausalLMLoss.
    """
    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = shift_labels.reshape(-1).to(hidden.device)
    chunk = functools.partial(_chunk_loss_sum, head, ignore_index)
    total = sum(recomputed(chunk, hidden[i:i + chunk_tokens], targets[i:i + chunk_tokens])
                for i in range(0, hidden.shape[0], chunk_tokens))
    if num_items_in_batch is not None:
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(total.device)
        return total / num_items_in_batch
    return total / (targets != ignore_index).sum()


def is_causal_lm(model: nn.Module) -> bool:
    return (type(model).__name__.endswith("ForCausalLM") and hasattr(model, "lm_head") and hasattr(model, "model")
            and not getattr(model.config, "is_encoder_decoder", False))


_LOSS_KEYS = ("num_items_in_batch", "ignore_index", "shift_labels")


def _causal_lm_forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
    """The causal LM's forward: with labels and gradients, the loss by chunks (no logits are
    returned: nothing of vocabulary size is kept); otherwise the stock forward."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    if labels is None or not torch.is_grad_enabled() or kwargs.get("logits_to_keep", 0) != 0:
        return self._lorafa_stock_class.forward(self, input_ids=input_ids, attention_mask=attention_mask,
                                                labels=labels, **kwargs)
    loss_kwargs = {key: kwargs.pop(key) for key in _LOSS_KEYS if key in kwargs}
    kwargs.pop("logits_to_keep", None)
    outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    loss = chunked_causal_lm_loss(outputs.last_hidden_state, self.lm_head, labels,
                                  chunk_tokens=self._lorafa_loss_chunk_tokens, **loss_kwargs)
    rest = {k: v for k, v in outputs.items() if k != "last_hidden_state"}
    return CausalLMOutputWithPast(loss=loss, logits=None, **rest)


# ---------------------------------------------------------------------------- the switch

@functools.lru_cache(maxsize=None)
def _recomputing_class(cls: type, forward) -> type:
    """cls with `forward` replaced. Same name (saved configs still name the stock class);
    the instance's __class__ is swapped, so copies and PEFT's deep copies keep it."""
    return type(cls.__name__, (cls,), {"forward": forward, "_lorafa_stock_class": cls, "__module__": cls.__module__,
                                       "__qualname__": cls.__qualname__})


def _swap(module: nn.Module, forward) -> None:
    module.__class__ = _recomputing_class(type(module), forward)


def is_recomputing(module: nn.Module) -> bool:
    return "_lorafa_stock_class" in type(module).__dict__


def enable_selective_recompute(model: nn.Module, loss_chunk_tokens: int = LOSS_CHUNK_TOKENS) -> dict[str, int]:
    """Recompute norms, gated activations and (causal LMs) the loss in backward instead of
    keeping their intermediates: the model's outputs and gradients are unchanged.

    Works on a transformers model with or without our adapters, and inside a PEFT model.
    Calling it twice changes nothing more. Returns how many modules of each kind it changed.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    counts = {"norms": 0, "gated_mlps": 0, "causal_lm_loss": 0}
    for module in list(base.modules()):
        if is_recomputing(module):
            continue
        if is_norm(module):
            _swap(module, _norm_forward)
            counts["norms"] += 1
        elif (forward := _gated_mlp_forward(module)) is not None:
            _swap(module, forward)
            counts["gated_mlps"] += 1
    if is_causal_lm(base) and not is_recomputing(base):
        _swap(base, _causal_lm_forward)
        base._lorafa_loss_chunk_tokens = loss_chunk_tokens
        counts["causal_lm_loss"] = 1
    return counts


def stock_class(module: nn.Module) -> type:
    """The transformers class a module was built as (before enable_selective_recompute)."""
    return type(module).__dict__.get("_lorafa_stock_class", type(module))
