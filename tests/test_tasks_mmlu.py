"""MMLU: the release CSVs, the standard 5-shot prompt, and next-token scoring checked
against an independent computation on a tiny random LLaMA."""

import pytest
import torch
from transformers import (GPT2Config, GPT2LMHeadModel, GPT2Tokenizer, LlamaConfig,
                          LlamaForCausalLM)

from lorafa.paths import data_dir
from lorafa.tasks import common
from lorafa.tasks.mmlu import (SUBJECTS, build_prompt, candidate_token_ids, evaluate_mmlu,
                               load_mmlu, mmlu_metrics_flat)

MMLU = data_dir() / "mmlu"
TOK = data_dir() / "tokenizers" / "gpt2"


def test_subject_list_matches_the_release():
    assert len(SUBJECTS) == 57
    assert sorted(p.name.removesuffix("_test.csv") for p in (MMLU / "test").glob("*.csv")) \
        == sorted(SUBJECTS)


def test_row_counts_across_all_subjects():
    counts = {split: sum(len(load_mmlu(s, split)) for s in SUBJECTS)
              for split in ("dev", "validation", "test")}
    # The data README says 1,531 for val; this copy's high_school_computer_science_val.csv
    # holds 7 of the original 9 questions, so the files have 1,529.
    assert counts == {"dev": 285, "validation": 1_529, "test": 14_042}
    assert all(len(load_mmlu(s, "dev")) == 5 for s in SUBJECTS)


def test_quoted_multiline_field_parsed_intact():
    ds = load_mmlu("high_school_computer_science", "validation")
    q = ds[6]["question"]
    assert q.startswith("Consider the following segment of code.\n String word = \"conflagration\";")
    assert q.endswith("What will be the result of executing the above segment?")
    assert ds[6]["choices"][0] == "String s will be the empty string."
    assert ds[5]["choices"][2] == '"ab".sort()'  # doubled quotes inside a quoted field


def test_crlf_inside_fields_is_normalised():
    raw = (MMLU / "dev" / "college_mathematics_dev.csv").read_bytes()
    assert b"\r\n" in raw
    q = load_mmlu("college_mathematics", "dev")[2]["question"]
    assert "\r" not in q
    assert q.startswith("Let A be a real 2x2 matrix. Which of the following statements must be "
                        "true?\nI. All of the entries of A^2 are nonnegative.\nII.")


def test_answers_and_columns():
    ds = load_mmlu("abstract_algebra", "dev")
    assert ds.column_names == ["question", "choices", "answer", "subject"]
    assert ds[0]["choices"] == ["0", "1", "2", "3"] and ds[0]["answer"] == 1  # "B"
    assert set(ds["subject"]) == {"abstract_algebra"}


def test_malformed_csv_reports_file_and_line(tmp_path):
    folder = tmp_path / "mmlu" / "dev"
    folder.mkdir(parents=True)
    path = folder / "anatomy_dev.csv"
    path.write_text('Q1,a,b,c,d,A\n"Q2\nspans lines",a,b,c,d,B\nQ3,a,b,c,d,E\n', encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{path}:4: .*answer in A-D"):
        load_mmlu("anatomy", "dev", data_dir=tmp_path)


def test_missing_file_and_bad_names(monkeypatch, tmp_path):
    def fail(*args, **kwargs):
        raise ConnectionError("offline (test)")
    monkeypatch.setattr(common.datasets, "load_dataset", fail)
    with pytest.raises(FileNotFoundError) as err:
        load_mmlu("virology", "test", data_dir=tmp_path)
    assert str(tmp_path / "mmlu" / "test" / "virology_test.csv") in str(err.value)
    assert "cais/mmlu" in str(err.value) and "virology" in str(err.value)
    with pytest.raises(ValueError, match="abstract_algebra"):
        load_mmlu("algebra", "test")
    with pytest.raises(ValueError, match="dev, validation, test"):
        load_mmlu("virology", "val")


def test_prompt_format():
    shots = list(load_mmlu("high_school_physics", "dev"))
    question = load_mmlu("high_school_physics", "test")[0]
    prompt = build_prompt("high_school_physics", shots, question)
    header = "The following are multiple choice questions (with answers) about high school physics.\n\n"
    assert prompt.startswith(header)
    body = prompt[len(header):]
    blocks = body.split("\n\n")
    assert len(blocks) == 6 and prompt.count("Answer:") == 6
    first = shots[0]
    assert blocks[0] == (f"{first['question']}\nA. {first['choices'][0]}\nB. {first['choices'][1]}"
                         f"\nC. {first['choices'][2]}\nD. {first['choices'][3]}\n"
                         f"Answer: {'ABCD'[first['answer']]}")
    assert prompt.endswith(f"\nD. {question['choices'][3]}\nAnswer:")


@pytest.fixture(scope="module")
def tokenizer():
    return GPT2Tokenizer(vocab=str(TOK / "encoder.json"), merges=str(TOK / "vocab.bpe"))


def _llama(tokenizer):
    # A wide init so the random model's answers depend on the question, not one letter.
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=2048, initializer_range=0.5)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def _gpt2(tokenizer):
    # Absolute position embeddings: left padding is only right with explicit position_ids
    # (LLaMA's rotary positions are relative, so a uniform shift goes unnoticed).
    cfg = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4,
                     n_positions=2048, initializer_range=0.5)
    torch.manual_seed(0)
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module", params=[_llama, _gpt2], ids=["llama", "gpt2"])
def model(request, tokenizer):
    return request.param(tokenizer)


