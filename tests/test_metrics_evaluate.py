"""The metrics are `evaluate` modules in the package: evaluate.load on their directories
works offline, and what they compute is exactly what scikit-learn, scipy, sacrebleu and
rouge-score give on the same inputs (and what glue_metrics / translation_metrics gave
before they went through evaluate)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from lorafa import metrics
from lorafa.metrics import load_metric, module_dir
from lorafa.tasks.glue import GLUE_TASKS, glue_metrics
from lorafa.tasks.registry import get_task
from lorafa.tasks.translation import translation_metrics

ROOT = Path(__file__).resolve().parents[1]
N = 300

# Decoded generations: leading/trailing spaces, diacritics, partial and no overlap,
# inflections a stemmer would merge.
PREDS = [" Fostul șef al cabinetului a fost trimis în judecată", "un test simplu aici ",
         "Guvernul a aprobat ieri bugetul pe anul viitor.", "nimic comun",
         "the cat lay on a mat", "the cats were sitting on mats"]
REFS = ["Fostul șef al cabinetului prezidențial va fi judecat", " un test simplu",
        "Ieri, Guvernul a aprobat bugetul pentru anul viitor.", "cu totul altceva",
        "the cat sat on the mat", "a cat sits on the mat"]


def _classes(task: str) -> int:
    return get_task(f"glue/{task}").num_labels


def _arrays(task: str, seed: int = 0):
    """Trainer-shaped eval arrays: float32 logits, gold labels as the loader stores them
    (int64 ids; float32 scores for STS-B). Predictions agree with gold about 70% of the
    time so every metric is far from 0 and 1."""
    rng = np.random.default_rng(seed)
    if task == "stsb":
        gold = rng.uniform(0, 5, N).astype(np.float32)
        logits = (gold + rng.normal(0, 1.2, N)).astype(np.float32)[:, None]
        return logits, gold
    k = _classes(task)
    gold = rng.integers(0, k, N).astype(np.int64)
    right = rng.random(N) < 0.7
    ids = np.where(right, gold, rng.integers(0, k, N))
    logits = rng.normal(0, 1, (N, k)).astype(np.float32)
    logits[np.arange(N), ids] += 5.0
    return logits, gold


def _direct_glue(task: str, preds, gold) -> dict:
    """glue_metrics as it was before evaluate: sklearn/scipy on the arrays themselves."""
    if task == "stsb":
        return {"pearson": float(pearsonr(preds, gold)[0]), "spearman": float(spearmanr(preds, gold)[0])}
    out = {"accuracy": float(accuracy_score(gold, preds))}
    if task == "cola":
        out["mcc"] = float(matthews_corrcoef(gold, preds))
    if task in ("mrpc", "qqp"):
        out["f1"] = float(f1_score(gold, preds))
    return out


def _class_ids(task: str, logits):
    return logits[:, 0] if task == "stsb" else logits.argmax(-1)


def _direct_translation(preds, refs) -> dict:
    preds, refs = [p.strip() for p in preds], [r.strip() for r in refs]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rouge = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs)]
    return {"bleu": float(sacrebleu.corpus_bleu(preds, [refs]).score),
            "rougeL": float(100.0 * np.mean(rouge))}


# evaluate and huggingface_hub read their offline settings when first imported, and this
# process imported them long ago, so the offline load runs in a fresh interpreter with the
# variable set from the start. An audit hook there refuses every socket: a load that
# needed the hub would fail rather than quietly use the network.
OFFLINE_SCRIPT = """
import json, socket, sys

def no_network(event, args):
    if event in ("socket.connect", "socket.getaddrinfo"):
        raise ConnectionRefusedError(f"network used offline: {event} {args}")

sys.addaudithook(no_network)
try:
    socket.create_connection(("huggingface.co", 443), timeout=1)
    sys.exit("the audit hook let a connection through")
except ConnectionRefusedError:
    pass

import evaluate
from huggingface_hub import constants
assert constants.HF_HUB_OFFLINE, "HF_HUB_OFFLINE not in effect"

jobs = json.loads(sys.stdin.read())
out = {}
for key, (path, config, preds, refs) in jobs.items():
    metric = evaluate.load(path, config_name=config, keep_in_memory=True)
    out[key] = metric.compute(predictions=preds, references=refs)
