"""The paper's tasks: data loading, preprocessing and metrics, one module per family.

    registry     TaskSpec / TASKS / get_task: config names -> family, data, metrics
    glue         GLUE TSVs, tokenize_glue, glue_metrics, mnli_average
    translation  WMT16 En->Ro, tokenize_translation (T5 prefix), BLEU / ROUGE-L
    instruct     Alpaca / FLAN v2, tokenize_instruction (loss on the response only)
    mmlu         MMLU CSVs, k-shot prompts, evaluate_mmlu

Each loader reads the original release files under the data dir (argument `data_dir`,
else $LORAFA_DATA_DIR, else ../shared/data) and falls back to the Hugging Face hub.
The family modules import datasets/torch, so they load only when used.
"""

from __future__ import annotations

from pathlib import Path

from lorafa.tasks.registry import FAMILIES, TASKS, TaskSpec, get_task

__all__ = ["FAMILIES", "TASKS", "TaskSpec", "get_task", "load_split"]


def load_split(name: str, split: str, data_dir: str | Path | None = None):
    """One split of any task as a datasets.Dataset in its family's columns (MMLU: all
    57 subjects concatenated)."""
    spec = get_task(name)
    if spec.family in ("classification", "regression"):
        from lorafa.tasks.glue import load_glue
        return load_glue(name, split, data_dir)
    if spec.family == "seq2seq":
        from lorafa.tasks.translation import load_wmt16
        return load_wmt16(split, data_dir)
    if spec.family == "instruction":
        from lorafa.tasks.instruct import load_instruction
        return load_instruction(name, split, data_dir)
    import datasets

    from lorafa.tasks.mmlu import SUBJECTS, load_mmlu
    return datasets.concatenate_datasets([load_mmlu(s, split, data_dir) for s in SUBJECTS])
