"""Shared fixtures: tiny models built from configs (no hub), the shared data directory."""

from __future__ import annotations

import os

# Tests never reach the hub or W&B's servers (CI has no network beyond package registries).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import (BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                          LlamaForCausalLM, RobertaConfig, RobertaForSequenceClassification, T5Config,
                          T5ForConditionalGeneration)

from lorafa.paths import data_dir  # noqa: E402


def _tiny_encoder(config_cls, model_cls, num_labels: int, seed: int):
    torch.manual_seed(seed)
    cfg = config_cls(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=40, num_labels=num_labels,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return model_cls(cfg).eval()


def tiny_roberta(num_labels: int = 2, seed: int = 0) -> RobertaForSequenceClassification:
    return _tiny_encoder(RobertaConfig, RobertaForSequenceClassification, num_labels, seed)


def tiny_bert(num_labels: int = 2, seed: int = 0) -> BertForSequenceClassification:
    """MiniLM's architecture (BERT: pooler + classifier head, token types) in miniature."""
    return _tiny_encoder(BertConfig, BertForSequenceClassification, num_labels, seed)


def tiny_t5(seed: int = 0) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=120, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                   num_heads=4, dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0)
    return T5ForConditionalGeneration(cfg).eval()


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=120, hidden_size=32, intermediate_size=88, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def tiny_smollm(seed: int = 0) -> LlamaForCausalLM:
    """SmolLM2-135M's features in miniature: grouped-query attention (3 query heads per key-value
    head), an explicit head_dim, tied input and output embeddings, RMSNorm and a SiLU-gated MLP."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=120, hidden_size=48, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=6, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
                      tie_word_embeddings=True, rope_parameters={"rope_theta": 100000.0, "rope_type": "default"})
    return LlamaForCausalLM(cfg).eval()


# conf/model's spec of tiny_smollm's architecture, for the memory simulator (MemoryPoint(model=...)).
TINY_SMOLLM_SPEC = {"name": "tiny-smollm", "family": "causal", "arch": {
    "model_type": "llama", "vocab_size": 120, "hidden_size": 48, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 6, "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 64,
    "tie_word_embeddings": True, "hidden_act": "silu"}}


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=120, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(cfg).eval()


TINY_MODELS = {"roberta": tiny_roberta, "bert": tiny_bert, "t5": tiny_t5, "llama": tiny_llama, "gpt2": tiny_gpt2,
               "smollm": tiny_smollm}


def model_inputs(kind: str, batch: int = 2, seq: int = 9, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 120, (batch, seq), generator=g)
    if kind == "t5":
        return {"input_ids": ids, "decoder_input_ids": torch.randint(3, 120, (batch, 5), generator=g)}
    return {"input_ids": ids}


def main_output(kind: str, out) -> torch.Tensor:
    return out.logits


@pytest.fixture(scope="session")
def shared_data():
    root = data_dir()
    if not root.is_dir():
        pytest.skip(f"shared data directory not found at {root} (set LORAFA_DATA_DIR)")
    return root
