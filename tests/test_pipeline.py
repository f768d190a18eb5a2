"""End to end: Hydra config -> plain spec -> tiny model + adapters + real data -> Trainer -> run record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from lorafa.results import load_records

ROOT = Path(__file__).resolve().parent.parent
import run as run_cli  # noqa: E402

# Small enough for seconds on 2 cores, real enough to learn: one block, width 32.
TINY = {  # model.path=null: built from arch (random weights), not the committed pretrained checkpoint
    "tiny-roberta": ["model.path=null", "model.arch.hidden_size=32", "model.arch.num_hidden_layers=1", "model.arch.intermediate_size=64"],
    "minilm-l6": ["model.package=null", "model.hub_id=null", "model.arch.hidden_size=32", "model.arch.num_hidden_layers=1",
                  "model.arch.intermediate_size=64", "model.arch.num_attention_heads=4"],  # BERT, as MiniLM
    "tiny-t5": ["model.path=null", "model.arch.d_model=32", "model.arch.d_kv=8", "model.arch.d_ff=64", "model.arch.num_layers=1",
                "model.arch.num_decoder_layers=1"],
    "tiny-llama": ["model.path=null", "model.arch.hidden_size=32", "model.arch.intermediate_size=64", "model.arch.num_hidden_layers=1",
                   "model.arch.num_attention_heads=4", "model.arch.num_key_value_heads=4"],
}
FAST = ["trainer.max_steps=6", "trainer.batch_size=8", "trainer.eval_batch_size=16", "trainer.logging_steps=2",
        "data.max_train_samples=48", "data.max_eval_samples=24", "data.max_length=48", "logger=none"]


def spec_for(tmp_path, overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["scale=mini", f"results_dir={tmp_path}", *overrides])
    return run_cli.to_spec(cfg), cfg


def run_tiny(tmp_path, task: str, model: str, method: str = "lora_fa", extra=()):
    spec, _ = spec_for(tmp_path, [f"task={task}", f"model={model}", f"method={method}", *TINY[model], *FAST, *extra])
    from lorafa.recipe import run
    return run(spec)


def check_common(rec, task, method):
    assert rec.status == "ok", rec.error
    assert rec.task == task and rec.method == method and rec.scale == "mini"
    assert rec.trainable_params > 0 and rec.peak_memory_bytes > rec.activation_bytes > 0
    assert rec.memory_source == "cpu-accounting" and set(rec.memory_breakdown) == {
        "weights", "gradients", "optimizer_states", "activations", "other"}
    assert rec.step_time_s > 0 and rec.tokens_per_s > 0 and rec.wall_s > 0
    assert rec.config_hash and rec.git_commit is not None and rec.started_at <= rec.finished_at
    check_provenance(rec)


def check_provenance(rec):
    """Every record says how it was made: the resolved config it was hashed from, the code,
    the packages and the weights."""
    from lorafa.results import config_hash

    assert rec.config_hash == config_hash(rec.config)
    assert rec.config["task"] == rec.task and rec.config["method"]["name"] == rec.method
    assert isinstance(rec.git_dirty, bool)
    assert set(rec.versions) == {"python", "torch", "transformers", "peft", "lorafa"}
    assert rec.versions["torch"].startswith("2.13") and rec.versions["transformers"]
    assert rec.weights["source"] in ("local", "hub", "random-init")


def test_glue_classification_mrpc(tmp_path):
    rec = run_tiny(tmp_path, "glue/mrpc", "tiny-roberta", extra=["trainer.eval_steps=3"])
    check_common(rec, "glue/mrpc", "lora_fa")
    assert 0 <= rec.metrics["accuracy"] <= 1 and 0 <= rec.metrics["f1"] <= 1
    assert [h["step"] for h in rec.eval_history][:2] == [3, 6]  # periodic evaluation for Figure 4
    stored = json.loads((tmp_path / "runs" / rec.run_id / "record.json").read_text())
    assert stored["metrics"]["accuracy"] == rec.metrics["accuracy"]
    assert len(load_records(tmp_path)) == 1


def test_glue_regression_stsb(tmp_path):
    rec = run_tiny(tmp_path, "glue/stsb", "tiny-roberta", method="lora")
    check_common(rec, "glue/stsb", "lora")
    assert -1 <= rec.metrics["pearson"] <= 1 and -1 <= rec.metrics["spearman"] <= 1


def test_translation_wmt16(tmp_path):
    rec = run_tiny(tmp_path, "wmt16_en_ro", "tiny-t5", extra=["trainer.max_new_tokens=8", "data.max_eval_samples=8", "data.eval_splits=[validation]"])
    check_common(rec, "wmt16_en_ro", "lora_fa")
    assert 0 <= rec.metrics["bleu"] <= 100 and 0 <= rec.metrics["rougeL"] <= 100


def test_instruction_tuning_then_mmlu(tmp_path):
    rec = run_tiny(tmp_path, "alpaca", "tiny-llama", method="full_ft",
                   extra=["data.mmlu_subjects=[anatomy,astronomy]", "data.mmlu_max_examples=4",
                          "data.max_length=256"])
    check_common(rec, "alpaca", "full_ft")
    assert 0 <= rec.metrics["mmlu_accuracy"] <= 1
    assert set(k for k in rec.metrics if k.startswith("mmlu/")) == {"mmlu/anatomy", "mmlu/astronomy"}
    assert rec.metrics["mmlu_accuracy"] == pytest.approx(
        (rec.metrics["mmlu/anatomy"] + rec.metrics["mmlu/astronomy"]) / 2)  # 4 questions each
    # the held-out rows (the first 24 of Alpaca's 100: data.max_eval_samples) scored after training
    assert rec.metrics["heldout_n"] == 24 and 0 < rec.metrics["heldout_loss"] < 20 and rec.metrics["heldout_tokens"] > 24
    assert rec.config["data"]["eval_from_train"] == 100


COT_FAST = ["data.mmlu_subjects=[anatomy]", "data.mmlu_max_examples=2", "data.max_length=256", "data.max_eval_samples=6",
            "++data.cot_max_new_tokens=8"]
COT_METRICS = {"heldout_loss", "heldout_tokens", "heldout_n", "cot_accuracy", "cot_n", "cot_format_rate",
               "cot_accuracy/aqua", "cot_accuracy/qasc", "cot_accuracy/strategyqa", "mmlu_accuracy", "mmlu/anatomy"}


def test_flan_cot_tuning_then_held_out_cot_and_mmlu(tmp_path):
    rec = run_tiny(tmp_path, "flan_cot", "tiny-llama", extra=COT_FAST)
    check_common(rec, "flan_cot", "lora_fa")
    assert set(rec.metrics) == COT_METRICS | {"train_loss"}
    assert rec.metrics["cot_n"] == 6 and rec.metrics["heldout_n"] == 6 and 0 <= rec.metrics["cot_accuracy"] <= 1


def test_base_model_on_an_instruction_task_is_evaluation_only(tmp_path):
    """Table 4's base row: method=base on task=flan_cot trains nothing and is scored as the
    fine-tuned runs are (the same held-out rows, the same generation, MMLU)."""
    rec = run_tiny(tmp_path, "flan_cot", "tiny-llama", method="base", extra=COT_FAST)
    assert rec.status == "ok", rec.error
    assert rec.trainable_params == 0 and rec.step_time_s is None and rec.peak_memory_bytes is None
    assert set(rec.metrics) == COT_METRICS and rec.metrics["cot_n"] == 6
    check_provenance(rec)


def test_cot_max_examples_zero_skips_generation(tmp_path):
    """The learning-rate search scores the held-out loss alone: cot_max_examples=0 generates nothing."""
    rec = run_tiny(tmp_path, "flan_cot", "tiny-llama", method="base",
                   extra=[*COT_FAST, "data.mmlu_subjects=[]", "++data.cot_max_examples=0"])
    assert rec.status == "ok", rec.error
    assert set(rec.metrics) == {"heldout_loss", "heldout_tokens", "heldout_n"}


def test_bf16_autocast_on_the_cpu(tmp_path):
    """The paper's precision (bf16) through Trainer's CPU autocast, on a tiny model: the path a
    GPU run takes, which the dry run maps to fp32 on CPUs without bf16 units (lorafa.dryrun)."""
    extra = ["data.mmlu_subjects=[anatomy]", "data.mmlu_max_examples=4", "data.max_length=128"]
    full = run_tiny(tmp_path / "fp32", "alpaca", "tiny-llama", extra=extra)
    half = run_tiny(tmp_path / "bf16", "alpaca", "tiny-llama",
                    extra=[*extra, "trainer.precision=bf16", "+model.dtype=bfloat16"])  # LLaMA's setting
    check_common(half, "alpaca", "lora_fa")
    assert half.config["trainer"]["precision"] == "bf16" and half.options["precision"] == "bf16"
    assert half.options["model_dtype"] == "bfloat16"
    # the same run, computed in bf16: close to fp32's, not equal to it
    assert half.metrics["train_loss"] == pytest.approx(full.metrics["train_loss"], rel=0.05)
    assert half.metrics["train_loss"] != full.metrics["train_loss"]


def test_gradient_checkpointing_trains_the_adapters_exactly(tmp_path, recwarn):
    """Table 4's setting: the frozen base's blocks recomputed in backward (transformers'
    activation checkpointing, non-reentrant, so the adapters behind frozen embeddings still
    get gradients): the same training as without it, and none of transformers' deprecation
    warnings (its `gradient_checkpointing` argument goes in v6)."""
    extra = ["data.mmlu_subjects=[anatomy]", "data.mmlu_max_examples=4", "data.max_length=128"]
    plain = run_tiny(tmp_path / "plain", "alpaca", "tiny-llama", extra=extra)
    recomputed = run_tiny(tmp_path / "ckpt", "alpaca", "tiny-llama", extra=[*extra, "trainer.gradient_checkpointing=true"])
    assert recomputed.status == "ok" and recomputed.options["gradient_checkpointing"] is True
    assert recomputed.metrics["train_loss"] == pytest.approx(plain.metrics["train_loss"], rel=1e-5)
    assert not [w for w in recwarn if "gradient_checkpointing" in str(w.message)]


@pytest.mark.parametrize("model", ["tiny-roberta", "minilm-l6"])
def test_prompt_tuning_method(tmp_path, model):
    rec = run_tiny(tmp_path, "glue/rte", model, method="prompt_tuning")
    check_common(rec, "glue/rte", "prompt_tuning")
    assert rec.trainable_params < 20_000  # virtual tokens + classifier head only


def test_bert_through_the_pipeline(tmp_path):
    """MiniLM's architecture (BERT) trains like RoBERTa: LoRA-FA on MRPC, pooler and classifier in full."""
    rec = run_tiny(tmp_path, "glue/mrpc", "minilm-l6")
    check_common(rec, "glue/mrpc", "lora_fa")
    assert rec.model == "minilm-l6" and rec.weights["source"] == "random-init"
    head = 32 * 32 + 32 + 32 * 2 + 2  # bert.pooler.dense + classifier
    assert rec.trainable_params == head + 8 * (3 * 32 + 32 + 64 + 32)  # B of q, k, v, o, intermediate, output


