"""Instruction tuning data: Alpaca's file, FLAN v2's hub rows, the response-only loss mask, the
held-out rows and their loss (checked against a computation by hand on tiny models)."""

import math

import datasets
import pytest
import torch
from transformers import GPT2Tokenizer

from lorafa.paths import data_dir
from lorafa.tasks import common
from lorafa.tasks.glue import load_glue
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


# ----------------------------------------------------------------------------- held-out rows and their loss

def test_alpaca_held_out_rows_are_fixed_and_never_trained_on():
    """100 of the 999 rows at a fixed seed, the same for every training seed; the training rows
    exclude them (and 4 exact duplicates of them elsewhere in the file) before max_train_samples."""
    from lorafa.tasks import get_task
    from lorafa.tasks.data import DataSpec, load_splits

    task, key = get_task("alpaca"), lambda ds: set(zip(ds["instruction"], ds["input"]))
    a, b = load_splits(task, DataSpec(), seed=0), load_splits(task, DataSpec(max_train_samples=300), seed=9)
    assert a.evals[""].to_list() == b.evals[""].to_list() and len(a.evals[""]) == 100
    assert len(a.train) == 895 and len(b.train) == 300
    assert not key(a.evals[""]) & key(a.train) and not key(a.evals[""]) & key(b.train)
    assert load_splits(task, DataSpec(eval_from_train=0), seed=0).evals == {}
    assert load_splits(task, DataSpec(max_eval_samples=10), seed=4).evals[""].to_list() == a.evals[""].to_list()[:10]
    base = load_splits(task, DataSpec(), seed=0, train=False)  # the base model: same held-out rows, no training
    assert base.train is None and base.evals[""].to_list() == a.evals[""].to_list()


def test_eval_from_train_without_a_task_rule_keeps_the_trainer_seed():
    """QNLI offline (data.eval_from_train on a task with no held-out rule of its own): drawn at the
    trainer's seed, as its records were made."""
    from lorafa.tasks import get_task
    from lorafa.tasks.common import train_eval_split
    from lorafa.tasks.data import DataSpec, load_splits

    task, data = get_task("glue/qnli"), DataSpec(train_split="validation", eval_from_train=300)
    got = load_splits(task, data, seed=2)
    _, expected = train_eval_split(load_glue("qnli", "validation"), 300, seed=2)
    assert got.evals[""].to_list() == expected.to_list()
    assert got.evals[""].to_list() != load_splits(task, data, seed=3).evals[""].to_list()


def _examples(seed: int = 0, n: int = 7) -> datasets.Dataset:
    """Tokenised examples in tokenize_instruction's layout (ids < 120, tiny_llama's vocabulary):
    prompts of 2-9 tokens labelled -100, responses of 1-8 tokens."""
    g = torch.Generator().manual_seed(seed)
    rows = {"input_ids": [], "labels": []}
    for _ in range(n):
        p, r = (int(torch.randint(lo, hi, (), generator=g)) for lo, hi in ((2, 10), (1, 9)))
        ids = torch.randint(3, 120, (p + r,), generator=g).tolist()
        rows["input_ids"].append(ids)
        rows["labels"].append([IGNORE_INDEX] * p + ids[p:])
    return datasets.Dataset.from_dict(rows)


def _by_hand(model, ds) -> tuple[float, int]:
    """Sum over examples, one unpadded forward each, of -log p(response token | everything before)."""
    total, count = 0.0, 0
    for ids, labels in zip(ds["input_ids"], ds["labels"]):
        with torch.no_grad():
            logp = model(input_ids=torch.tensor([ids])).logits[0].double().log_softmax(-1)
        for t in range(1, len(ids)):
            if labels[t] != IGNORE_INDEX:
                total, count = total - logp[t - 1, labels[t]].item(), count + 1
    return total / count, count


@pytest.mark.parametrize("kind", ["llama", "gpt2"])  # GPT-2's absolute positions catch padding on the wrong side
def test_heldout_loss_is_the_token_weighted_response_cross_entropy(kind):
    from conftest import tiny_gpt2, tiny_llama
    from lorafa.tasks.instruct import response_loss

    model, ds = (tiny_llama if kind == "llama" else tiny_gpt2)(), _examples()
    loss, count = _by_hand(model, ds)
    assert count == sum(t != IGNORE_INDEX for labels in ds["labels"] for t in labels)
    for batch_size, pad_id in ((1, 0), (3, 0), (7, 0), (7, 99)):
        got = response_loss(model, ds, batch_size=batch_size, pad_id=pad_id, progress=False)
        assert got["heldout_loss"] == pytest.approx(loss, rel=1e-5), (batch_size, pad_id)
        assert got["heldout_tokens"] == count and got["heldout_n"] == len(ds)
    # the library's own loss of one example (mean over its response tokens) agrees with the hand shift
    one = ds.select([0])
    with torch.no_grad():
        hf = model(input_ids=torch.tensor(one["input_ids"]), labels=torch.tensor(one["labels"])).loss.item()
    assert response_loss(model, one, progress=False)["heldout_loss"] == pytest.approx(hf, rel=1e-5)
    assert model.training is False


def test_base_model_is_evaluated_without_a_training_set(tokenizer):
    """method=base on an instruction task: load_splits(train=False) and prepare give no training
    set, and the final evaluation scores the untrained model on the held-out rows (MMLU skipped)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from lorafa.tasks import get_task
    from lorafa.tasks.data import DataSpec, load_splits, prepare_task

    task, data = get_task("alpaca"), DataSpec(max_eval_samples=6, mmlu_subjects=[], max_length=256)
    prepared = prepare_task(task, tokenizer, load_splits(task, data, seed=0, train=False), data, eval_batch_size=4)
    assert prepared.train is None and prepared.evals == {}
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2))
    metrics = prepared.final_eval(model)
    assert set(metrics) == {"heldout_loss", "heldout_tokens", "heldout_n"} and metrics["heldout_n"] == 6
    assert 0 < metrics["heldout_loss"] < 2 * math.log(len(tokenizer))
    with pytest.raises(ValueError, match=r"data.mmlu_subjects=\[\] with data.eval_from_train=0"):
        none = DataSpec(mmlu_subjects=[], eval_from_train=0)
        prepare_task(task, tokenizer, load_splits(task, none, seed=0, train=False), none, eval_batch_size=4)
