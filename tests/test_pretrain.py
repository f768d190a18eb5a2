"""The tiny base models' pretraining (experiments/pretraining.py, pretrain_loop.py) and committed checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import (AutoTokenizer, LlamaConfig, LlamaForCausalLM, RobertaConfig, RobertaForMaskedLM,
                          T5Config, T5ForConditionalGeneration)

from lorafa.paths import REPO_ROOT

# experiments/pretraining.py and pretrain_loop.py: pytest's pythonpath (pyproject.toml) has experiments/
from pretrain_loop import PretrainConfig, pretrain
from pretraining import (Objective, add_sentinels, block_layout, clm_batch, evaluate, mask_tokens, pack_blocks,
                         shuffle_context, span_batch, span_corrupt, span_shape, span_uncorrupt, tokenize_lines,
                         word_order_check)

BPE = REPO_ROOT / "models" / "tiny-bpe"
NAMES = ("tiny-roberta", "tiny-t5", "tiny-llama")
TEXT = ["The movie was a charming and often affecting journey.",
        "Shall I compare thee to a summer's day?",
        "Valkyria Chronicles III is a tactical role-playing video game."]


@pytest.fixture(scope="module")
def tokenizer():
    if not (BPE / "tokenizer.json").is_file():
        pytest.skip("models/tiny-bpe not built (experiments/train_tokenizer.py)")
    tok = AutoTokenizer.from_pretrained(str(BPE))
    add_sentinels(tok)
    return tok


def tiny_model(kind: str, vocab: int):
    torch.manual_seed(0)
    if kind == "mlm":
        return RobertaForMaskedLM(RobertaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=1,
                                                num_attention_heads=2, intermediate_size=64,
                                                max_position_embeddings=40, hidden_dropout_prob=0.0,
                                                attention_probs_dropout_prob=0.0))
    if kind == "span":
        return T5ForConditionalGeneration(T5Config(vocab_size=vocab, d_model=32, d_kv=16, d_ff=64, num_layers=1,
                                                   num_decoder_layers=1, num_heads=2, dropout_rate=0.0,
                                                   pad_token_id=1, eos_token_id=2, decoder_start_token_id=1))
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64))


def blocks_for(tok, kind: str, length: int = 24) -> torch.Tensor:
    return pack_blocks(tokenize_lines(tok, TEXT * 4), length, tok.eos_token_id, **block_layout(kind, tok))


def test_pack_blocks_layout():
    blocks = pack_blocks([[5, 6, 7], [8, 9], []], 4, sep_id=2, bos_id=0, eos_id=2)
    assert blocks.tolist() == [[0, 5, 6, 2], [0, 7, 2, 2], [0, 8, 9, 2]]
    assert pack_blocks([[5, 6, 7]], 3, sep_id=2).tolist() == [[5, 6, 7]]  # the trailing separator is dropped


def test_mask_tokens_rate_and_labels():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (64, 128), generator=g)
    ids[:, 0], ids[:, -1] = 0, 2
    inputs, labels = mask_tokens(ids, mask_id=4, vocab_size=1000, special_ids=[0, 1, 2, 3, 4], generator=g)
    selected = labels != -100
    assert abs(selected.float().mean().item() - 0.15) < 0.01
    assert not selected[:, 0].any() and not selected[:, -1].any()  # specials never masked
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(inputs[~selected], ids[~selected])  # unselected positions untouched
    masked = (inputs[selected] == 4).float().mean().item()
    kept = (inputs[selected] == ids[selected]).float().mean().item()
    assert abs(masked - 0.8) < 0.03 and abs(kept - 0.1) < 0.03


def test_span_corruption_round_trip(tokenizer):
    rng = np.random.default_rng(0)
    sentinels = [tokenizer.convert_tokens_to_ids(f"<extra_id_{i}>") for i in range(32)]
    assert sentinels == list(range(8192, 8224))
    eos = tokenizer.eos_token_id
    for text in TEXT:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        inputs, targets = span_corrupt(ids, sentinels=sentinels, eos_id=eos, rng=rng)
        noise, spans = span_shape(len(ids))
        assert len(inputs) == len(ids) - noise + spans + 1 and len(targets) == noise + spans + 1
        assert inputs[-1] == eos and targets[-1] == eos and targets[0] == sentinels[0]
        assert span_uncorrupt(inputs, targets, sentinels=sentinels, eos_id=eos) == ids
        assert tokenizer.decode(span_uncorrupt(inputs, targets, sentinels=sentinels, eos_id=eos)) == text
        assert "<extra_id_0>" in tokenizer.decode(inputs)
    # fixed-length blocks give fixed-shape batches
    blocks = torch.randint(5, 8000, (4, 128))
    x, y = span_batch(blocks, sentinels=sentinels, eos_id=eos, rng=rng)
    assert x.shape == (4, 116) and y.shape == (4, 26)


def test_causal_lm_labels(tokenizer):
    blocks = blocks_for(tokenizer, "clm")
    assert (blocks[:, 0] == tokenizer.bos_token_id).all()
    inputs, labels = clm_batch(blocks)
    assert torch.equal(inputs, labels)
    model = tiny_model("clm", len(tokenizer)).eval()
    with torch.no_grad():
        out = model(input_ids=inputs, labels=labels)
        manual = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, out.logits.shape[-1]),
                                                   inputs[:, 1:].reshape(-1))
    assert torch.allclose(out.loss, manual, atol=1e-5)


@pytest.mark.parametrize("kind", ["mlm", "span", "clm"])
def test_objective_loss_decreases_on_repeated_batch(tokenizer, kind):
    model = tiny_model(kind, len(tokenizer))
    objective = Objective(kind, tokenizer)
    batch = blocks_for(tokenizer, kind)[:4]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        # the same masks/spans every step: a repeated batch
        loss = objective.loss(model, batch, generator=torch.Generator().manual_seed(0), rng=np.random.default_rng(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > math.log(len(tokenizer)) - 1.5
    assert losses[-1] < 0.6 * losses[0]


def test_pretrain_loop_saves_loadable_checkpoint(tokenizer, tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = tiny_model("mlm", len(tokenizer))
    objective = Objective("mlm", tokenizer)
    blocks = blocks_for(tokenizer, "mlm")
    cfg = PretrainConfig(minutes=1, max_steps=4, batch_size=2, log_every=2, warmup_steps=2)
    summary = pretrain(model, tokenizer, objective, blocks, blocks[:2], tmp_path / "m", cfg, command="test",
                       progress=False, config_overrides={"hidden_dropout_prob": 0.1})
    out = tmp_path / "m"
    assert summary["step"] == 4 and not (tmp_path / "m.partial").exists()
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "training_log.jsonl"} <= {
        p.name for p in out.iterdir()}
    assert len((out / "training_log.jsonl").read_text().splitlines()) == 4  # init eval, 2 logs, final
    clf = AutoModelForSequenceClassification.from_pretrained(str(out), num_labels=2, dtype=torch.float32)
    assert clf.config.hidden_dropout_prob == 0.1
    assert len(AutoTokenizer.from_pretrained(str(out))) == len(tokenizer)
    assert evaluate(model, objective, blocks[:2]) > 0


# ----------------------------------------------------------------------------- committed checkpoints


def _checkpoints():
    dirs = [REPO_ROOT / "models" / n for n in NAMES]
    return [d for d in dirs if (d / "model.safetensors").is_file()]


@pytest.mark.skipif(not _checkpoints(), reason="no pretrained tiny checkpoints under models/")
def test_committed_checkpoints_size():
    total = sum(p.stat().st_size for d in _checkpoints() for p in d.rglob("*") if p.is_file())
    assert total <= 20 * 2**20, f"tiny checkpoints take {total / 2**20:.1f} MiB (> 20 MiB)"


@pytest.mark.skipif(not _checkpoints(), reason="no pretrained tiny checkpoints under models/")
@pytest.mark.parametrize("name,family,task_family", [
    ("tiny-roberta", "encoder", "classification"),
    ("tiny-t5", "seq2seq", "seq2seq"),
    ("tiny-llama", "causal", "instruction"),
    ("tiny-llama", "causal", "classification"),
])
def test_committed_checkpoint_loads_through_lorafa(name, family, task_family):
    from lorafa.models import ModelSpec, load_model, load_tokenizer

    path = REPO_ROOT / "models" / name
    if not (path / "model.safetensors").is_file():
        pytest.skip(f"models/{name} not pretrained")
    spec = ModelSpec(name=name, family=family, path=f"models/{name}")
    spec.check_files()
    tok = load_tokenizer(spec)
    model = load_model(spec, task_family, tok, num_labels=2)
    assert model.dtype == torch.float32
    assert model.get_input_embeddings().num_embeddings == len(tok)
    batch = tok(["a gripping, funny film", "dull"], padding=True, return_tensors="pt")
    with torch.no_grad():
        if family == "seq2seq":
            out = model(**batch, labels=tok(["good", "bad"], padding=True, return_tensors="pt")["input_ids"])
            assert torch.isfinite(out.loss)
        else:
            out = model(**batch)
            assert out.logits.shape[0] == 2 and torch.isfinite(out.logits).all()


def test_shuffle_context_moves_only_the_unlabelled_tokens():
    inputs = torch.arange(40).reshape(2, 20)
    labels = torch.full_like(inputs, -100)
    labels[:, [3, 11]] = 7
    out = shuffle_context(inputs, labels, torch.Generator().manual_seed(0))
    assert torch.equal(out[:, [3, 11]], inputs[:, [3, 11]]) and not torch.equal(out, inputs)
    assert [sorted(r) for r in out.tolist()] == [sorted(r) for r in inputs.tolist()]  # each row keeps its tokens


def test_word_order_check_separates_bag_of_words_from_order(tokenizer):
    # Without position embeddings a transformer encoder is permutation-equivariant, so the loss
    # at the masked positions cannot see the order of the rest; with them it can.
    blocks = blocks_for(tokenizer, "mlm")
    torch.manual_seed(0)  # large random weights: logits far from uniform, so the loss shows the context
    model = RobertaForMaskedLM(RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=64, max_position_embeddings=40,
                                             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                             initializer_range=0.5))
    ordered = word_order_check(model, tokenizer, blocks)
    assert abs(ordered["loss"] - ordered["shuffled_context_loss"]) > 1e-3
    with torch.no_grad():
        model.roberta.embeddings.position_embeddings.weight.zero_()
    bag = word_order_check(model, tokenizer, blocks)
    assert bag["loss"] == pytest.approx(bag["shuffled_context_loss"], abs=1e-5)
