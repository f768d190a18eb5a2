"""The FLAN v2 CoT source files, their held-out questions, and cot_accuracy: the reader on the
real files, the answer-extraction rule on hand-written responses, and greedy generation on a
tiny LLaMA (batched and left-padded, it must equal one prompt at a time)."""

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from lorafa.paths import REPO_ROOT, data_dir
from lorafa.tasks import cot, get_task
from lorafa.tasks.cot import (SOURCES, cot_scores, evaluate_cot, extract_answer, generate_responses,
                              load_flan_cot, normalise_gold)
from lorafa.tasks.data import DataSpec, load_splits
from lorafa.tasks.instruct import format_prompt, load_instruction, prompt_token_ids

COT = data_dir() / "flan_v2" / "cot_data"


@pytest.fixture(scope="module")
def rows():
    return load_flan_cot()


def test_reads_the_three_source_files(rows):
    counts = {s: list(rows["source"]).count(s) for s in SOURCES}
    assert counts == {"aqua": 2_728, "qasc": 1_084, "strategyqa": 2_061}
    assert rows.column_names == ["instruction", "input", "output", "source", "answer"]
    first = rows[0]
    assert first["instruction"] == ("Rs. 5600 is divided into three parts A, B and C. How much A is more than C "
                                    "if their ratio is 1/7:1/7:1/14?\nOptions:\n(A) 300\n(B) 992\n(C) 1120\n"
                                    "(D) 552\n(E) 312")  # the literal \n of the file is a line break
    assert first["output"] == "1/7:1/7:1/14 = 2:2:1\n1/5*5600 = 1120\n2240-1120 = 1120\nSo the answer is (C)."
    assert first["input"] == "" and first["answer"] == "(C)" and first["source"] == "aqua"
    strategy = rows[2_728 + 1_084]
    assert strategy["instruction"] == "Are more people today related to Genghis Khan than Julius Caesar?"
    assert strategy["answer"] == "yes" and strategy["output"].endswith("\nSo the answer is yes.")
    assert not any("\\n" in q for q in rows["instruction"])
    assert load_instruction("flan_cot").num_rows == len(rows)


def _write_cot(root, bad: dict[str, str] | None = None):
    folder = root / "flan_v2" / "cot_data"
    folder.mkdir(parents=True)
    good = {"aqua": "Q?\\nOptions:\\n(A) 1\\n(B) 2\t(B)\tbecause\n",
            "qasc": "Q?\t(H)\tr\n", "strategyqa": "Q?\tno\tr\n"}
    for source in SOURCES:
        (folder / f"{source}_train.tsv").write_text(good[source] + (bad or {}).get(source, ""), encoding="utf-8")
    return folder


@pytest.mark.parametrize("source,line,why", [
    ("qasc", "only two\tfields\n", "expected 3 tab-separated fields"),
    ("aqua", "Q?\t(F)\tr\n", r"answer '\(F\)' is not one of"),  # AQuA has options A-E
    ("strategyqa", "Q?\tmaybe\tr\n", "answer 'maybe'"),
])
def test_malformed_row_reports_file_and_line(tmp_path, source, line, why):
    folder = _write_cot(tmp_path, {source: line})
    path = folder / f"{source}_train.tsv"
    with pytest.raises(ValueError, match=rf"{path}:2: malformed row: {why}"):
        load_flan_cot(data_dir=tmp_path)
    ok = load_flan_cot(data_dir=_write_cot(tmp_path / "ok").parent.parent)
    assert ok["instruction"][0] == "Q?\nOptions:\n(A) 1\n(B) 2" and ok["answer"] == ["(B)", "(H)", "no"]


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "flan_v2" / "cot_data" / "aqua_train.tsv")):
        load_flan_cot(data_dir=tmp_path)


def test_held_out_questions(rows):
    """100 per source at a fixed seed: the same for every training seed, alternating sources (so
    that a prefix is balanced), and never in the training rows whatever max_train_samples is."""
    task = get_task("flan_cot")
    a, b = load_splits(task, DataSpec(), seed=0), load_splits(task, DataSpec(max_train_samples=50), seed=7)
    held = a.evals[""]
    assert held.to_list() == b.evals[""].to_list()
    assert list(held["source"][:6]) == ["aqua", "qasc", "strategyqa"] * 2
    assert {s: list(held["source"]).count(s) for s in SOURCES} == dict.fromkeys(SOURCES, 100)
    questions = set(held["instruction"])
    assert not questions & set(a.train["instruction"]) and not questions & set(b.train["instruction"])
    assert len(a.train) == sum(q not in questions for q in rows["instruction"]) and len(b.train) == 50
    small = load_splits(task, DataSpec(max_eval_samples=30, eval_from_train=20), seed=3).evals[""]
    assert list(small["source"]).count("qasc") == 10 and len(small) == 30


