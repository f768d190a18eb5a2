"""Chain-of-thought instruction data: the FLAN v2 CoT source files (AQuA, QASC, StrategyQA),
and `cot_accuracy`, the score of a model's own chain of thought on held-out questions.

These are the raw files the FLAN authors release under flan/v2/cot_data (headerless TSV:
question, answer, rationale; a literal `\\n` inside a field is a line break), NOT the templated
FLAN v2 mixture that QLoRA / Tulu train on: results on them are labelled as such.

Each row becomes one instruction example in the Alpaca format (lorafa.tasks.instruct):
    instruction = the question, options included; input = ""
    output      = TARGET_TEMPLATE: "{rationale}\\nSo the answer is {answer}."
plus `source` (aqua | qasc | strategyqa) and the gold `answer` ("(C)" or "yes"/"no") for scoring.

cot_accuracy: greedy generation from the training prompt, the answer read by `extract_answer`
(its docstring is the rule), compared with the gold answer; the same for every model.
"""

from __future__ import annotations

import re
from pathlib import Path

import datasets
import torch
from tqdm.auto import tqdm

from lorafa.tasks.common import local_path, malformed
from lorafa.tasks.registry import check_split, get_task

__all__ = ["SOURCES", "TARGET_TEMPLATE", "load_flan_cot", "extract_answer", "normalise_gold",
           "generate_responses", "evaluate_cot"]

SOURCES = ("aqua", "qasc", "strategyqa")  # file stems: {source}_train.tsv
TARGET_TEMPLATE = "{rationale}\nSo the answer is {answer}."
ANSWER_PHRASE = "the answer is"
# The options each source's questions offer: AQuA (A)-(E), QASC (A)-(H), StrategyQA yes/no.
CHOICES = {"aqua": "ABCDE", "qasc": "ABCDEFGH", "strategyqa": ("yes", "no")}

_FEATURES = datasets.Features({k: datasets.Value("string")
                               for k in ("instruction", "input", "output", "source", "answer")})


def _unescape(field: str) -> str:
    """A literal backslash-n is the files' line break; other backslashes are the text's own
    (AQuA's rationales hold TeX such as `\\frac`), so they stay."""
    return field.replace("\\n", "\n")


def _check_answer(source: str, answer: str, path: Path, lineno: int) -> None:
    choices = CHOICES[source]
    allowed = list(choices) if source == "strategyqa" else [f"({c})" for c in choices]
    if answer not in allowed:
        raise malformed(path, lineno, f"answer {answer!r} is not one of {allowed}")


def _read_cot_tsv(path: Path, source: str) -> dict[str, list[str]]:
    rows = {k: [] for k in _FEATURES}
    with open(path, encoding="utf-8", newline="\n") as f:  # not CSV-quoted: split on tabs only
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            fields = line.split("\t")
            if len(fields) != 3 or not fields[0].strip() or not fields[2].strip():
                raise malformed(path, lineno, f"expected 3 tab-separated fields question, answer, rationale "
                                              f"(question and rationale non-empty), got {len(fields)}: {line!r:.200}")
            question, answer, rationale = (_unescape(x).strip() for x in fields)
            _check_answer(source, answer, path, lineno)
            rows["instruction"].append(question)
            rows["input"].append("")
            rows["output"].append(TARGET_TEMPLATE.format(rationale=rationale, answer=answer))
            rows["source"].append(source)
            rows["answer"].append(answer)
    return rows


def _read_cot_folder(folder: Path) -> datasets.Dataset:
    rows = {k: [] for k in _FEATURES}
    for source in SOURCES:
        for key, values in _read_cot_tsv(folder / f"{source}_train.tsv", source).items():
            rows[key].extend(values)
    return datasets.Dataset.from_dict(rows, features=_FEATURES)


def load_flan_cot(split: str = "train", data_dir: str | Path | None = None) -> datasets.Dataset:
    """The three source files' rows, in file order (AQuA, then QASC, then StrategyQA), as
    instruction/input/output/source/answer. Local only: the hub holds no copy of these files."""
    spec = get_task("flan_cot")
    check_split(spec, split)
    folder = local_path(spec, split, data_dir)
    missing = [str(folder / f"{s}_train.tsv") for s in SOURCES if not (folder / f"{s}_train.tsv").is_file()]
    if missing:
        raise FileNotFoundError(f"flan_cot split {split!r} is local only and needs {', '.join(missing)} "
                                f"(google-research/FLAN, flan/v2/cot_data); set LORAFA_DATA_DIR / data.dir")
    return _read_cot_folder(folder)