def test_candidates_are_space_letter_tokens(tokenizer):
    ids = candidate_token_ids(tokenizer)
    assert tokenizer.convert_ids_to_tokens(ids) == ["ĠA", "ĠB", "ĠC", "ĠD"]


SUBJ = ("abstract_algebra", "college_mathematics")
N = 6


@pytest.fixture(scope="module")
def expected(model, tokenizer):
    """One unpadded forward pass per question; the letter with the highest next-token
    log-probability among " A".." D"."""
    letters = {}
    cand = [tokenizer.encode(f" {c}")[-1] for c in "ABCD"]
    for subject in SUBJ:
        shots = list(load_mmlu(subject, "dev"))
        letters[subject] = []
        for ex in list(load_mmlu(subject, "test"))[:N]:
            ids = torch.tensor([tokenizer.encode(build_prompt(subject, shots, ex))])
            with torch.no_grad():
                logp = model(input_ids=ids).logits[0, -1].log_softmax(-1)[cand]
            top2 = logp.topk(2).values
            assert top2[0] - top2[1] > 1e-3, "near tie: the comparison would be fragile"
            letters[subject].append("ABCD"[logp.argmax().item()])
    return letters


@pytest.mark.parametrize("side", ["right", "left"])
def test_scoring_matches_independent_computation(model, tokenizer, expected, side):
    assert len({l for ls in expected.values() for l in ls}) > 1, "model answers one letter only"
    answers = {s: ["ABCD"[a] for a in load_mmlu(s, "test")["answer"][:N]] for s in SUBJ}
    tokenizer.padding_side = side
    try:
        got = evaluate_mmlu(model, tokenizer, subjects=SUBJ, k=5, max_examples_per_subject=N,
                            batch_size=5, progress=False)
    finally:
        tokenizer.padding_side = "right"
    assert got["predictions"] == expected
    per = {s: sum(p == a for p, a in zip(expected[s], answers[s])) / N for s in SUBJ}
    assert got["per_subject"] == pytest.approx(per)
    assert got["accuracy"] == pytest.approx(sum(per.values()) / len(SUBJ))  # equal counts
    assert got["n"] == 2 * N and got["per_subject_n"] == {s: N for s in SUBJ}
    assert got["n_fewer_shots"] == 0 and got["n_truncated"] == 0


def test_accuracy_is_micro_averaged_and_flattened(model, tokenizer):
    got = evaluate_mmlu(model, tokenizer, subjects=["abstract_algebra", "anatomy"], k=0,
                        max_examples_per_subject=None, batch_size=16, progress=False)
    n = got["per_subject_n"]
    assert n == {"abstract_algebra": 100, "anatomy": 135}
    correct = sum(got["per_subject"][s] * n[s] for s in n)
    assert got["accuracy"] == pytest.approx(correct / 235)
    flat = mmlu_metrics_flat(got)
    assert flat["mmlu_accuracy"] == got["accuracy"] and flat["mmlu_n"] == 235
    assert flat["mmlu_accuracy/anatomy"] == got["per_subject"]["anatomy"]


def test_shots_are_dropped_to_fit_max_length(model, tokenizer):
    subject = "abstract_algebra"
    shots = list(load_mmlu(subject, "dev"))
    ex = load_mmlu(subject, "test")[0]
    two_shot = len(tokenizer.encode(build_prompt(subject, shots[:2], ex)))
    three_shot = len(tokenizer.encode(build_prompt(subject, shots[:3], ex)))
    assert two_shot < three_shot
    got = evaluate_mmlu(model, tokenizer, subjects=[subject], k=5, max_examples_per_subject=1,
                        max_length=three_shot - 1, progress=False)
    assert got["n_fewer_shots"] == 1 and got["n_truncated"] == 0
    ids = torch.tensor([tokenizer.encode(build_prompt(subject, shots[:2], ex))])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1, candidate_token_ids(tokenizer)]
    assert got["predictions"][subject] == ["ABCD"[logits.argmax().item()]]


def test_hub_rows_get_the_same_columns(monkeypatch, tmp_path):
    import datasets
    calls = []

    def fake_hub(hub_id, config, split):
        calls.append((hub_id, config, split))
        features = datasets.Features({
            "question": datasets.Value("string"), "subject": datasets.Value("string"),
            "choices": datasets.Sequence(datasets.Value("string")),
            "answer": datasets.ClassLabel(names=["A", "B", "C", "D"])})
        return datasets.Dataset.from_dict({"question": ["Q?"], "subject": ["virology"],
                                           "choices": [["w", "x", "y", "z"]], "answer": [2]},
                                          features=features)

    monkeypatch.setattr(common.datasets, "load_dataset", fake_hub)
    ds = load_mmlu("virology", "validation", data_dir=tmp_path)
    assert calls == [("cais/mmlu", "virology", "validation")]
    assert ds.to_list() == [{"question": "Q?", "choices": ["w", "x", "y", "z"], "answer": 2,
                             "subject": "virology"}]


def test_prompt_left_truncated_when_even_zero_shot_is_too_long(model, tokenizer):
    subject = "abstract_algebra"
    ex = load_mmlu(subject, "test")[0]
    got = evaluate_mmlu(model, tokenizer, subjects=[subject], k=5, max_examples_per_subject=1,
                        max_length=20, progress=False)
    assert got["n_fewer_shots"] == 1 and got["n_truncated"] == 1
    ids = torch.tensor([tokenizer.encode(build_prompt(subject, [], ex))[-20:]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1, candidate_token_ids(tokenizer)]
    assert got["predictions"][subject] == ["ABCD"[logits.argmax().item()]]
