"""The paper's tasks: data loading, preprocessing and metrics, one module per family.

    registry     TaskSpec / TASKS / get_task: config names -> family, data, metrics
    glue         GLUE TSVs, tokenize_glue, glue_metrics, mnli_average
    translation  WMT16 En->Ro, tokenize_translation (T5 prefix), BLEU / ROUGE-L
    instruct     Alpaca / FLAN v2 / FLAN CoT, tokenize_instruction (loss on the response only),
                 held-out loss; cot: the FLAN v2 CoT source files and cot_accuracy
    mmlu         MMLU CSVs, k-shot prompts, evaluate_mmlu
    data         DataSpec (the `data` config), load_splits, prepare_task: each family module's
                 `load` and `prepare` give a run its tokenised splits, collator and metrics

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
    from lorafa.tasks.data import family_module

    return family_module(get_task(name)).load(name, split, data_dir)
