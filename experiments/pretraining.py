"""Pretraining data and objectives of the tiny base models of scale=mini.

Three objectives, one per model family:

- ``mlm`` (encoder, RoBERTa): 15% of the non-special positions are selected; of those 80% become
  ``<mask>``, 10% a random token, 10% stay. Labels are -100 everywhere else, and the LM head is
  computed only at the selected positions (most of an MLM step's cost otherwise).
- ``span`` (seq2seq, T5): T5's span corruption (noise density 0.15, mean span length 3). Each
  corrupted span is replaced by a sentinel ``<extra_id_i>`` in the input; the target lists every
  sentinel followed by the tokens it hides, then ``</s>``. The tiny-bpe tokenizer has no
  sentinels, so ``add_sentinels`` appends them as special tokens (ids 8192..) and the extended
  tokenizer is saved with the checkpoint.
- ``clm`` (causal, LLaMA): next-token prediction; labels are the input ids (the model shifts).

Text is packed into fixed-length blocks: each line is tokenized without special tokens, lines
are joined with ``</s>``, and the stream is cut into blocks (``<s>`` + text + ``</s>`` for the
encoder, ``<s>`` + text for the decoder, plain text for span corruption, whose targets and
inputs each end with ``</s>``). No padding is ever needed.

experiments/pretrain_tiny.py is the command line and pretrain_loop.py the training loop. They
live here, not in lorafa, because only the tiny models of scale=mini need them: the library
adapts pretrained models, it does not make them.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

OBJECTIVES = {"encoder": "mlm", "seq2seq": "span", "causal": "clm"}
SENTINEL = "<extra_id_{}>"
NUM_SENTINELS = 32


# ----------------------------------------------------------------------------- data


def add_sentinels(tokenizer, n: int = NUM_SENTINELS) -> list[int]:
    """Append T5-style sentinels ``<extra_id_0..n-1>`` as special tokens (if absent); their ids."""
    names = [SENTINEL.format(i) for i in range(n)]
    missing = [t for t in names if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    return tokenizer.convert_tokens_to_ids(names)


def sentinel_ids(tokenizer) -> list[int]:
    vocab = tokenizer.get_vocab()
    ids, i = [], 0
    while SENTINEL.format(i) in vocab:
        ids.append(vocab[SENTINEL.format(i)])
        i += 1
    return ids


def tokenize_lines(tokenizer, lines: Sequence[str], batch: int = 4096) -> list[list[int]]:
    out: list[list[int]] = []
    for start in range(0, len(lines), batch):
        out.extend(tokenizer(list(lines[start:start + batch]), add_special_tokens=False)["input_ids"])
    return out


def pack_blocks(token_lists: Iterable[Sequence[int]], length: int, sep_id: int,
                bos_id: int | None = None, eos_id: int | None = None) -> torch.Tensor:
    """Join the lines with ``sep_id`` and cut into blocks: [bos] + ``length`` - (specials) tokens + [eos].

    Returns a LongTensor [n_blocks, length]; the remainder that does not fill a block is dropped.
    """
    inner = length - (bos_id is not None) - (eos_id is not None)
    if inner < 1:
        raise ValueError(f"block length={length} is too short for its special tokens")
    stream: list[int] = []
    for ids in token_lists:
        if ids:
            stream.extend(ids)
            stream.append(sep_id)
    n = len(stream) // inner
    body = torch.tensor(stream[: n * inner], dtype=torch.long).view(n, inner)
    parts = []
    if bos_id is not None:
        parts.append(torch.full((n, 1), bos_id, dtype=torch.long))
    parts.append(body)
    if eos_id is not None:
        parts.append(torch.full((n, 1), eos_id, dtype=torch.long))
    return torch.cat(parts, dim=1)


def block_layout(objective: str, tokenizer) -> dict:
    """bos/eos around each block for an objective (see the module docstring)."""
    if objective == "mlm":
        return {"bos_id": tokenizer.bos_token_id, "eos_id": tokenizer.eos_token_id}
    if objective == "clm":
        return {"bos_id": tokenizer.bos_token_id, "eos_id": None}
    if objective == "span":
        return {"bos_id": None, "eos_id": None}
    raise ValueError(f"objective={objective!r} is invalid; allowed: {', '.join(OBJECTIVES.values())}")


# ----------------------------------------------------------------------------- objectives


def mask_tokens(input_ids: torch.Tensor, *, mask_id: int, vocab_size: int, special_ids: Sequence[int],
                prob: float = 0.15, generator: torch.Generator | None = None):
    """BERT/RoBERTa masking: (corrupted inputs, labels with -100 at unselected positions)."""
    labels = input_ids.clone()
    maskable = ~torch.isin(input_ids, torch.tensor(list(special_ids), dtype=input_ids.dtype))
    selected = (torch.rand(input_ids.shape, generator=generator) < prob) & maskable
    labels[~selected] = -100
    inputs = input_ids.clone()
    roll = torch.rand(input_ids.shape, generator=generator)
    inputs[selected & (roll < 0.8)] = mask_id
    rand = selected & (roll >= 0.8) & (roll < 0.9)
    random_ids = torch.randint(len(special_ids), vocab_size, input_ids.shape, generator=generator)
    inputs[rand] = random_ids[rand]
    return inputs, labels


def mlm_loss(model, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Masked-LM loss with the LM head applied only at the labelled positions."""
    encoder = getattr(model, model.base_model_prefix)
    hidden = encoder(input_ids=input_ids).last_hidden_state
    selected = labels != -100
    logits = model.lm_head(hidden[selected])
    return F.cross_entropy(logits.float(), labels[selected])


