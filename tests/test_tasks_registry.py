"""The task registry: the config names the experiments use, and their invariants."""

import pytest

from lorafa.tasks.registry import FAMILIES, TASKS, get_task

CONFIG_NAMES = ["glue/cola", "glue/sst2", "glue/mrpc", "glue/qqp", "glue/stsb", "glue/mnli",
                "glue/qnli", "glue/rte", "wmt16_en_ro", "alpaca", "flanv2", "flan_cot", "mmlu"]


def test_config_names():
    assert sorted(TASKS) == sorted(CONFIG_NAMES)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_spec_is_consistent(name):
    spec = get_task(name)
    assert spec.name == name and spec.family in FAMILIES
    assert spec.primary_metric in spec.metrics
    assert set(spec.local_files) <= set(spec.splits)
    if spec.family in ("classification", "regression"):
        assert spec.num_labels == (1 if spec.family == "regression" else len(spec.label_names))
    if spec.family == "instruction":
        assert spec.eval_task == "mmlu" and "heldout_loss" in spec.metrics and spec.held_out.n == 100


def test_paper_primary_metrics():
    assert get_task("glue/cola").primary_metric == "mcc"
    assert get_task("glue/stsb").primary_metric == "pearson"
    assert get_task("glue/mnli").eval_splits == ("validation_matched", "validation_mismatched")
    assert get_task("wmt16_en_ro").metrics == ("bleu", "rougeL")
    assert get_task("mmlu").primary_metric == "accuracy"


def test_flan_cot_is_not_labelled_flan_v2():
    spec = get_task("flan_cot")
    assert spec.label.startswith("FLAN v2 CoT source files") and spec.hub_id is None
    assert spec.notes.startswith("FLAN v2 chain-of-thought source files (AQuA, QASC, StrategyQA), not the "
                                 "templated FLAN v2 mixture")
    assert spec.held_out.by == "source" and "cot_accuracy" in spec.metrics


def test_unknown_name_lists_available():
    with pytest.raises(ValueError) as err:
        get_task("glue/wnli")
    assert "glue/wnli" in str(err.value)
    assert all(name in str(err.value) for name in CONFIG_NAMES)


@pytest.mark.parametrize("name,split,rows", [("glue/rte", "validation", 277),
                                             ("wmt16_en_ro", "validation", 1_999),
                                             ("alpaca", "train", 999),
                                             ("flan_cot", "train", 2_728 + 1_084 + 2_061),
                                             ("mmlu", "dev", 285)])
def test_load_split_dispatches_by_family(name, split, rows):
    from lorafa.tasks import load_split
    assert len(load_split(name, split)) == rows


def test_registry_import_is_light():
    import subprocess
    import sys
    code = "import sys, lorafa.tasks; print('torch' in sys.modules, 'datasets' in sys.modules)"
    from lorafa.paths import REPO_ROOT
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO_ROOT)
    assert out.stdout.split() == ["False", "False"]