print(json.dumps(out))
"""


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_evaluate_load_by_path_works_offline_and_equals_direct(tmp_path):
    jobs, expected = {}, {}
    for task in GLUE_TASKS:
        logits, gold = _arrays(task)
        preds = _class_ids(task, logits)
        jobs[task] = (str(module_dir("glue")), task, preds.tolist(), gold.tolist())
        expected[task] = _direct_glue(task, preds, gold)
    jobs["translation"] = (str(module_dir("translation")), None, PREDS, REFS)
    expected["translation"] = _direct_translation(PREDS, REFS)

    before = _files(ROOT / "lorafa" / "metrics")
    hf_home = tmp_path / "hf"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(hf_home), PYTHONPATH=str(ROOT))
    env.pop("HF_EVALUATE_OFFLINE", None)  # HF_HUB_OFFLINE alone must do
    proc = subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT], input=json.dumps(jobs),
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])

    # STS-B goes to the module as float32 values in JSON and comes back computed in
    # float32, as scipy does on the float32 arrays.
    assert got == expected
    for task in ("cola", "mrpc", "stsb"):
        assert 0.2 < min(got[task].values()) < max(got[task].values()) < 0.95
    assert 5 < got["translation"]["bleu"] < 60 and 30 < got["translation"]["rougeL"] < 90

    # evaluate copies the scripts into HF_HOME's modules cache; the package tree is untouched.
    assert _files(ROOT / "lorafa" / "metrics") == before
    copies = {p.name for p in (hf_home / "modules").rglob("*.py")}
    assert {"glue.py", "translation.py"} <= copies


@pytest.mark.parametrize("task", GLUE_TASKS)
def test_glue_metrics_on_trainer_arrays_equal_sklearn_scipy(task):
    logits, gold = _arrays(task, seed=1)
    got = glue_metrics(task, logits, gold)
    want = _direct_glue(task, _class_ids(task, logits), gold)
    assert list(got.items()) == list(want.items())  # values bit for bit, keys in order
    assert set(got) == set(get_task(f"glue/{task}").metrics)


@pytest.mark.filterwarnings("ignore")  # sklearn/scipy warn about these inputs, as they should
def test_glue_edge_cases_are_the_libraries():
    # constant predictions: sklearn's MCC is 0 (not NaN); F1 of an all-negative guess is 0
    gold = np.array([0, 1, 1, 0, 1])
    assert glue_metrics("cola", [1, 1, 1, 1, 1], gold) == {"accuracy": 0.6, "mcc": 0.0}
    assert glue_metrics("mrpc", [0, 0, 0, 0, 0], gold) == {"accuracy": 0.4, "f1": 0.0}
    # a constant regression output has no correlation: NaN, as scipy says
    got = glue_metrics("stsb", np.full((4, 1), 2.5, np.float32), np.array([1, 2, 3, 4], np.float32))
    assert math.isnan(got["pearson"]) and math.isnan(got["spearman"])


def test_stsb_float64_input_is_scored_in_float32():
    rng = np.random.default_rng(2)
    preds, gold = rng.normal(size=50), rng.normal(size=50)
    got = glue_metrics("stsb", preds, gold)
    assert got == _direct_glue("stsb", preds.astype(np.float32), gold.astype(np.float32))
    assert got["pearson"] == pytest.approx(pearsonr(preds, gold)[0], abs=1e-6)


def test_translation_metrics_equal_sacrebleu_rouge_score():
    got = translation_metrics(PREDS, REFS)
    assert list(got.items()) == list(_direct_translation(PREDS, REFS).items())
    assert got != translation_metrics(PREDS[::-1], REFS)  # the inputs matter


def test_loaded_once_per_process():
    assert load_metric("glue", "rte") is load_metric("glue", config_name="rte")
    assert load_metric("glue", "rte") is not load_metric("glue", "qnli")
    assert load_metric("translation") is load_metric("translation")


def test_unknown_names():
    with pytest.raises(ValueError, match="available: glue, translation"):
        load_metric("bleu")
    with pytest.raises(ValueError, match="unknown GLUE task 'wnli'"):
        load_metric("glue", "wnli")
    assert metrics.METRICS == tuple(sorted(p.name for p in module_dir("glue").parent.iterdir()
                                           if (p / f"{p.name}.py").is_file()))
