"""Instruction tuning data (Alpaca, FLAN v2, the FLAN v2 CoT source files) in the Alpaca prompt
format, tokenised so the loss falls on the response tokens only, and what scores a run afterwards.

Loaded datasets have the columns `instruction`, `input` ("" when none), `output` (flan_cot adds
`source` and `answer`: lorafa.tasks.cot).

After training (or, for method=base, instead of it) every instruction run is scored on:
- heldout_loss / heldout_tokens / heldout_n: the mean cross-entropy per response token over the
  task's held-out rows (TaskSpec.held_out), the quantity training minimises, token-weighted over
  the whole set;
- cot_accuracy, cot_accuracy/<source>, cot_format_rate, cot_n (flan_cot): lorafa.tasks.cot;
- mmlu_accuracy, mmlu/<subject>: 5-shot MMLU, the paper's Table 4 (data.mmlu_subjects=[] skips it).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import datasets
import torch
from tqdm.auto import tqdm

from lorafa.tasks.common import load_local_or_hub, malformed
from lorafa.tasks.registry import check_split, get_task

__all__ = ["PROMPT_INPUT", "PROMPT_NO_INPUT", "IGNORE_INDEX", "load_alpaca", "load_flanv2",
           "load_instruction", "format_prompt", "prompt_token_ids", "tokenize_instruction", "response_loss",
           "instruction_final_eval"]

IGNORE_INDEX = -100  # what torch's cross-entropy (and so every HF model's loss) skips

# Stanford Alpaca's templates, with the response on its own line (as alpaca-lora does)
# so the prompt/response token boundary is the same however the tokenizer merges.
PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)

_FEATURES = datasets.Features({k: datasets.Value("string")
                               for k in ("instruction", "input", "output")})
FLAN_SOURCE = "flan_v2"  # the `dataset` value of FLAN v2 rows in the Tulu v2 mixture


def format_prompt(instruction: str, input: str = "") -> str:
    if input.strip():
        return PROMPT_INPUT.format(instruction=instruction, input=input)
    return PROMPT_NO_INPUT.format(instruction=instruction)


_SPACE = re.compile(r"\s*")


def _json_records(path: Path) -> list[tuple[int, object]]:
    """The elements of a top-level JSON list, each with the line it starts on, so a bad
    record can be reported where an editor will find it."""
    text = path.read_text(encoding="utf-8")
    decoder, out = json.JSONDecoder(), []
    counted, line = 0, 1  # line number at offset `counted`, advanced incrementally

    def line_at(pos: int) -> int:
        nonlocal counted, line
        line += text.count("\n", counted, pos)
        counted = pos
        return line

    pos = _SPACE.match(text).end()
    if not text.startswith("[", pos):
        raise malformed(path, line_at(pos), "expected a JSON list of records")
    pos = _SPACE.match(text, pos + 1).end()
    while not text.startswith("]", pos):
        try:
            record, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise malformed(path, exc.lineno, exc.msg) from None
        out.append((line_at(pos), record))
        pos = _SPACE.match(text, end).end()
        if text.startswith(",", pos):
            pos = _SPACE.match(text, pos + 1).end()
        elif not text.startswith("]", pos):
            raise malformed(path, line_at(pos), "expected ',' or ']' between records")
    return out


def _read_alpaca_json(path: Path) -> datasets.Dataset:
    rows = {k: [] for k in _FEATURES}
    for lineno, rec in _json_records(path):
        if not isinstance(rec, dict) or not isinstance(rec.get("instruction"), str) \
                or not isinstance(rec.get("output"), str):
            raise malformed(path, lineno, f"record lacks string instruction/output: {rec!r:.200}")
        for k in rows:
            rows[k].append(rec.get(k) or "")
    return datasets.Dataset.from_dict(rows, features=_FEATURES)


def load_alpaca(split: str = "train", data_dir: str | Path | None = None) -> datasets.Dataset:
    """Alpaca's only split, "train": data_dir/alpaca/alpaca_en_demo.json if present
    (a 999-row sample in Alpaca's format), else the 52k of tatsu-lab/alpaca."""
    spec = get_task("alpaca")
    check_split(spec, split)
    return load_local_or_hub(spec, split, data_dir, read_local=_read_alpaca_json,
                             from_hub=lambda ds: ds.select_columns(list(_FEATURES)).cast(_FEATURES))


def _flan_rows(ds: datasets.Dataset) -> datasets.Dataset:
    ds = ds.filter(lambda src: src == FLAN_SOURCE, input_columns="dataset", desc="FLAN v2 rows")

    def to_alpaca(messages):
        # Single-turn user/assistant pairs; the first pair is the example.
        user = next(m["content"] for m in messages if m["role"] == "user")
        answer = next(m["content"] for m in messages if m["role"] == "assistant")
        return {"instruction": user, "input": "", "output": answer}

    return ds.map(to_alpaca, input_columns="messages", remove_columns=ds.column_names,
                  features=_FEATURES, desc="FLAN v2 to Alpaca columns")


def load_flanv2(split: str = "train", data_dir: str | Path | None = None) -> datasets.Dataset:
    """The 50k FLAN v2 sample (hub only: allenai/tulu-v2-sft-mixture, rows whose
    `dataset` is "flan_v2"), as instruction/input/output with the input folded into
    the instruction as FLAN templates already do."""
    spec = get_task("flanv2")
    check_split(spec, split)
    return load_local_or_hub(spec, split, data_dir, read_local=None, from_hub=_flan_rows)


def load_instruction(name: str, split: str = "train",
                     data_dir: str | Path | None = None) -> datasets.Dataset:
    from lorafa.tasks.cot import load_flan_cot

    loaders = {"alpaca": load_alpaca, "flanv2": load_flanv2, "flan_cot": load_flan_cot}
    if name not in loaders:
        raise ValueError(f"name: unknown instruction task {name!r}; available: {', '.join(loaders)}")
    return loaders[name](split, data_dir)


def _bos_ids(tokenizer) -> list[int]:
    """[bos] if this tokenizer starts sequences with BOS (LLaMA), else [] (GPT-2)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return []
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    return [bos] if probe and probe[0] == bos else []


def prompt_token_ids(tokenizer, instructions, inputs) -> list[list[int]]:
    """[bos] + the formatted prompt's tokens: what training conditions on, and what generation
    starts from (lorafa.tasks.cot)."""
    bos = _bos_ids(tokenizer)
    prompts = [format_prompt(i, x) for i, x in zip(instructions, inputs)]
    return [bos + ids for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]


def tokenize_instruction(dataset: datasets.Dataset, tokenizer, max_length: int = 512,
                         ) -> datasets.Dataset:
    """input_ids = [bos] + prompt + response + [eos]; labels copy the response and EOS
    and set every prompt position to -100, so only the response is learned.

    Prompt and response are tokenised separately (as QLoRA does) so the mask boundary
    is exact. Sequences longer than max_length are cut from the right; examples left
    with no response token are dropped, since a batch of them would make the loss NaN.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer: needs an eos_token so the model learns where a response ends")
    eos = tokenizer.eos_token_id

    def encode(batch):
        p_ids = prompt_token_ids(tokenizer, batch["instruction"], batch["input"])
        r_ids = tokenizer(batch["output"], add_special_tokens=False)["input_ids"]
        out = {"input_ids": [], "attention_mask": [], "labels": []}
        for prompt, r in zip(p_ids, r_ids):
            response = r + [eos]
            ids = (prompt + response)[:max_length]
            labels = ([IGNORE_INDEX] * len(prompt) + response)[:max_length]
            out["input_ids"].append(ids)
            out["attention_mask"].append([1] * len(ids))
            out["labels"].append(labels)
        return out

    tokenized = dataset.map(encode, batched=True, remove_columns=dataset.column_names,
                            desc="tokenize instructions")
    return tokenized.filter(lambda labels: any(t != IGNORE_INDEX for t in labels),
                            input_columns="labels", desc="drop prompt-only examples")


# ----------------------------------------------------------------------------- the run's view

def load(name: str, split: str, data_dir: str | Path | None = None) -> datasets.Dataset:
    return load_instruction(name, split, data_dir)


def _pad_right(rows: list[list[int]], value: int) -> torch.Tensor:
    return torch.nn.utils.rnn.pad_sequence([torch.tensor(r, dtype=torch.long) for r in rows], batch_first=True,
                                           padding_value=value)


@torch.inference_mode()
def _batch_loss(model, ids: list[list[int]], labels: list[list[int]], pad_id: int) -> tuple[torch.Tensor, int]:
    """(summed cross-entropy, count) over the response tokens of one right-padded batch. Only the
    positions that predict a response token go through the LM head (logits_to_keep as a boolean
    mask), so memory grows with the response tokens, not batch x length x vocabulary."""
    from lorafa.tasks.mmlu import _accepts

    device = next(model.parameters()).device
    input_ids, targets = _pad_right(ids, pad_id).to(device), _pad_right(labels, IGNORE_INDEX).to(device)
    mask = _pad_right([[1] * len(r) for r in ids], 0).to(device)
    # Position t predicts token t + 1 (the shift inside every HF causal-LM loss).
    predicts = torch.zeros_like(targets, dtype=torch.bool)
    predicts[:, :-1] = targets[:, 1:] != IGNORE_INDEX
    kwargs = {"logits_to_keep": predicts} if _accepts(model, "logits_to_keep", via_kwargs=False) else {}
    logits = model(input_ids=input_ids, attention_mask=mask, **kwargs).logits
    if logits.dim() == 3:  # the model ignored the mask: every position came back
        logits = logits[predicts]
    gold = targets[:, 1:][predicts[:, :-1]]
    loss = torch.nn.functional.cross_entropy(logits.float(), gold, reduction="sum")
    return loss.double().cpu(), int(gold.numel())


def response_loss(model, dataset: datasets.Dataset, batch_size: int = 16, pad_id: int = 0,
                  progress: bool = True) -> dict[str, float]:
    """heldout_loss: the summed cross-entropy of every response token (label != -100, as
    tokenize_instruction sets them) over their number, so that long responses weigh by their
    tokens, as in training; with heldout_tokens and heldout_n (examples). Batched in order of
    length, right-padded (padding is masked out and carries no label), no grad, model.eval()."""
    ids, labels = list(dataset["input_ids"]), list(dataset["labels"])
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    total, count = torch.zeros((), dtype=torch.float64), 0
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, len(order), batch_size), desc="held-out loss", disable=not progress):
            index = order[start:start + batch_size]
            loss, n = _batch_loss(model, [ids[i] for i in index], [labels[i] for i in index], pad_id)
            total, count = total + loss, count + n
    finally:
        model.train(was_training)
    return {"heldout_loss": total.item() / count if count else float("nan"), "heldout_tokens": count,
            "heldout_n": len(order)}


