"""analysis.names: labels, stand-ins and metrics come from conf/ and the task registry."""

import pytest

from analysis import names
from lorafa.tasks.registry import TASKS


def test_models_from_conf():
    assert names.stands_in_for() == {"tiny-roberta": "roberta-base", "tiny-t5": "t5-small", "tiny-llama": "llama-7b",
                                     "minilm-l6": "roberta-base", "smollm2-135m": "llama-7b"}
    assert (names.model_label("tiny-roberta"), names.model_label("llama2-7b")) == ("tiny-RoBERTa", "LLaMA2-7B")
    assert [names.paper_model(m) for m in ("tiny-roberta", "tiny-t5", "tiny-llama", "t5-large", "gpt-2")] == [
        "RoBERTa-base", "T5-small", "LLaMA-7B", "T5-large", ""]
    assert names.config_name("RoBERTa-base") == "roberta-base"  # never its stand-in
    assert names.is_paper_model("llama-7b") and not names.is_paper_model("tiny-llama")
    with pytest.raises(ValueError, match="paper model: .*'GPT-2'.*allowed: .*RoBERTa-base"):
        names.config_name("GPT-2")


def test_tasks_from_the_registry():
    assert all(spec.label for spec in TASKS.values())
    assert [names.task_label(t) for t in ("glue/sst2", "wmt16_en_ro", "flanv2", "other", None)] == [
        "SST-2", "WMT16 En-Ro", "FLAN v2", "other", ""]
    assert names.task_value("glue/cola")({"mcc": 0.5, "accuracy": 0.9}) == 50.0
    assert names.task_value("wmt16_en_ro")({"bleu": 27.5}) == 27.5  # stored on 0-100 already
    mnli = names.task_value("glue/mnli")
    assert mnli({"accuracy_matched": 0.8, "accuracy_mismatched": 0.9}) == pytest.approx(85.0)
    assert mnli({"accuracy": 0.7}) == pytest.approx(70.0) and mnli({}) is None
    assert (names.metric_label("glue/stsb"), names.metric_label("glue/sst2")) == ("Pearson", "accuracy")


@pytest.fixture
def conf(tmp_path, monkeypatch):
    (tmp_path / "model").mkdir()
    (tmp_path / "scale").mkdir()
    for name, label in (("big", "Big"), ("small", "small")):
        (tmp_path / "model" / f"{name}.yaml").write_text(f"name: {name}\nlabel: {label}\n")
    monkeypatch.setattr(names, "CONF", tmp_path)
    names.model_labels.cache_clear()
    names.stands_in_for.cache_clear()
    yield tmp_path / "scale"
    names.model_labels.cache_clear()
    names.stands_in_for.cache_clear()


def test_stand_ins_read_from_global_and_plain_scale_files(conf):
    (conf / "mini.yaml").write_text("# @package _global_\nscale:\n  name: mini\n  stands_in_for: {small: big}\n")
    (conf / "paper.yaml").write_text("name: paper\nstands_in_for: {}\n")
    assert names.stands_in_for() == {"small": "big"} and names.paper_model("small") == "Big"


def test_a_stand_in_for_two_models_or_an_unknown_one_is_an_error(conf):
    (conf / "a.yaml").write_text("stands_in_for: {small: big}\n")
    (conf / "b.yaml").write_text("stands_in_for: {small: small}\n")
    with pytest.raises(ValueError, match="stands_in_for: 'small' stands in for both 'big' and 'small'"):
        names.stands_in_for()
    (conf / "b.yaml").write_text("stands_in_for: {small: huge}\n")
    names.stands_in_for.cache_clear()
    with pytest.raises(ValueError, match="stands_in_for: b.yaml maps 'small' to 'huge'; allowed: big, small"):
        names.stands_in_for()
