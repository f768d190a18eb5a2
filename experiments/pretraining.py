"""Pretraining objectives and a wall-clock-budgeted loop for the tiny base models of scale=mini.

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

experiments/pretrain_tiny.py is the command line. This module lives beside it, not in lorafa,
because only the tiny models of scale=mini need it: the library adapts pretrained models, it
does not make them. It has no Hydra and no file layout beyond the output folder it is given.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
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


# ----------------------------------------------------------------------------- training loop


@dataclass
class PretrainConfig:
    minutes: float = 12.0
    max_steps: int | None = None  # stop earlier than the time budget (tests)
    batch_size: int = 32
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    log_every: int = 50
    checkpoint_minutes: float = 3.0  # resume state written this often
    seed: int = 0
    save_dtype: str = "float16"


@dataclass
class Progress:
    """Where a run stands: kept in resume.pt (with the weights, optimizer and random states) so a
    resumed run continues the same data order and time budget."""

    step: int = 0
    epoch: int = 0
    cursor: int = 0  # next block of this epoch's permutation
    elapsed: float = 0.0  # training seconds spent so far, over every process of the run
    init_eval: float | None = None


@dataclass
class Randomness:
    """The two random streams of the objectives (torch: MLM masks; numpy: T5 spans)."""

    gen: torch.Generator
    rng: np.random.Generator

    @classmethod
    def seeded(cls, seed: int) -> "Randomness":
        return cls(torch.Generator().manual_seed(seed), np.random.default_rng(seed))


def lr_factor(step: int, progress: float, cfg: PretrainConfig) -> float:
    """Linear warmup over steps, then cosine decay to min_lr_ratio over the *time* budget."""
    warm = min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
    progress = min(max(progress, 0.0), 1.0)
    return warm * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def machine_description(threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {threads} torch thread(s), {platform.system()} {platform.release()}, torch {torch.__version__}"


def pretrain(model, tokenizer, objective: Objective, train_blocks: torch.Tensor, eval_blocks: torch.Tensor,
             out: Path, cfg: PretrainConfig, *, command: str = "", threads: int = 1, resume: bool = False,
             extra_readme: str = "", progress: bool = True, config_overrides: dict | None = None) -> dict:
    """Train ``model`` until the time budget (or max_steps) is spent, then save it to ``out``.

    Work happens in ``<out>.partial/`` (training_log.jsonl, resume.pt); the finished checkpoint
    (safetensors in ``cfg.save_dtype``, config, tokenizer, training log, README.md) is written
    there and then renamed to ``out``, so a crash never leaves a half-written checkpoint.
    With ``resume=True`` a run continues from ``<out>.partial/resume.pt`` if one exists.
    ``config_overrides`` are set on model.config before saving (e.g. the fine-tuning dropout).
    """
    out = Path(out)
    work = out.with_name(out.name + ".partial")
    torch.manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    random = Randomness.seeded(cfg.seed)
    state = _start(work, model, optimizer, random, resume)
    if state.init_eval is None:
        state.init_eval = evaluate(model, objective, eval_blocks)
        _log(work, {"step": 0, "elapsed_s": 0.0, "eval_loss": state.init_eval, "note": "random init"})
    last_loss = _train(model, objective, optimizer, train_blocks, cfg, state, random, work, progress)
    summary = {"step": state.step, "epoch": state.epoch, "elapsed_s": round(state.elapsed, 1),
               "final_train_loss": round(last_loss, 4),
               "eval_loss": round(evaluate(model, objective, eval_blocks), 4),
               "init_eval_loss": round(state.init_eval, 4),
               "tokens": state.step * cfg.batch_size * train_blocks.shape[1], "note": "final"}
    _log(work, summary)
    n_params = _save(model, tokenizer, work, cfg.save_dtype, config_overrides)
    (work / "README.md").write_text(_readme(out.name, command, summary, cfg, n_params, objective.kind,
                                            train_blocks, eval_blocks, threads, extra_readme))
    _publish(work, out)
    summary["n_params"] = n_params
    return summary


def _start(work: Path, model, optimizer, random: Randomness, resume: bool) -> Progress:
    """A fresh ``work`` folder, or with ``resume`` the state of the run that left resume.pt there."""
    state_path = work / "resume.pt"
    if resume and state_path.is_file():
        saved = torch.load(state_path, weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        random.gen.set_state(saved["gen"])
        random.rng.bit_generator.state = saved["rng"]
        return Progress(**{k: saved[k] for k in ("step", "epoch", "cursor", "elapsed", "init_eval")})
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    return Progress()


def _train(model, objective: Objective, optimizer, blocks: torch.Tensor, cfg: PretrainConfig, state: Progress,
           random: Randomness, work: Path, progress: bool) -> float:
    """Optimizer steps until the time budget or max_steps is spent (``state`` advances); the mean
    training loss of the last logging window."""
    from tqdm.auto import tqdm

    budget_s = cfg.minutes * 60.0
    perm = _epoch_order(len(blocks), cfg.seed, state.epoch)
    model.train()
    before, t0 = state.elapsed, time.time()
    last_ckpt = t0
    window: list[float] = []
    last_loss = float("nan")
    bar = tqdm(total=int(budget_s), unit="s", desc=f"pretrain {work.name.removesuffix('.partial')}",
               disable=not progress, mininterval=5.0, initial=int(before))
    while True:
        elapsed = before + time.time() - t0
        if elapsed >= budget_s or (cfg.max_steps is not None and state.step >= cfg.max_steps):
            break
        if state.cursor + cfg.batch_size > len(blocks):
            state.epoch, state.cursor = state.epoch + 1, 0
            perm = _epoch_order(len(blocks), cfg.seed, state.epoch)
        batch = blocks[perm[state.cursor:state.cursor + cfg.batch_size]]
        state.cursor += cfg.batch_size
        lr = cfg.lr * lr_factor(state.step, elapsed / budget_s, cfg)
        window.append(_step(model, objective, optimizer, batch, lr, cfg.grad_clip, random))
        state.step += 1
        if state.step % cfg.log_every == 0:
            last_loss, window = sum(window) / len(window), []
            _log(work, {"step": state.step, "epoch": state.epoch, "elapsed_s": round(elapsed, 1),
                        "loss": round(last_loss, 4), "lr": lr,
                        "tokens": state.step * cfg.batch_size * blocks.shape[1]})
            bar.set_postfix(step=state.step, loss=f"{last_loss:.3f}", refresh=False)
        bar.update(int(elapsed) - bar.n)
        if time.time() - last_ckpt >= cfg.checkpoint_minutes * 60:
            state.elapsed = before + time.time() - t0
            _save_resume_state(work / "resume.pt", model, optimizer, state, random)
            last_ckpt = time.time()
    bar.close()
    state.elapsed = before + time.time() - t0
    return sum(window) / len(window) if window else last_loss


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The block order of one epoch, a function of (seed, epoch) alone so a resumed run keeps it."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))


def _step(model, objective: Objective, optimizer, batch: torch.Tensor, lr: float, grad_clip: float,
          random: Randomness) -> float:
    """One optimizer step at learning rate ``lr``; the batch's loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = objective.loss(model, batch, generator=random.gen, rng=random.rng)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return loss.item()