def test_answer_extraction_rule():
    say = "Step one.\nSo the answer is (C)."
    assert extract_answer(say, "aqua") == "C"
    assert extract_answer("The answer is (b), not (C).", "aqua") == "B"  # first option after the phrase
    assert extract_answer("I think (A). Wait: the answer is (D). Hmm, the answer is (E)!", "aqua") == "E"  # last phrase
    assert extract_answer("(A) is wrong, (C) is right", "aqua") == "C"  # no phrase: last option mentioned
    assert extract_answer("THE ANSWER IS (h)", "qasc") == "H"
    assert extract_answer("the answer is (H)", "aqua") is None  # AQuA has A-E only
    assert extract_answer("the answer is C", "aqua") is None  # a bare letter is no option
    assert extract_answer("So the answer is (A).\n### Instruction:\nthe answer is (B)", "aqua") == "A"
    assert extract_answer("Yes, because... So the answer is no.", "strategyqa") == "no"
    assert extract_answer("No idea. Probably YES", "strategyqa") == "yes"  # last yes/no word
    assert extract_answer("Nobody knows; the answer is unknown", "strategyqa") is None  # whole words only
    assert normalise_gold("(C)", "aqua") == "C" and normalise_gold("Yes", "strategyqa") == "yes"
    with pytest.raises(ValueError, match="source='gsm8k' is invalid; allowed: aqua, qasc, strategyqa"):
        extract_answer("x", "gsm8k")


def test_scores_and_format_rate():
    got = cot_scores(["So the answer is (C).", "(A)", "the answer is yes", "no"],
                     ["aqua", "aqua", "strategyqa", "strategyqa"], ["(C)", "(B)", "yes", "yes"])
    assert got == {"cot_accuracy": 0.5, "cot_n": 4, "cot_format_rate": 0.5,
                   "cot_accuracy/aqua": 0.5, "cot_accuracy/strategyqa": 0.5}


@pytest.fixture(scope="module")
def bpe():
    return AutoTokenizer.from_pretrained(str(REPO_ROOT / "models" / "tiny-bpe"))


def test_cot_accuracy_scores_what_the_model_generates(monkeypatch, bpe, rows):
    """Generation replaced by canned responses keyed by the prompt it was given: the prompt is
    training's, and each response is scored by the rule."""
    held = rows.select([0, 1, 2_728, 2_728 + 1_084])  # aqua (C), aqua (E), qasc (D), strategyqa yes
    canned = {format_prompt(q): r for q, r in zip(held["instruction"], [
        "So the answer is (C).", "I pick (A)", "So the answer is (D).", "So the answer is no."])}

    def fake_generate(model, tokenizer, prompts, max_new_tokens, batch_size, progress):
        assert max_new_tokens == 7 and batch_size == 3
        return [canned[tokenizer.decode(p, skip_special_tokens=True)] for p in prompts]

    monkeypatch.setattr(cot, "generate_responses", fake_generate)
    got = evaluate_cot(None, bpe, held, max_new_tokens=7, batch_size=3)
    assert got["cot_accuracy"] == 0.5 and got["cot_n"] == 4 and got["cot_format_rate"] == 0.75
    assert (got["cot_accuracy/aqua"], got["cot_accuracy/qasc"], got["cot_accuracy/strategyqa"]) == (0.5, 1.0, 0.0)
    assert evaluate_cot(None, bpe, held, max_new_tokens=7, batch_size=3, max_examples=1)["cot_n"] == 1


def test_batched_greedy_generation_equals_one_prompt_at_a_time(bpe, rows):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(bpe), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=512, initializer_range=0.5)).eval()
    held = rows.select([0, 5, 2_728, 4_000, 5_000])
    prompts = prompt_token_ids(bpe, held["instruction"], held["input"])
    assert len({len(p) for p in prompts}) == 5 and prompts[0][0] == bpe.bos_token_id
    batched = generate_responses(model, bpe, prompts, max_new_tokens=6, batch_size=5, progress=False)
    single = [generate_responses(model, bpe, [p], max_new_tokens=6, batch_size=1, progress=False)[0]
              for p in prompts]
    assert batched == single and len(set(batched)) > 1
    manual = model.generate(torch.tensor([prompts[1]]), max_new_tokens=6, do_sample=False,
                            pad_token_id=bpe.pad_token_id)
    assert single[1] == bpe.decode(manual[0, len(prompts[1]):], skip_special_tokens=True)
