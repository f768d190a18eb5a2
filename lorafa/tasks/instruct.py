"""Instruction tuning data (Alpaca, FLAN v2) in the Alpaca prompt format, tokenised so
the loss falls on the response tokens only.

Loaded datasets have the columns `instruction`, `input` ("" when none), `output`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import datasets

from lorafa.tasks.common import load_local_or_hub, malformed
from lorafa.tasks.registry import check_split, get_task

__all__ = ["PROMPT_INPUT", "PROMPT_NO_INPUT", "IGNORE_INDEX", "load_alpaca", "load_flanv2",
           "load_instruction", "format_prompt", "tokenize_instruction"]

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
    loaders = {"alpaca": load_alpaca, "flanv2": load_flanv2}
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
    bos, eos = _bos_ids(tokenizer), tokenizer.eos_token_id

    def encode(batch):
        prompts = [format_prompt(i, x) for i, x in zip(batch["instruction"], batch["input"])]
        p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        r_ids = tokenizer(batch["output"], add_special_tokens=False)["input_ids"]
        out = {"input_ids": [], "attention_mask": [], "labels": []}
        for p, r in zip(p_ids, r_ids):
            prompt, response = bos + p, r + [eos]
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


def prepare(task, tokenizer, splits, data, eval_batch_size: int):
    """Instruction tuning: no evaluation set while training; MMLU k-shot afterwards (Table 4)."""
    from transformers import DataCollatorForSeq2Seq

    from lorafa.tasks.data import PreparedTask
    from lorafa.tasks.mmlu import mmlu_final_eval

    train = tokenize_instruction(splits.train, tokenizer, data.max_length)
    if len(train) == 0:
        raise ValueError(f"data.max_length={data.max_length} leaves no {task.name} example with a response token; "
                         f"raise it")
    return PreparedTask(train=train, evals={},
                        collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding=True),
                        final_eval=mmlu_final_eval(tokenizer, data, eval_batch_size))