# ----------------------------------------------------------------------------- answers

_PHRASE = re.compile(re.escape(ANSWER_PHRASE), re.IGNORECASE)
_STOP = "###"  # the prompt format's section marker: a model that writes it has left its response
_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def _letters(source: str) -> re.Pattern:
    return re.compile(rf"\(([{CHOICES[source]}])\)", re.IGNORECASE)


def extract_answer(text: str, source: str) -> str | None:
    """The answer a generated response gives, normalised ("C", "yes"), or None. The rule:

    1. The response ends where the model writes "###" (it has started a new prompt section).
    2. If it contains "the answer is" (any case), only the text after the LAST occurrence is read,
       and the FIRST option there counts: "(X)" for AQuA / QASC, the word yes / no for StrategyQA.
    3. Otherwise (a model that never learnt the format) the LAST option mentioned anywhere in
       the response counts.
    Option letters are read in either case and must be among the source's options (AQuA A-E,
    QASC A-H); a bare letter without parentheses is not an answer.
    """
    if source not in CHOICES:
        raise ValueError(f"source={source!r} is invalid; allowed: {', '.join(CHOICES)}")
    text = text.split(_STOP, 1)[0]
    tail = _PHRASE.split(text)[-1] if _PHRASE.search(text) else None
    pattern = _YES_NO if source == "strategyqa" else _letters(source)
    found = pattern.findall(tail if tail is not None else text)
    if not found:
        return None
    pick = found[0] if tail is not None else found[-1]
    return pick.lower() if source == "strategyqa" else pick.upper()


def normalise_gold(answer: str, source: str) -> str:
    """The gold answer as extract_answer writes it: "(C)" -> "C", "Yes" -> "yes"."""
    return answer.strip().lower() if source == "strategyqa" else answer.strip().strip("()").upper()


def has_answer_phrase(text: str) -> bool:
    return _PHRASE.search(text.split(_STOP, 1)[0]) is not None


# ----------------------------------------------------------------------------- generation

@torch.inference_mode()
def generate_responses(model, tokenizer, prompts: list[list[int]], max_new_tokens: int = 128,
                       batch_size: int = 16, progress: bool = True) -> list[str]:
    """Greedy continuations of token-id prompts (do_sample=False, one beam, the model's own
    generation defaults overridden), batched with left padding in order of length, decoded
    without special tokens; returned in the prompts' order."""
    from transformers import GenerationConfig

    pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id)
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    texts = [""] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, len(order), batch_size), desc="CoT generation", disable=not progress):
            index = order[start:start + batch_size]
            seqs = [torch.tensor(prompts[i], dtype=torch.long) for i in index]
            ids = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=pad_id, padding_side="left")
            mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(s) for s in seqs], batch_first=True,
                                                   padding_value=0, padding_side="left")
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
            for i, text in zip(index, tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)):
                texts[i] = text
    finally:
        model.train(was_training)
    return texts


def cot_scores(responses: list[str], sources: list[str], answers: list[str]) -> dict[str, float]:
    """cot_accuracy (over every row), cot_accuracy/<source>, cot_format_rate (the fraction of
    responses that say "the answer is": the rest were read by the fallback) and cot_n."""
    correct = [extract_answer(r, s) == normalise_gold(a, s) for r, s, a in zip(responses, sources, answers)]
    n = len(correct)
    scores = {"cot_accuracy": sum(correct) / n if n else float("nan"), "cot_n": n,
              "cot_format_rate": sum(map(has_answer_phrase, responses)) / n if n else float("nan")}
    for source in dict.fromkeys(sources):
        mine = [c for c, s in zip(correct, sources) if s == source]
        scores[f"cot_accuracy/{source}"] = sum(mine) / len(mine)
    return scores


def evaluate_cot(model, tokenizer, dataset: datasets.Dataset, max_new_tokens: int = 128, batch_size: int = 16,
                 max_examples: int | None = None, progress: bool = True) -> dict[str, float]:
    """cot_scores of the model's greedy responses to the first max_examples rows of `dataset`
    (instruction/input/source/answer), prompted exactly as training formats them."""
    from lorafa.tasks.instruct import prompt_token_ids

    if max_examples is not None:
        dataset = dataset.select(range(min(max_examples, len(dataset))))
    prompts = prompt_token_ids(tokenizer, dataset["instruction"], dataset["input"])
    responses = generate_responses(model, tokenizer, prompts, max_new_tokens, batch_size, progress)
    return cot_scores(responses, list(dataset["source"]), list(dataset["answer"]))
