"""One place chooses a run's model: each task's Hydra default (conf/model/<scale>/<role>.yaml),
an experiment's `override /model`, or model=NAME; an explicit model.path wins at any scale, and
the record names the directory the weights came from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lorafa.results import config_hash, load_records

ROOT = Path(__file__).resolve().parent.parent


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("overrides, model", [
    ((), "roberta-base"), (("scale=mini",), "tiny-roberta"), (("task=wmt16_en_ro",), "t5-small"),
    (("task=wmt16_en_ro", "scale=mini"), "tiny-t5"), (("task=alpaca", "scale=mini"), "tiny-llama"),
    (("task=mmlu", "method=base"), "llama-7b"), (("experiment=table3_base",), "t5-base"),
    (("experiment=table2_large",), "roberta-large"), (("experiment=mini/table3",), "tiny-t5"),
    (("experiment=mini/table6",), "tiny-roberta"), (("scale=mini", "model=tiny-llama"), "tiny-llama"),
    (("experiment=table2_large", "model=roberta-base"), "roberta-base"),
    (("scale=small",), "minilm-l6"), (("scale=small", "task=glue/sst2"), "minilm-l6"),
])
def test_the_composed_config_names_the_model_that_runs(overrides, model):
    assert composed(*overrides).model.name == model


def test_each_stand_in_is_declared_for_the_paper_model_of_its_role():
    """The mini scale's role models (what runs) and its stands_in_for (what analysis/ compares
    them with) say the same thing."""
    for scale, roles in (("mini", ("encoder", "seq2seq", "causal")), ("small", ("encoder",))):
        declared = OmegaConf.load(ROOT / "conf" / "scale" / f"{scale}.yaml").scale.stands_in_for
        for role in roles:
            stand_in = composed(f"scale={scale}", f"model={scale}/{role}").model.name
            paper = composed(f"model=paper/{role}").model.name
            assert declared[stand_in] == paper


def _save_tiny_roberta(path: Path, hidden: int = 48) -> int:
    """A from_pretrained directory of a roberta unlike tiny-roberta (width 48): its parameter
    count tells which weights a run trained."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    from lorafa.models import load_model_spec, load_tokenizer

    tokenizer = load_tokenizer(load_model_spec("tiny-roberta"))
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=1, num_attention_heads=4,
                           intermediate_size=96, max_position_embeddings=130, pad_token_id=tokenizer.pad_token_id)
    model = RobertaForSequenceClassification(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def _cli(tmp_path, *args):
    env = dict(os.environ, LORAFA_RESULTS_DIR=str(tmp_path / "results"), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, str(ROOT / "experiments" / "run.py"), *args], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=600)


def test_an_explicit_model_path_wins_at_mini_scale_and_the_record_names_it(tmp_path):
    weights = tmp_path / "my-roberta"
    _save_tiny_roberta(weights)
    out = _cli(tmp_path, "task=glue/mrpc", "method=lora_fa", "scale=mini", f"model.path={weights}",
               "trainer.max_steps=2", "data.max_train_samples=32", "data.max_eval_samples=16")
    assert out.returncode == 0, out.stderr[-3000:]
    (rec,) = load_records(tmp_path / "results" / "mini").to_dict("records")
    # outside every folder a record is kept relative to (checkout, data, results, packages): absolute
    assert rec["status"] == "ok"
    assert rec["weights"] == {"source": "local", "path": str(weights.resolve()), "relative_to": None}
    assert rec["config"]["model"]["path"] == str(weights) and rec["config_hash"] == config_hash(rec["config"])
    stored = json.loads((tmp_path / "results" / "mini" / "runs" / rec["run_id"] / "record.json").read_text())
    assert stored["weights"]["path"] == str(weights.resolve())
    # what trained is that model: the classifier head of width 48 (48·48 + 48 + 48·2 + 2), not tiny-roberta's 128
    assert rec["trainable_params"] < 128 * 128


def test_a_model_path_of_another_architecture_fails_before_anything_is_built(tmp_path):
    from transformers import T5Config

    weights = tmp_path / "a-t5"
    T5Config(d_model=32, num_layers=1, num_heads=2, d_kv=16, d_ff=64, vocab_size=100).save_pretrained(weights)
    out = _cli(tmp_path, "task=glue/mrpc", "scale=mini", f"model.path={weights}")
    assert out.returncode == 2 and "holds a 't5' model" in out.stderr and "model=NAME" in out.stderr
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").rglob("runs.jsonl"))


def test_a_missing_model_path_names_the_directory_tried(tmp_path):
    out = _cli(tmp_path, "task=glue/mrpc", "scale=mini", f"model.path={tmp_path / 'nowhere'}")
    assert out.returncode == 2 and "model.path=" in out.stderr and "nowhere" in out.stderr
