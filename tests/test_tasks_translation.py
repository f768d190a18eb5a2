"""WMT16 En->Ro: the aligned release files, T5's prefix, BLEU and ROUGE-L."""

import math

import numpy as np
import pytest
import sacrebleu
import torch
from transformers import (DataCollatorForSeq2Seq, EvalPrediction, GPT2Tokenizer, T5Config,
                          T5ForConditionalGeneration)

from lorafa.paths import data_dir
from lorafa.tasks import common
from lorafa.tasks.translation import (T5_PREFIX, load_wmt16, tokenize_translation,
                                      translation_compute_metrics, translation_metrics)

WMT = data_dir() / "wmt16_en_ro"
TOK = data_dir() / "tokenizers" / "gpt2"


def _lines(path):
    return path.read_text(encoding="utf-8").split("\n")


@pytest.mark.parametrize("split,stem,rows", [("train", "europarl_sample", 10_000),
                                             ("validation", "newsdev2016", 1_999)])
def test_release_files_load_aligned(split, stem, rows):
    ds = load_wmt16(split)
    assert len(ds) == rows and ds.column_names == ["source", "target"]
    en, ro = _lines(WMT / f"{stem}.en"), _lines(WMT / f"{stem}.ro")
    for i in (0, rows // 2, rows - 1):
        assert (ds[i]["source"], ds[i]["target"]) == (en[i], ro[i])


def test_newsdev_first_pair():
    ds = load_wmt16("validation")
    assert ds[0]["source"] == "Brazil's Former Presidential Chief-of-Staff to Stand Trial"
    assert ds[0]["target"].startswith("Fostul șef al cabinetului prezidențial brazilian")


def test_test_split_is_newstest2016_not_the_dev_set(monkeypatch, tmp_path):
    def fail(*args, **kwargs):
        raise ConnectionError("offline (test)")
    monkeypatch.setattr(common.datasets, "load_dataset", fail)
    test, dev = load_wmt16("test"), load_wmt16("validation")  # local files only: the hub fails
    assert len(test) == 1999 and test[0]["source"] != dev[0]["source"]
    with pytest.raises(FileNotFoundError) as err:  # without the local file, the hub is named
        load_wmt16("test", data_dir=tmp_path)
    assert "newstest2016" in str(err.value) and "wmt/wmt16" in str(err.value)
    assert "ro-en" in str(err.value)


def test_misaligned_files_report_the_shorter_file(tmp_path):
    folder = tmp_path / "wmt16_en_ro"
    folder.mkdir()
    (folder / "newsdev2016.en").write_text("a\nb\nc\n", encoding="utf-8")
    (folder / "newsdev2016.ro").write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"newsdev2016\.ro:3: .*3 lines.*2"):
        load_wmt16("validation", data_dir=tmp_path)


def test_bleu_is_sacrebleus_corpus_bleu():
    preds = ["Fostul șef al cabinetului a fost trimis în judecată", "un test simplu aici"]
    refs = ["Fostul șef al cabinetului prezidențial va fi judecat", "un test simplu"]
    got = translation_metrics(preds, refs)
    assert got["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
    assert translation_metrics(refs, refs)["bleu"] == pytest.approx(100.0)


def test_rouge_l_hand_computed():
    # LCS(the cat sat on the mat, the cat lay on a mat) = the cat on mat: P = R = 4/6.
    # The second pair is identical (F = 1), and the corpus score is the mean x100.
    got = translation_metrics(["the cat lay on a mat", "same words"],
                              ["the cat sat on the mat", "same words"])
    assert got["rougeL"] == pytest.approx(100 * (2 / 3 + 1) / 2)


def test_metric_input_checks():
    with pytest.raises(ValueError):
        translation_metrics(["a"], ["a", "b"])


@pytest.fixture(scope="module")
def tokenizer():
    tok = GPT2Tokenizer(vocab=str(TOK / "encoder.json"), merges=str(TOK / "vocab.bpe"))
    tok.pad_token = tok.eos_token
    return tok


def test_tokenize_adds_prefix_and_labels(tokenizer):
    ds = load_wmt16("validation").select(range(3))
    enc = tokenize_translation(ds, tokenizer, max_source_length=256, max_target_length=256)
    assert enc.column_names == ["input_ids", "attention_mask", "labels"]
    assert tokenizer.decode(enc[0]["input_ids"]) == T5_PREFIX + ds[0]["source"]
    assert tokenizer.decode(enc[1]["labels"]) == ds[1]["target"]
    short = tokenize_translation(ds, tokenizer, max_source_length=8, max_target_length=5)
    assert max(map(len, short["input_ids"])) == 8 and max(map(len, short["labels"])) == 5


def test_tiny_t5_trains_generates_and_scores(tokenizer):
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=1,
                   num_heads=4, pad_token_id=tokenizer.pad_token_id,
                   eos_token_id=tokenizer.eos_token_id,
                   decoder_start_token_id=tokenizer.pad_token_id)
    model = T5ForConditionalGeneration(cfg)
    enc = tokenize_translation(load_wmt16("validation").select(range(4)), tokenizer,
                               max_source_length=32, max_target_length=64)
    batch = DataCollatorForSeq2Seq(tokenizer, model=model)(list(enc))
    assert (batch["labels"] == -100).any()  # padding is ignored by the loss
    assert math.isfinite(model(**batch).loss.item())

    generated = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               num_beams=2, max_new_tokens=6)
    pred = EvalPrediction(predictions=generated.numpy(), label_ids=batch["labels"].numpy())
    scores = translation_compute_metrics(tokenizer)(pred)
    assert set(scores) == {"bleu", "rougeL"}
    assert 0.0 <= scores["bleu"] <= 100.0 and 0.0 <= scores["rougeL"] <= 100.0
    # Decoding restores -100 to pad, so the references are the real targets.
    refs = tokenizer.batch_decode(np.where(pred.label_ids < 0, tokenizer.pad_token_id,
                                           pred.label_ids), skip_special_tokens=True)
    assert refs[0] == tokenizer.decode(enc[0]["labels"])


def test_hub_rows_get_the_same_columns(monkeypatch, tmp_path):
    import datasets
    calls = []

    def fake_hub(hub_id, config, split):
        calls.append((hub_id, config, split))
        return datasets.Dataset.from_dict({"translation": [{"en": "Hello", "ro": "Salut"}]})

    monkeypatch.setattr(common.datasets, "load_dataset", fake_hub)
    ds = load_wmt16("test", data_dir=tmp_path)
    assert calls == [("wmt/wmt16", "ro-en", "test")]
    assert ds.to_list() == [{"source": "Hello", "target": "Salut"}]
