"""GLUE loaders on the real release files in ../shared/data, and the Table 2 metrics."""

import math

import datasets
import numpy as np
import pytest
from transformers import RobertaTokenizer

from lorafa.paths import data_dir
from lorafa.tasks import common, glue
from lorafa.tasks.glue import glue_metrics, load_glue, mnli_average, tokenize_glue, train_eval_split
from lorafa.tasks.registry import TASKS, get_task

TOK = data_dir() / "tokenizers" / "gpt2"


def _hub_unreachable(monkeypatch):
    def fail(*args, **kwargs):
        raise ConnectionError("offline (test)")
    monkeypatch.setattr(common.datasets, "load_dataset", fail)


@pytest.mark.parametrize("name,split,rows", [
    ("sst2", "train", 67_349), ("sst2", "validation", 872),
    ("cola", "train", 8_551), ("cola", "validation", 1_043),
    ("mrpc", "train", 3_668), ("mrpc", "validation", 408),
    ("rte", "train", 2_490), ("rte", "validation", 277),
    ("stsb", "train", 5_749), ("stsb", "validation", 1_500),
    ("qnli", "validation", 5_463),
])
def test_release_files_load_with_uniform_columns(name, split, rows):
    ds = load_glue(name, split)
    assert len(ds) == rows
    pair = name not in ("sst2", "cola")
    assert ds.column_names == (["sentence1", "sentence2", "label"] if pair else ["sentence1", "label"])
    labels = np.asarray(ds["label"])
    if name == "stsb":
        assert ds.features["label"].dtype == "float32"
        assert labels.min() >= 0.0 and labels.max() <= 5.0
    else:
        assert set(np.unique(labels)) == {0, 1}


def test_mrpc_bom_stripped_and_quotes_left_alone():
    ds = load_glue("mrpc", "validation")
    # The first data row of dev.tsv; its second sentence opens a quote it never closes,
    # which a CSV reader would run on into the following rows.
    assert ds[0] == {
        "sentence1": "He said the foodservice pie business doesn't fit the company's "
                     "long-term growth strategy.",
        "sentence2": '"The foodservice pie business does not fit our long-term growth strategy.',
        "label": 1,
    }
    assert not any("\ufeff" in s for s in ds["sentence1"][:5])


def test_cola_has_no_header_row():
    ds = load_glue("cola", "train")
    assert ds[0] == {"sentence1": "Our friends won't buy this analysis, let alone the next one "
                                  "we propose.", "label": 1}


def test_nli_labels_follow_hub_order():
    # hub: 0 = entailment, 1 = not_entailment; the files spell them out.
    assert get_task("glue/rte").label_names == ("entailment", "not_entailment")
    rte = load_glue("rte", "validation")
    assert rte[0]["sentence2"] == "Christopher Reeve had an accident." and rte[0]["label"] == 1
    qnli = load_glue("qnli", "validation")
    assert qnli[0]["label"] == 0 and qnli[1]["label"] == 1


def test_stsb_score_is_last_column():
    ds = load_glue("stsb", "validation")
    assert ds[0]["sentence1"] == "A man with a hard hat is dancing."
    assert ds[0]["label"] == pytest.approx(5.0) and ds[1]["label"] == pytest.approx(4.75)


def test_missing_file_names_path_and_hub_id(monkeypatch, tmp_path):
    _hub_unreachable(monkeypatch)
    with pytest.raises(FileNotFoundError) as err:
        load_glue("qnli", "train", data_dir=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "glue" / "QNLI" / "train.tsv") in msg
    assert "nyu-mll/glue" in msg and "qnli" in msg


def test_mnli_is_absent_locally_and_has_two_dev_splits(monkeypatch):
    _hub_unreachable(monkeypatch)
    with pytest.raises(FileNotFoundError, match="dev_mismatched.tsv"):
        load_glue("mnli", "validation_mismatched")
    with pytest.raises(ValueError, match="validation_matched"):
        load_glue("mnli", "validation")


def test_bad_names_are_value_errors():
    with pytest.raises(ValueError, match="sst2"):
        load_glue("sst-2", "train")
    with pytest.raises(ValueError, match="available: train, validation"):
        load_glue("rte", "test")


def test_malformed_row_reports_file_and_line(tmp_path):
    path = tmp_path / "glue" / "RTE" / "dev.tsv"
    path.parent.mkdir(parents=True)
    path.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\n",
                    encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{path}:3: .*3 tab-separated fields"):
        load_glue("rte", "validation", data_dir=tmp_path)
    path.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{path}:2: .*'maybe'"):
        load_glue("rte", "validation", data_dir=tmp_path)