def instruction_final_eval(task, tokenizer, held_out, data, batch_size: int, progress: bool = True):
    """final_eval(model) -> the run's metrics: held-out loss, CoT accuracy (tasks that list
    cot_accuracy), then MMLU unless data.mmlu_subjects is []. The held-out set is tokenised now,
    so a problem with it shows before any training."""
    from lorafa.tasks.cot import evaluate_cot
    from lorafa.tasks.mmlu import mmlu_final_eval

    tokenized = tokenize_instruction(held_out, tokenizer, data.max_length) if held_out is not None else None
    if tokenized is not None and len(tokenized) == 0:
        raise ValueError(f"data.max_length={data.max_length} leaves no held-out {task.name} example with a "
                         f"response token; raise it")
    pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)
    mmlu = mmlu_final_eval(tokenizer, data, batch_size) if data.runs_mmlu else None

    def final_eval(model) -> dict:
        metrics = {}
        if tokenized is not None:
            metrics.update(response_loss(model, tokenized, batch_size, pad_id, progress))
            if "cot_accuracy" in task.metrics and data.cot_max_examples != 0:
                metrics.update(evaluate_cot(model, tokenizer, held_out, data.cot_max_new_tokens, batch_size,
                                            data.cot_max_examples, progress))
        if mmlu is not None:
            metrics.update(mmlu(model))
        return metrics

    return final_eval


def prepare(task, tokenizer, splits, data, eval_batch_size: int):
    """Instruction tuning: no evaluation inside the Trainer; afterwards the held-out rows and
    MMLU k-shot (Table 4). With no training set (method=base) the same evaluation, of the base model."""
    from transformers import DataCollatorForSeq2Seq

    from lorafa.tasks.data import PreparedTask

    held_out = splits.evals.get("")
    if splits.train is None and held_out is None and not data.runs_mmlu:
        raise ValueError(f"data.mmlu_subjects=[] with data.eval_from_train=0 leaves a base-model run on "
                         f"{task.name} nothing to evaluate; allowed: a held-out set, MMLU subjects, or both")
    train = None
    if splits.train is not None:
        train = tokenize_instruction(splits.train, tokenizer, data.max_length)
        if len(train) == 0:
            raise ValueError(f"data.max_length={data.max_length} leaves no {task.name} example with a response "
                             f"token; raise it")
    return PreparedTask(train=train, evals={},
                        collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX, padding=True),
                        final_eval=instruction_final_eval(task, tokenizer, held_out, data, eval_batch_size))
