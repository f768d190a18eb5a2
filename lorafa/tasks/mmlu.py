"""MMLU (Hendrycks et al.) k-shot evaluation in the standard format, scored by the
next-token log-probabilities of " A" / " B" / " C" / " D" (paper: 5-shot, Table 4).

Loaded splits have the columns `question`, `choices` (4 strings), `answer` (0..3)
and `subject`.
"""

from __future__ import annotations

import csv
import inspect
from pathlib import Path
from typing import Callable, Sequence

import datasets
import torch
from tqdm.auto import tqdm

from lorafa.tasks.common import load_local_or_hub, local_path, malformed
from lorafa.tasks.registry import check_split, get_task

__all__ = ["SUBJECTS", "LETTERS", "load_mmlu", "format_example", "build_prompt",
           "candidate_token_ids", "evaluate_mmlu", "mmlu_metrics_flat"]

LETTERS = ("A", "B", "C", "D")
HEADER = "The following are multiple choice questions (with answers) about {subject}.\n\n"

SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge",
    "college_biology", "college_chemistry", "college_computer_science", "college_mathematics",
    "college_medicine", "college_physics", "computer_security", "conceptual_physics",
    "econometrics", "electrical_engineering", "elementary_mathematics", "formal_logic",
    "global_facts", "high_school_biology", "high_school_chemistry",
    "high_school_computer_science", "high_school_european_history", "high_school_geography",
    "high_school_government_and_politics", "high_school_macroeconomics",
    "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history",
    "high_school_world_history", "human_aging", "human_sexuality", "international_law",
    "jurisprudence", "logical_fallacies", "machine_learning", "management", "marketing",
    "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law",
    "professional_medicine", "professional_psychology", "public_relations",
    "security_studies", "sociology", "us_foreign_policy", "virology", "world_religions",
)

_FEATURES = datasets.Features({
    "question": datasets.Value("string"),
    "choices": datasets.Sequence(datasets.Value("string"), length=4),
    "answer": datasets.Value("int64"),
    "subject": datasets.Value("string"),
})


def _check_subject(subject: str) -> None:
    if subject not in SUBJECTS:
        raise ValueError(f"subject: unknown MMLU subject {subject!r}; available: {', '.join(SUBJECTS)}")


def _read_csv(path: Path, subject: str) -> datasets.Dataset:
    rows = {k: [] for k in _FEATURES}
    # newline="" lets the csv module see quoted multi-line fields and CRLF endings.
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        start = 1
        for row in reader:
            if len(row) != 6 or row[5].strip() not in LETTERS:
                raise malformed(path, start, f"expected question,A,B,C,D,answer with answer "
                                             f"in A-D, got {len(row)} fields: {row!r:.200}")
            # Line endings inside quoted fields vary by file; prompts should not.
            q, *choices = (field.replace("\r\n", "\n") for field in row[:5])
            rows["question"].append(q)
            rows["choices"].append(choices)
            rows["answer"].append(LETTERS.index(row[5].strip()))
            rows["subject"].append(subject)
            start = reader.line_num + 1
    return datasets.Dataset.from_dict(rows, features=_FEATURES)


def load_mmlu(subject: str, split: str, data_dir: str | Path | None = None) -> datasets.Dataset:
    """One subject's "dev" (the 5 shots), "validation" or "test" questions, from
    data_dir/mmlu/{dev,val,test}/{subject}_{dev,val,test}.csv, else cais/mmlu."""
    _check_subject(subject)
    spec = get_task("mmlu")
    check_split(spec, split)
    folder = local_path(spec, split, data_dir)
    path = folder / f"{subject}_{folder.name}.csv"

    def from_hub(ds: datasets.Dataset) -> datasets.Dataset:
        ds = ds.select_columns(["question", "choices", "answer"])
        ds = ds.map(lambda _: {"subject": subject}, desc=f"mmlu {subject}")
        return ds.cast(_FEATURES)

    return load_local_or_hub(spec, split, data_dir, read_local=lambda p: _read_csv(p, subject),
                             from_hub=from_hub, hub_config=subject, path=path)


def format_example(example: dict, include_answer: bool = True) -> str:
    text = example["question"]
    for letter, choice in zip(LETTERS, example["choices"]):
        text += f"\n{letter}. {choice}"
    text += "\nAnswer:"
    if include_answer:
        text += f" {LETTERS[example['answer']]}\n\n"
    return text