def test_hub_split_is_mapped_to_the_same_columns(monkeypatch, tmp_path):
    calls = []

    def fake_hub(hub_id, config, split):
        calls.append((hub_id, config, split))
        return datasets.Dataset.from_dict({"premise": ["p"], "hypothesis": ["h"], "label": [2],
                                           "idx": [0]})

    monkeypatch.setattr(common.datasets, "load_dataset", fake_hub)
    ds = load_glue("mnli", "validation_mismatched", data_dir=tmp_path)
    assert calls == [("nyu-mll/glue", "mnli", "validation_mismatched")]
    assert ds[0] == {"sentence1": "p", "sentence2": "h", "label": 2}


def test_train_eval_split_is_seeded_and_disjoint():
    ds = load_glue("qnli", "validation")
    train, evals = train_eval_split(ds, eval_size=500, seed=3)
    assert (len(train), len(evals)) == (4_963, 500)
    again, _ = train_eval_split(ds, eval_size=500, seed=3)
    assert train["sentence1"] == again["sentence1"]
    other, _ = train_eval_split(ds, eval_size=500, seed=4)
    assert train["sentence1"] != other["sentence1"]
    with pytest.raises(ValueError, match="eval_size"):
        train_eval_split(ds, eval_size=len(ds))


def test_tokenize_glue_pairs_and_labels():
    tok = RobertaTokenizer(vocab=str(TOK / "encoder.json"), merges=str(TOK / "vocab.bpe"))
    ds = load_glue("mrpc", "validation").select(range(4))
    enc = tokenize_glue(ds, tok, max_length=16)
    assert "sentence1" not in enc.column_names and enc["labels"] == ds["label"]
    ids = enc[0]["input_ids"]
    assert len(ids) == 16 and ids.count(tok.sep_token_id) >= 2  # both sentences, truncated
    single = tokenize_glue(load_glue("sst2", "validation").select(range(2)), tok, max_length=128)
    first = tok.decode(single[0]["input_ids"], skip_special_tokens=True)
    assert first == "it 's a charming and often affecting journey . "


# --- metrics against values worked out by hand -------------------------------------------

def test_mcc_hand_computed():
    # TP=2 TN=1 FP=1 FN=1: (2*1 - 1*1) / sqrt(3*3*2*2) = 1/6
    got = glue_metrics("cola", [1, 1, 0, 0, 1], [1, 1, 0, 1, 0])
    assert got["mcc"] == pytest.approx(1 / 6)
    assert got["accuracy"] == pytest.approx(3 / 5)


def test_accuracy_f1_from_logits():
    logits = np.array([[0.1, 0.9], [2.0, -1.0], [0.0, 1.0], [0.3, 0.2]])  # -> 1, 0, 1, 0
    got = glue_metrics("glue/mrpc", logits, [1, 1, 1, 0])
    # precision 2/2, recall 2/3 -> F1 = 0.8
    assert got == pytest.approx({"accuracy": 0.75, "f1": 0.8})
    assert set(glue_metrics("rte", [0, 1], [0, 0])) == {"accuracy"}


def test_pearson_hand_computed():
    # deviations (-1,0,1) and (-1,1,0): r = 1 / sqrt(2 * 2) = 0.5; values are ranks, so spearman too
    got = glue_metrics("stsb", np.array([[1.0], [2.0], [3.0]]), [1.0, 3.0, 2.0])
    assert got["pearson"] == pytest.approx(0.5) and got["spearman"] == pytest.approx(0.5)


def test_mnli_average():
    got = mnli_average({"accuracy": 0.80}, {"accuracy": 0.90})
    assert got == pytest.approx({"accuracy": 0.85, "accuracy_matched": 0.80,
                                 "accuracy_mismatched": 0.90})
    with pytest.raises(ValueError):
        mnli_average({"accuracy": 1.0}, {"f1": 1.0})


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="predictions"):
        glue_metrics("sst2", [0, 1, 1], [0, 1])


def test_compute_metrics_takes_eval_prediction():
    from transformers import EvalPrediction
    fn = glue.glue_compute_metrics("sst2")
    out = fn(EvalPrediction(predictions=np.array([[0.0, 1.0], [1.0, 0.0]]), label_ids=np.array([1, 1])))
    assert out == {"accuracy": 0.5, "majority_accuracy": 1.0}
    out = glue.glue_compute_metrics("mrpc")(EvalPrediction(predictions=np.zeros((4, 2)), label_ids=np.array([1, 1, 1, 0])))
    assert out["majority_accuracy"] == 0.75  # three 1s of four
    out = glue.glue_compute_metrics("stsb")(EvalPrediction(predictions=np.array([1.0, 2.0, 3.0]),
                                                           label_ids=np.array([1.0, 3.0, 2.0])))
    assert "majority_accuracy" not in out


def test_every_glue_task_is_registered():
    for name in glue.GLUE_TASKS:
        spec = TASKS[f"glue/{name}"]
        assert spec.table_scale == 100.0 and spec.primary_metric in spec.metrics
    assert math.isclose(get_task("glue/stsb").num_labels, 1)