def test_wandb_offline_summary_matches_the_record(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    rec = run_tiny(tmp_path, "glue/mrpc", "tiny-roberta", extra=["logger=wandb"])
    logs = list(tmp_path.glob("wandb/offline-run-*/*.wandb"))
    assert len(logs) == 1
    summary = read_wandb_summary(logs[0])
    deadline = time.monotonic() + 30
    while "status" not in summary and time.monotonic() < deadline:
        # wandb-core's writer goroutine may still be flushing the final summary after finish() returns
        # (seen once in CI); the file is complete when the last key we set is in it.
        time.sleep(0.5)
        summary = read_wandb_summary(logs[0])
    assert "status" in summary, f"no final summary in {logs[0]}: keys {sorted(summary)}"
    for key in ("accuracy", "f1", "eval_loss"):
        assert summary[key] == pytest.approx(rec.metrics[key])
    assert summary["peak_memory_bytes"] == rec.peak_memory_bytes and summary["status"] == "ok"


def read_wandb_summary(path: Path) -> dict:
    """The run summary stored in an offline .wandb file (this wandb writes no wandb-summary.json
    offline): LevelDB-log framing, 32 KiB blocks of 7-byte-headed chunks, each record a protobuf."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, summary, pending = 7, 32768, {}, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # no room for a header: the rest of the block is padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        if (length == 0 and kind == 0) or pos + 7 + length > len(data):  # padding, or a chunk still being written
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "summary":
                for item in record.summary.update:
                    summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return summary


def test_bad_config_values_fail_before_any_model_is_built(tmp_path):
    with pytest.raises(ValueError, match="AdapterConfig.r=0"):
        spec_for(tmp_path, ["method.adapter.r=0"])
    with pytest.raises(ValueError, match=r"trainer.lr=-1.0 is invalid"):
        spec_for(tmp_path, ["trainer.lr=-1.0"])
    with pytest.raises(ValueError, match="needs a model of family: seq2seq"):
        spec_for(tmp_path, ["task=wmt16_en_ro", "model=tiny-roberta"])
    with pytest.raises(ValueError, match="evaluation only"):
        spec_for(tmp_path, ["task=mmlu"])


def test_base_method_and_held_out_settings_in_the_config(tmp_path):
    from lorafa.results import config_hash

    with pytest.raises(ValueError, match="trains nothing: it evaluates a base model on task=mmlu or an instruction task"):
        spec_for(tmp_path, ["task=glue/mrpc", "method=base"])
    with pytest.raises(ValueError, match=r"data.mmlu_subjects=\[\] is invalid for task='mmlu'"):
        spec_for(tmp_path, ["task=mmlu", "method=base", "data.mmlu_subjects=[]"])
    with pytest.raises(ValueError, match=r"data.cot_max_new_tokens=0 is invalid; allowed: an integer >= 1"):
        spec_for(tmp_path, ["task=flan_cot", "++data.cot_max_new_tokens=0"])
    with pytest.raises(ValueError, match=r"data.eval_from_train=-1 is invalid; allowed: an integer >= 0 or null"):
        spec_for(tmp_path, ["task=alpaca", "data.eval_from_train=-1"])
    base, _ = spec_for(tmp_path, ["task=flan_cot", "method=base"])
    assert not base.trains and base.config()["data"]["eval_from_train"] == 100  # the task's held-out size is hashed
    implicit, _ = spec_for(tmp_path, ["task=alpaca"])
    explicit, _ = spec_for(tmp_path, ["task=alpaca", "data.eval_from_train=100"])
    assert config_hash(implicit.config()) == config_hash(explicit.config())
    glue = spec_for(tmp_path, ["task=glue/mrpc"])[0].config()["data"]  # data fields added later stay out at their defaults
    assert "cot_max_new_tokens" not in glue and "cot_max_examples" not in glue and glue["eval_from_train"] is None


def cli(tmp_path, *args):
    env = dict(os.environ, LORAFA_RESULTS_DIR=str(tmp_path), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, str(ROOT / "experiments" / "run.py"), *args], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.parametrize("override,listed", [("task=glue/nope", "glue/mrpc"), ("method=dora", "lora_fa"),
                                              ("model=gpt-9", "tiny-llama")])
def test_unknown_names_list_the_available_ones(tmp_path, override, listed):
    out = cli(tmp_path, override, "scale=mini")
    assert out.returncode != 0
    assert out.returncode == 2 and "config error" in out.stderr and listed in out.stderr
    assert not (tmp_path / "mini" / "runs.jsonl").exists()


def test_rerunning_a_finished_multirun_trains_nothing(tmp_path):
    args = ["-m", "task=glue/mrpc", "model=tiny-roberta", *TINY["tiny-roberta"], *FAST, "scale=mini",
            "trainer.max_steps=2", "trainer.lr=1e-3,2e-3"]
    first = cli(tmp_path, *args)
    assert first.returncode == 0, first.stderr[-2000:]
    records = load_records(tmp_path / "mini")
    assert len(records) == 2 and set(records["lr"]) == {1e-3, 2e-3}
    second = cli(tmp_path, *args)
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.count("skip: finished run") == 2
    assert len((tmp_path / "mini" / "runs.jsonl").read_text().splitlines()) == 2


def test_a_crashing_run_leaves_a_failed_record_and_is_retried(tmp_path, monkeypatch):
    import lorafa.recipe as experiment

    spec, _ = spec_for(tmp_path, ["task=glue/rte", "model=tiny-roberta", *TINY["tiny-roberta"], *FAST])

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(experiment.FinetuneRecipe, "setup_data", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        experiment.run(spec)
    records = load_records(tmp_path)
    assert list(records["status"]) == ["failed"] and "disk on fire" in records["error"].iloc[0]
    monkeypatch.undo()
    assert experiment.run(spec).status == "ok"  # a failed record does not count as finished
    assert list(load_records(tmp_path)["status"]) == ["ok"]  # the last record per run wins


def test_length_grouping_reorders_batches_not_results(tmp_path):
    """trainer.group_by_length (the CPU scales): training batches of similar length, evaluation
    in order of length. The evaluation of the same model gives the same metrics in either order;
    the option enters the record's config (and hash) only when on, so older records keep theirs."""
    from lorafa import training
    from lorafa.recipe import FinetuneRecipe
    from lorafa.results import config_hash

    grouped, _ = spec_for(tmp_path, ["task=glue/mrpc", "model=tiny-roberta", *TINY["tiny-roberta"], *FAST,
                                     "trainer.group_by_length=true", "data.max_eval_samples=40",
                                     "trainer.eval_batch_size=8"])
    plain, _ = spec_for(tmp_path, ["task=glue/mrpc", "model=tiny-roberta", *TINY["tiny-roberta"], *FAST,
                                   "data.max_eval_samples=40", "trainer.group_by_length=false"])
    assert grouped.config()["trainer"]["group_by_length"] is True and "group_by_length" not in plain.config()["trainer"]
    assert config_hash(grouped.config()) != config_hash(plain.config())

    recipe = FinetuneRecipe(grouped, tmp_path / "work")
    recipe.setup_data()
    recipe.setup_model()
    unordered = recipe.prepared.evals[""]
    recipe.train("grouped")
    ordered = recipe.prepared.evals[""]
    lengths = [len(ids) for ids in ordered["input_ids"]]
    assert lengths == sorted(lengths) and lengths != [len(ids) for ids in unordered["input_ids"]]
    assert recipe.trainer.args.train_sampling_strategy == "group_by_length"
    widths = [batch["input_ids"].shape[1] for batch in recipe.trainer.get_eval_dataloader(ordered)]
    assert widths == sorted(widths)  # read in order: each batch pads to its own longest, the next is longer
    a, b = recipe.trainer.evaluate(unordered), recipe.trainer.evaluate(ordered)
    assert a["eval_accuracy"] == b["eval_accuracy"] and a["eval_f1"] == b["eval_f1"]
    assert abs(a["eval_loss"] - b["eval_loss"]) < 1e-6
    assert training.by_length(None) is None


@pytest.mark.parametrize("task,model", [("glue/mrpc", "tiny-roberta"), ("glue/stsb", "tiny-roberta"),
                                        ("alpaca", "tiny-llama")])
def test_batch_rebalance_micro_batches_give_the_random_batchs_gradient(tmp_path, task, model):
    """trainer.batch_rebalance: an optimizer batch of 8 random examples in 4 micro-batches of
    similar length (unequal sizes). Accumulated as the Trainer does, their gradient equals the
    gradient of the 8 as one padded batch: the classifier's loss (batch_normalised_loss) and the
    causal LM's are normalised over the optimizer batch, not per micro-batch."""
    import torch

    from lorafa import training
    from lorafa.recipe import FinetuneRecipe
    from lorafa.tasks.data import PreparedTask  # noqa: F401  (the collator's contract)

    spec, _ = spec_for(tmp_path, [f"task={task}", f"model={model}", "method=lora", *TINY[model], *FAST,
                                  "trainer.batch_size=2", "trainer.grad_accum=4", "trainer.batch_rebalance=true",
                                  "trainer.group_by_length=false", "seed=3", "data.max_length=256"])
    recipe = FinetuneRecipe(spec, tmp_path / "work")
    recipe.setup_data()
    recipe.setup_model()
    trainer, _ = training.build_trainer(recipe.model, recipe.tokenizer, spec.trainer, recipe.prepared,
                                        str(tmp_path / "out"), "rebalance")
    sampler = trainer._get_train_sampler()
    assert trainer.args.train_sampling_strategy == "batch_rebalance" and sampler.seed == 3
    steps = list(iter(sampler))
    steps = [steps[k:k + 4] for k in range(0, len(steps), 4)]
    micro = next(step for step in steps if len({len(idx) for idx in step}) > 1)  # micro-batches of unequal sizes
    union = [i for idx in micro for i in idx]
    assert len(union) == 8 == len(set(union))
    train, collate, model_ = recipe.prepared.train, recipe.prepared.collator, recipe.model
    model_.eval()  # no dropout: the two sides see the same function
    params = [p for p in model_.parameters() if p.requires_grad]

    def grads(batches):
        shift = task == "alpaca"
        items = sum((b["labels"][..., 1:] if shift else b["labels"]).ne(-100).sum() for b in batches)
        model_.zero_grad()
        for b in batches:
            loss = trainer.compute_loss(model_, dict(b), num_items_in_batch=items)
            if not (trainer.model_accepts_loss_kwargs or trainer.compute_loss_func):
                loss = loss / len(batches)
            loss.backward()
        return [p.grad.clone() for p in params]

    accumulated = grads([collate([train[i] for i in idx]) for idx in micro])
    whole = grads([collate([train[i] for i in union])])
    for a, w in zip(accumulated, whole):
        torch.testing.assert_close(a, w, rtol=1e-4, atol=1e-6)
    if task != "alpaca":
        assert trainer.compute_loss_func is training.batch_normalised_loss  # the models' own loss is a local mean


def test_batch_rebalance_and_group_by_length_exclude_each_other():
    from lorafa.training import TrainSettings

    with pytest.raises(ValueError, match="set one of them"):
        TrainSettings(group_by_length=True, batch_rebalance=True)
