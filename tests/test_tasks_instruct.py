"""Instruction tuning data: Alpaca's file, FLAN v2's hub rows, and the response-only loss mask."""

import datasets
import pytest
from transformers import GPT2Tokenizer

from lorafa.paths import data_dir
from lorafa.tasks import common
from lorafa.tasks.instruct import (IGNORE_INDEX, format_prompt, load_alpaca, load_flanv2,
                                   load_instruction, tokenize_instruction)

TOK = data_dir() / "tokenizers" / "gpt2"


@pytest.fixture(scope="module")
def tokenizer():
    return GPT2Tokenizer(vocab=str(TOK / "encoder.json"), merges=str(TOK / "vocab.bpe"))


def test_alpaca_file_loads():
    ds = load_alpaca()
    assert len(ds) == 999 and ds.column_names == ["instruction", "input", "output"]
    assert ds[0]["instruction"] == "Describe a process of making crepes."
    assert sum(bool(x) for x in ds["input"]) == 412


def test_prompt_template():
    assert format_prompt("Add.", "1 2") == (
        "Below is an instruction that describes a task, paired with an input that provides "
        "further context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nAdd.\n\n### Input:\n1 2\n\n### Response:\n")
    assert format_prompt("Say hi.") == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nSay hi.\n\n### Response:\n")


def test_labels_mask_the_prompt_only(tokenizer):
    ds = datasets.Dataset.from_dict({"instruction": ["Add the numbers.", "Say hi."],
                                     "input": ["2 and 3", ""], "output": ["5", "Hello there!"]})
    enc = tokenize_instruction(ds, tokenizer, max_length=512)
    for row, ex in zip(enc, ds):
        prompt = tokenizer(format_prompt(ex["instruction"], ex["input"]))["input_ids"]
        n = len(prompt)
        assert row["input_ids"][:n] == prompt  # GPT-2 adds no BOS
        assert row["labels"][:n] == [IGNORE_INDEX] * n
        assert row["labels"][n:] == row["input_ids"][n:]  # response + EOS all kept
        assert row["input_ids"][-1] == tokenizer.eos_token_id
        assert tokenizer.decode(row["labels"][n:-1]) == ex["output"]
        assert row["attention_mask"] == [1] * len(row["input_ids"])


def test_bos_is_prepended_and_masked_when_the_tokenizer_uses_one(tokenizer):
    class WithBos:  # a LLaMA-like tokenizer: BOS first when special tokens are added
        bos_token_id, eos_token_id = 7, tokenizer.eos_token_id

        def __call__(self, text, add_special_tokens=True):
            out = tokenizer(text, add_special_tokens=False)
            if add_special_tokens:
                out["input_ids"] = [7] + out["input_ids"]
            return out

    ds = datasets.Dataset.from_dict({"instruction": ["Say hi."], "input": [""], "output": ["Hi"]})
    row = tokenize_instruction(ds, WithBos(), max_length=512)[0]
    assert row["input_ids"][0] == 7 and row["labels"][0] == IGNORE_INDEX


def test_truncation_keeps_response_or_drops_example(tokenizer):
    ds = datasets.Dataset.from_dict({"instruction": ["Say hi.", "x " * 300], "input": ["", ""],
                                     "output": ["Hello there, friend!", "never seen"]})
    n_prompt = len(tokenizer(format_prompt("Say hi."))["input_ids"])
    enc = tokenize_instruction(ds, tokenizer, max_length=n_prompt + 2)
    assert len(enc) == 1  # the second prompt alone exceeds max_length: no label left
    assert len(enc[0]["input_ids"]) == n_prompt + 2
    assert sum(t != IGNORE_INDEX for t in enc[0]["labels"]) == 2


def test_real_alpaca_rows_tokenize(tokenizer):
    enc = tokenize_instruction(load_alpaca().select(range(20)), tokenizer, max_length=256)
    assert 0 < len(enc) <= 20
    for row in enc:
        assert len(row["input_ids"]) <= 256
        assert row["labels"][0] == IGNORE_INDEX and any(t != IGNORE_INDEX for t in row["labels"])


def test_flanv2_keeps_only_flan_rows(monkeypatch):
    calls = []

    def fake_hub(hub_id, config, split):
        calls.append((hub_id, config, split))
        msg = lambda q, a: [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        return datasets.Dataset.from_dict({
            "dataset": ["flan_v2", "oasst1", "flan_v2"], "id": ["a", "b", "c"],
            "messages": [msg("Q1", "A1"), msg("Q2", "A2"), msg("Q3", "A3")]})

    monkeypatch.setattr(common.datasets, "load_dataset", fake_hub)
    ds = load_flanv2()
    assert calls == [("allenai/tulu-v2-sft-mixture", None, "train")]
    assert ds.to_list() == [{"instruction": "Q1", "input": "", "output": "A1"},
                            {"instruction": "Q3", "input": "", "output": "A3"}]


def test_flanv2_offline_error_names_the_hub_id(monkeypatch):
    def fail(*args, **kwargs):
        raise ConnectionError("offline (test)")
    monkeypatch.setattr(common.datasets, "load_dataset", fail)
    with pytest.raises(FileNotFoundError, match="allenai/tulu-v2-sft-mixture"):
        load_instruction("flanv2")


def test_missing_alpaca_file(monkeypatch, tmp_path):
    def fail(*args, **kwargs):
        raise ConnectionError("offline (test)")
    monkeypatch.setattr(common.datasets, "load_dataset", fail)
    with pytest.raises(FileNotFoundError) as err:
        load_alpaca(data_dir=tmp_path)
    assert str(tmp_path / "alpaca" / "alpaca_en_demo.json") in str(err.value)
    assert "tatsu-lab/alpaca" in str(err.value)


def test_malformed_alpaca_record(tmp_path):
    path = tmp_path / "alpaca" / "alpaca_en_demo.json"
    path.parent.mkdir()
    path.write_text('[\n  {"instruction": "a", "input": "", "output": "b"},\n'
                    '  {"instruction": "c"}\n]\n')
    with pytest.raises(ValueError, match=rf"{path}:3: .*lacks string instruction/output"):
        load_alpaca(data_dir=tmp_path)
    path.write_text('[\n  {"instruction": "a", "input": "", "output": "b"}\n  {"x": 1}\n]')
    with pytest.raises(ValueError, match=rf"{path}:3: .*expected ','"):
        load_alpaca(data_dir=tmp_path)