def _log(work: Path, record: dict) -> None:
    with (work / "training_log.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")


def _save_resume_state(path: Path, model, optimizer, state: Progress, random: Randomness) -> None:
    """resume.pt, written atomically: a crash while saving keeps the previous one."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), **asdict(state),
                "gen": random.gen.get_state(), "rng": random.rng.bit_generator.state}, tmp)
    os.replace(tmp, path)


def _save(model, tokenizer, work: Path, dtype: str, config_overrides: dict | None) -> int:
    """The checkpoint into ``work`` (resume.pt removed); its number of parameters.

    Half precision keeps the three checkpoints within the 20 MB budget.
    """
    for key, value in (config_overrides or {}).items():
        setattr(model.config, key, value)
    model.to(getattr(torch, dtype))
    model.save_pretrained(str(work))
    tokenizer.save_pretrained(str(work))
    (work / "resume.pt").unlink(missing_ok=True)
    return sum(p.numel() for p in model.parameters())


def _publish(work: Path, out: Path) -> None:
    """Rename the finished ``work`` folder to ``out``; the previous checkpoint is removed only after."""
    old = out.with_name(out.name + ".old")
    if out.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old)
    os.replace(work, out)
    if old.exists():
        shutil.rmtree(old)


def _readme(name, command, s, cfg, n_params, kind, train_blocks, eval_blocks, threads, extra) -> str:
    objective = {"mlm": "masked LM (15% of positions; 80/10/10 mask/random/keep)",
                 "span": "T5 span corruption (noise density 0.15, mean span 3, sentinels <extra_id_i>)",
                 "clm": "causal LM (next-token prediction)"}[kind]
    return f"""# {name}

A tiny base model for the mini scale of lorafa, pretrained by `experiments/pretrain_tiny.py`
with the {objective} objective on `iter_corpus()` of `experiments/corpus.py` (WikiText-2, Tiny Shakespeare
and the unlabeled sentences of the task training files), packed into {train_blocks.shape[1]}-token blocks.
The last 10% of the WikiText-2 test lines are held out from pretraining and used for the eval loss.

Regenerate (`make base-models` runs the same script):

```
{command}
```

| | |
|---|---|
| parameters | {n_params:,} (saved as {cfg.save_dtype} safetensors) |
| wall time | {s['elapsed_s'] / 60:.1f} min ({s['elapsed_s']} s) |
| steps | {s['step']:,} (batch {cfg.batch_size} x {train_blocks.shape[1]} tokens; {s['tokens']:,} tokens; {s['epoch'] + 1} pass(es) over {len(train_blocks):,} blocks) |
| optimizer | AdamW lr {cfg.lr:g}, betas (0.9, 0.98), weight decay {cfg.weight_decay:g}, {cfg.warmup_steps} warmup steps, cosine decay to {cfg.min_lr_ratio:g}x over the time budget, grad clip {cfg.grad_clip:g} |
| final train loss | {s['final_train_loss']} (mean of the last logging window) |
| held-out loss | {s['eval_loss']} ({len(eval_blocks)} blocks of held-out WikiText-2 test lines; random init: {s['init_eval_loss']}) |
| machine | {machine_description(threads)} |
| date | {time.strftime('%Y-%m-%d %H:%M %Z')} |

`training_log.jsonl` has the loss every {cfg.log_every} steps. Load with `from_pretrained` like any hub
model (the config's dtype is {cfg.save_dtype}; lorafa loads in float32 by default).
{extra}"""
