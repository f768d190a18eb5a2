"""The dry run (make dry-run) keeps the paper-scale path exercised: real architectures with
random weights, the Hydra launcher, the Trainer, the task's preprocessing and metrics, records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def dry_sweep(tmp_path: Path, *overrides: str) -> list[dict]:
    """`run.py -m ... dry_run=true` as a user runs it; the records it wrote (not earlier ones)."""
    index = tmp_path / "runs.jsonl"
    before = len(index.read_text().splitlines()) if index.exists() else 0
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline", WANDB_SILENT="true",
               PYTHONPATH=str(ROOT))
    cmd = [sys.executable, str(ROOT / "experiments" / "run.py"), "-m", *overrides, "dry_run=true", "logger=wandb",
           f"results_dir={tmp_path}", f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[dry-run] precision" in proc.stdout  # the mapping is printed
    return [json.loads(line) for line in index.read_text().splitlines()[before:]]


def test_dry_run_of_a_paper_glue_point_and_a_paper_translation_point(tmp_path):
    from analysis.common import load
    from lorafa.models import load_model_spec

    (glue,) = dry_sweep(tmp_path, "experiment=table2", "task=glue/rte", "method=lora_fa", "trainer.lr=5e-5", "seed=0")
    assert glue["status"] == "ok" and glue["model"] == "roberta-base" and glue["experiment"] == "table2"
    assert glue["config"]["dry_run"] is True and glue["options"]["dry_run"] is True
    from lorafa.dryrun import has_bf16_units

    # the paper's bf16, as far as this CPU runs it (see the mapping's test below)
    assert glue["config"]["trainer"]["precision"] == ("bf16" if has_bf16_units() else "fp32")
    assert glue["config"]["trainer"]["max_steps"] == 1
    assert glue["options"]["steps_run"] == 1 and 0 <= glue["metrics"]["accuracy"] <= 1
    # RoBERTa-base at full size, from a from_pretrained directory of random weights
    arch = glue["config"]["model"]["arch"]
    assert {k: arch[k] for k in ("hidden_size", "num_hidden_layers", "vocab_size")} == \
           {k: load_model_spec("roberta-base").arch[k] for k in ("hidden_size", "num_hidden_layers", "vocab_size")}
    assert glue["weights"]["source"] == "local" and glue["weights"]["path"].startswith(str(tmp_path / "models"))

    (t5,) = dry_sweep(tmp_path, "experiment=table3", "method=lora_fa", "trainer.lr=5e-5")
    assert t5["status"] == "ok" and t5["model"] == "t5-small" and t5["task"] == "wmt16_en_ro"
    assert {"bleu", "rougeL"} <= set(t5["metrics"]) and t5["config"]["trainer"]["num_beams"] == 4
    assert t5["config"]["model"]["arch"]["d_model"] == load_model_spec("t5-small").arch["d_model"]

    # never counted by the analysis, wherever they are written
    from lorafa.results import load_records

    assert len(load_records(tmp_path)) == 2
    assert load(tmp_path.name, tmp_path.parent).empty


def test_dry_run_cuts_only_what_does_not_change_the_code_path():
    from dry_run import distinct_points, reduced_overrides

    table2 = reduced_overrides("table2")
    assert table2[0].startswith("task=glue/mrpc,glue/cola,") and table2[2:] == ["trainer.lr=5e-05", "seed=0"]
    assert distinct_points("table2") == 32 and distinct_points("table6") == 3  # 8 tasks x 4 methods; 3 inits
    assert "rank=1" in reduced_overrides("fig6") and distinct_points("fig6") == 2
    # memory: every model x method x recomputation of Table 5; nf4 and ZeRO-3 have no GPU step
    assert distinct_points("table5") == 36 and "optimisation=none,flash_attention" in reduced_overrides("fig2a")


@pytest.mark.parametrize("precision,bf16_units,expected,note", [
    ("fp32", False, "fp32", None), ("bf16", True, "bf16", None), ("fp16", True, "bf16", "fp16 -> bf16"),
    ("bf16", False, "fp32", "bf16 -> fp32"), ("fp16", False, "fp32", "fp16 -> fp32"),
])
def test_gpu_precisions_become_what_the_cpu_runs_and_say_so(precision, bf16_units, expected, note):
    from lorafa.dryrun import cpu_precision

    notes = []
    assert cpu_precision(precision, notes, bf16_units=bf16_units) == expected
    assert (notes == []) if note is None else (note in notes[0])


@pytest.mark.parametrize("dtype,bf16_units,expected", [
    ("float32", False, "float32"), ("bfloat16", True, "bfloat16"), ("bfloat16", False, "float32"),
    ("float16", False, "float32"),
])
def test_16_bit_weights_become_float32_on_a_cpu_without_bf16_units(dtype, bf16_units, expected):
    from lorafa.dryrun import cpu_dtype

    notes = []
    assert cpu_dtype(dtype, notes, bf16_units=bf16_units) == expected
    assert bool(notes) == (expected != dtype)


def test_rehearsal_keeps_the_real_layer_shapes_of_a_7b_model(tmp_path, monkeypatch):
    from lorafa import dryrun
    from lorafa.models import load_model_spec

    built = []  # building 2 LLaMA-7B layers takes a minute: check what would be built
    monkeypatch.setattr(dryrun, "_save_random_model",
                        lambda arch, family, tokenizer, folder: (built.append(arch), folder.mkdir(parents=True)))
    spec, notes = dryrun.rehearsal_weights(load_model_spec("llama-7b"), tmp_path)
    assert spec.arch["num_hidden_layers"] == dryrun.CAUSAL_LAYERS == built[0]["num_hidden_layers"]
    assert (built[0]["hidden_size"], built[0]["intermediate_size"], built[0]["vocab_size"]) == (4096, 11008, 32000)
    assert spec.path == str((tmp_path / spec.path.split("/")[-1]).resolve()) and spec.hub_id == "huggyllama/llama-7b"
    assert any("2 of its 32 layers" in n for n in notes)


def test_memory_dry_run_takes_the_gpu_meters_step_on_the_cpu(tmp_path):
    import pytest
    import torch

    from lorafa.dryrun import rehearsal_point
    from lorafa.memory.measure import measure, run_point
    from lorafa.memory.point import MemoryPoint

    point = MemoryPoint(model="tiny-llama", method="lora_fa", batch_size=16, seq_len=1024, r=8,
                        num_adapted_layers=4, selective_recompute=True, experiment="fig3")
    rehearsal, notes = rehearsal_point(point)
    assert (rehearsal.backend, rehearsal.batch_size, rehearsal.seq_len) == ("cuda", 2, 64)
    assert rehearsal.model.arch["num_hidden_layers"] == 2 and rehearsal.num_adapted_layers == 2  # 4 of 4 layers' worth, halved
    record, reused = run_point(rehearsal, tmp_path)
    assert not reused and record.status == "ok" and record.config["dry_run"] is True
    assert record.config["arch"]["num_hidden_layers"] == 2 and record.options["dry_run"] is True
    if not torch.cuda.is_available():
        assert record.memory_source == "cpu-accounting" and record.step_time_s > 0
        parts = record.memory_breakdown
        assert record.peak_memory_bytes == parts["weights"] + parts["optimizer_states"] + parts["gradients"] \
            + parts["activations"] > 0
        with pytest.raises(RuntimeError, match="needs a CUDA GPU"):  # only a dry run goes without one
            measure(MemoryPoint(model="tiny-llama", method="lora_fa", batch_size=1, seq_len=8, backend="cuda"))
    with pytest.raises(ValueError, match="simulated only"):
        rehearsal_point(MemoryPoint(model="tiny-llama", method="lora_fa", batch_size=1, seq_len=8, quantization="nf4"))