def build_prompt(subject: str, shots: Sequence[dict], example: dict) -> str:
    """Header, the shots with their answers, then the question ending in "Answer:".

    The header names the subject with single spaces (as lm-eval-harness does; the
    original code's format_subject left a double space)."""
    header = HEADER.format(subject=subject.replace("_", " "))
    return header + "".join(format_example(s) for s in shots) + format_example(example, False)


def candidate_token_ids(tokenizer) -> list[int]:
    """Token ids whose next-token logits are compared: the last token of " A" etc.,
    i.e. the answer letter as it follows "Answer:"."""
    ids = [tokenizer(f" {c}", add_special_tokens=False)["input_ids"][-1] for c in LETTERS]
    if len(set(ids)) != len(ids):
        raise ValueError(f"tokenizer: answer letters share token ids {ids}")
    return ids


def _encode_prompt(tokenizer, subject, shots, example, k, max_length):
    """Token ids of the k-shot prompt, dropping shots from the end until it fits
    max_length (as the original MMLU code does); left-truncated only if even 0-shot
    does not fit. Returns (ids, shots used, left-truncated?)."""
    while True:
        ids = tokenizer(build_prompt(subject, shots[:k], example))["input_ids"]
        if len(ids) <= max_length or k == 0:
            break
        k -= 1
    if len(ids) > max_length:
        return ids[-max_length:], k, True
    return ids, k, False


def _accepts(model, name: str, via_kwargs: bool) -> bool:
    params = inspect.signature(model.forward).parameters
    return name in params or (via_kwargs and any(p.kind is p.VAR_KEYWORD for p in params.values()))


def _pad(batch: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, batch))
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, seq in enumerate(batch):
        span = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[i, span] = torch.tensor(seq, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


@torch.inference_mode()
def _predict(model, batch_ids: list[list[int]], cand: torch.Tensor, pad_id: int,
             left: bool) -> torch.Tensor:
    device = next(model.parameters()).device
    ids, mask = _pad(batch_ids, pad_id, left)
    ids, mask = ids.to(device), mask.to(device)
    kwargs = {}
    if left and _accepts(model, "position_ids", via_kwargs=True):
        # Left padding would otherwise shift every real token's position.
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    # Real tokens are contiguous, so the highest masked-in position is the last real one.
    last = (mask * torch.arange(mask.shape[1], device=device)).argmax(-1)
    keep = torch.unique(last)  # sorted
    # Only a named parameter counts: an unknown kwarg may reach code that rejects it.
    if _accepts(model, "logits_to_keep", via_kwargs=False):
        # Only these positions go through the LM head: the full (batch, length, vocab)
        # logits of few-shot prompts would dwarf the model's own activations.
        kwargs["logits_to_keep"] = keep
    logits = model(input_ids=ids, attention_mask=mask, **kwargs).logits
    # A model that ignored logits_to_keep returns every position; if the two lengths
    # coincide, keep is every position and both indexings agree.
    col = torch.searchsorted(keep, last) if logits.shape[1] == len(keep) else last
    next_logits = logits[torch.arange(len(batch_ids), device=device), col]
    return next_logits[:, cand.to(device)].float().argmax(-1).cpu()


def evaluate_mmlu(model, tokenizer, subjects: Sequence[str] | None = None, split: str = "test",
                  k: int = 5, max_examples_per_subject: int | None = None, batch_size: int = 8,
                  max_length: int | None = None, data_dir: str | Path | None = None,
                  progress: bool = True) -> dict:
    """k-shot MMLU accuracy of a causal LM: per question, the letter among A-D whose
    token has the highest next-token logit after the prompt (the argmax of the
    log-probabilities is the same).

    Returns {"accuracy": micro-average over all questions, "n", "per_subject":
    {subject: accuracy}, "per_subject_n", "k", "n_fewer_shots" (questions whose prompt
    had shots dropped to fit max_length), "n_truncated" (questions cut even at 0-shot),
    "predictions": {subject: predicted letters in file order}}.
    Padding follows tokenizer.padding_side; either side gives the same answers.
    max_length defaults to the model's context (at most 2048, LLaMA's).
    """
    subjects = list(dict.fromkeys(SUBJECTS if subjects is None else subjects))
    for s in subjects:
        _check_subject(s)
    if max_length is None:
        max_length = min(getattr(model.config, "max_position_embeddings", 2048) or 2048, 2048)
    items, fewer_shots, truncated = _prompts(tokenizer, subjects, split, k, max_examples_per_subject, max_length,
                                             data_dir, progress)
    predicted = _predict_all(model, tokenizer, [ids for _, ids, _ in items], batch_size, progress)
    correct, count = dict.fromkeys(subjects, 0), dict.fromkeys(subjects, 0)
    predictions = {s: [] for s in subjects}
    for (subject, _, answer), pred in zip(items, predicted):
        correct[subject] += pred == answer
        count[subject] += 1
        predictions[subject].append(LETTERS[pred])
    total = sum(count.values())
    return {
        "accuracy": sum(correct.values()) / total if total else float("nan"),
        "n": total,
        "per_subject": {s: correct[s] / count[s] if count[s] else float("nan") for s in subjects},
        "per_subject_n": count,
        "k": k,
        "n_fewer_shots": fewer_shots,
        "n_truncated": truncated,
        "predictions": predictions,
    }


def _prompts(tokenizer, subjects, split, k, max_examples, max_length, data_dir, progress) -> tuple[list, int, int]:
    """([(subject, prompt ids, answer)], questions with fewer shots, questions truncated)."""
    items, fewer_shots, truncated = [], 0, 0
    for subject in tqdm(subjects, desc="MMLU prompts", disable=not progress):
        shots = list(load_mmlu(subject, "dev", data_dir))[:k] if k else []
        if len(shots) < k:
            raise ValueError(f"k: {subject} has only {len(shots)} dev examples, asked for {k}")
        questions = load_mmlu(subject, split, data_dir)
        if max_examples is not None:
            questions = questions.select(range(min(max_examples, len(questions))))
        for ex in questions:
            ids, used, cut = _encode_prompt(tokenizer, subject, shots, ex, k, max_length)
            fewer_shots += used < k
            truncated += cut
            items.append((subject, ids, ex["answer"]))
    return items, fewer_shots, truncated


def _predict_all(model, tokenizer, prompts: list[list[int]], batch_size: int, progress: bool) -> list[int]:
    """The predicted letter index of every prompt, in the prompts' order. Length-sorted batches
    waste less compute on padding; results are order-free."""
    cand = torch.tensor(candidate_token_ids(tokenizer))
    pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)
    left = tokenizer.padding_side == "left"
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    predicted = [0] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, len(order), batch_size), desc="MMLU", disable=not progress):
            index = order[start:start + batch_size]
            preds = _predict(model, [prompts[i] for i in index], cand, pad_id, left)
            for i, pred in zip(index, preds.tolist()):
                predicted[i] = pred
    finally:
        model.train(was_training)
    return predicted