def _segments(num_items: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Split ``num_items`` into ``num_segments`` random positive lengths."""
    cuts = np.sort(rng.choice(np.arange(1, num_items), size=num_segments - 1, replace=False))
    return np.diff(np.concatenate([[0], cuts, [num_items]]))


def span_shape(length: int, density: float = 0.15, mean_span: float = 3.0) -> tuple[int, int]:
    """(noise tokens, spans) for a sequence of ``length`` tokens, as in T5."""
    num_noise = int(min(max(round(length * density), 1), length - 1))
    num_spans = int(max(round(num_noise / mean_span), 1))
    return num_noise, num_spans


def span_corrupt(ids: Sequence[int], *, sentinels: Sequence[int], eos_id: int, rng: np.random.Generator,
                 density: float = 0.15, mean_span: float = 3.0) -> tuple[list[int], list[int]]:
    """T5 span corruption of one sequence: (inputs, targets), both ending with ``eos_id``.

    Inputs: kept tokens with each noise span replaced by one sentinel. Targets: each sentinel
    followed by the span it replaced. Lengths depend only on len(ids).
    """
    ids = list(ids)
    num_noise, num_spans = span_shape(len(ids), density, mean_span)
    num_spans = min(num_spans, num_noise, len(ids) - num_noise)
    if num_spans > len(sentinels):
        raise ValueError(f"{num_spans} spans need {num_spans} sentinels; the tokenizer has {len(sentinels)}")
    noise_lens = _segments(num_noise, num_spans, rng)
    keep_lens = _segments(len(ids) - num_noise, num_spans, rng)
    inputs, targets, pos = [], [], 0
    for i, (k, n) in enumerate(zip(keep_lens, noise_lens)):
        inputs.extend(ids[pos:pos + k])
        pos += k
        inputs.append(sentinels[i])
        targets.append(sentinels[i])
        targets.extend(ids[pos:pos + n])
        pos += n
    return inputs + [eos_id], targets + [eos_id]


def span_uncorrupt(inputs: Sequence[int], targets: Sequence[int], *, sentinels: Sequence[int],
                   eos_id: int) -> list[int]:
    """The original sequence back from span_corrupt's (inputs, targets)."""
    sent = {s: i for i, s in enumerate(sentinels)}
    spans: dict[int, list[int]] = {}
    current = None
    for t in targets:
        if t == eos_id:
            break
        if t in sent:
            current = sent[t]
            spans[current] = []
        elif current is not None:
            spans[current].append(t)
    out = []
    for t in inputs:
        if t == eos_id:
            break
        out.extend(spans.get(sent[t], []) if t in sent else [t])
    return out


def span_batch(blocks: torch.Tensor, *, sentinels: Sequence[int], eos_id: int, rng: np.random.Generator):
    pairs = [span_corrupt(row.tolist(), sentinels=sentinels, eos_id=eos_id, rng=rng) for row in blocks]
    return (torch.tensor([p[0] for p in pairs], dtype=torch.long),
            torch.tensor([p[1] for p in pairs], dtype=torch.long))


def clm_batch(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal LM: labels are the inputs (transformers shifts them inside the model)."""
    return blocks, blocks.clone()


class Objective:
    """One objective bound to a tokenizer: turns a batch of blocks into a loss."""

    def __init__(self, kind: str, tokenizer):
        if kind not in OBJECTIVES.values():
            raise ValueError(f"objective={kind!r} is invalid; allowed: {', '.join(OBJECTIVES.values())}")
        self.kind = kind
        self.tokenizer = tokenizer
        self.special_ids = sorted(set(tokenizer.all_special_ids))
        if kind == "span":
            self.sentinels = sentinel_ids(tokenizer)
            if not self.sentinels:
                raise ValueError("span corruption needs sentinel tokens; call add_sentinels(tokenizer) first")

    def loss(self, model, blocks: torch.Tensor, *, generator: torch.Generator | None = None,
             rng: np.random.Generator | None = None) -> torch.Tensor:
        if self.kind == "mlm":
            inputs, labels = mask_tokens(blocks, mask_id=self.tokenizer.mask_token_id, vocab_size=len(self.tokenizer),
                                         special_ids=self.special_ids, generator=generator)
            return mlm_loss(model, inputs, labels)
        if self.kind == "span":
            inputs, labels = span_batch(blocks, sentinels=self.sentinels, eos_id=self.tokenizer.eos_token_id,
                                        rng=rng or np.random.default_rng())
            return model(input_ids=inputs, labels=labels).loss
        inputs, labels = clm_batch(blocks)
        return model(input_ids=inputs, labels=labels).loss


@torch.no_grad()
def evaluate(model, objective: Objective, blocks: torch.Tensor, batch_size: int = 32, seed: int = 1234) -> float:
    """Mean loss over ``blocks`` with fixed masks/spans (the same for every call)."""
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    total, count = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        batch = blocks[start:start + batch_size]
        total += objective.loss(model, batch, generator=gen, rng=rng).item() * len(batch)
        count += len(batch)
    model.train(was_training)
    return total / max(count, 1)


def shuffle_context(inputs: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None):
    """``inputs`` with the unlabelled positions of each row permuted among themselves.

    The labelled (masked) positions keep their place and content, so a model's MLM loss on the
    result differs from the loss on ``inputs`` only through the word order of the context.
    """
    out = inputs.clone()
    for row in range(len(out)):
        idx = (labels[row] == -100).nonzero().squeeze(1)
        out[row, idx] = out[row, idx[torch.randperm(len(idx), generator=generator)]]
    return out


@torch.no_grad()
def word_order_check(model, tokenizer, blocks: torch.Tensor, batch_size: int = 32, seed: int = 1234) -> dict:
    """MLM loss on ``blocks`` as they are and with the unmasked context shuffled (same masks).

    Equal losses mean the encoder uses its context as a bag of words; a model that reads word
    order does worse on the shuffled text.
    """
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    totals = {"loss": 0.0, "shuffled_context_loss": 0.0}
    for start in range(0, len(blocks), batch_size):
        batch = blocks[start:start + batch_size]
        inputs, labels = mask_tokens(batch, mask_id=tokenizer.mask_token_id, vocab_size=len(tokenizer),
                                     special_ids=tokenizer.all_special_ids, generator=gen)
        totals["loss"] += mlm_loss(model, inputs, labels).item() * len(batch)
        shuffled = shuffle_context(inputs, labels, gen)
        totals["shuffled_context_loss"] += mlm_loss(model, shuffled, labels).item() * len(batch)
    model.train(was_training)
    return {k: v / max(len(blocks), 1) for k, v in totals.items()}