def mmlu_metrics_flat(result: dict, prefix: str = "mmlu_") -> dict[str, float]:
    """evaluate_mmlu's result as the flat {name: value} a run record's metrics hold."""
    flat = {f"{prefix}accuracy": result["accuracy"], f"{prefix}n": result["n"]}
    flat.update({f"{prefix}accuracy/{s}": acc for s, acc in result["per_subject"].items()})
    return flat


# ----------------------------------------------------------------------------- the run's view

def load(name: str, split: str, data_dir: str | Path | None = None) -> datasets.Dataset:
    """Every subject's questions of one split, concatenated."""
    return datasets.concatenate_datasets([load_mmlu(s, split, data_dir) for s in SUBJECTS])


def mmlu_final_eval(tokenizer, data, batch_size: int) -> Callable:
    """final_eval(model) -> {"mmlu_accuracy", "mmlu/<subject>": accuracy}: a run's MMLU score."""
    def final_eval(model) -> dict:
        model.eval()
        result = evaluate_mmlu(model, tokenizer, data.mmlu_subjects, split=data.mmlu_split, k=data.mmlu_k,
                               max_examples_per_subject=data.mmlu_max_examples, batch_size=batch_size,
                               data_dir=data.dir)
        return {"mmlu_accuracy": result["accuracy"], **{f"mmlu/{s}": acc for s, acc in result["per_subject"].items()}}

    return final_eval


def prepare(task, tokenizer, splits, data, eval_batch_size: int):
    """MMLU alone is evaluation only: the base model's k-shot score (Table 4's reference)."""
    from lorafa.tasks.data import PreparedTask

    return PreparedTask(train=None, evals={}, final_eval=mmlu_final_eval(tokenizer, data, eval_batch_size))
