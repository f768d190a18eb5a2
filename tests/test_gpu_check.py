"""benchmarks/gpu_check.py (make gpu-check) rehearsed on the CPU: its points are conf/memory's
Table 5 points, every row is written, an out-of-memory error is a result that frees the model
before the next point, the budget skips what is left, and without CUDA the real mode refuses."""

import csv
import importlib.util
import time
import weakref
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import lorafa.memory.cuda as cuda_meter
from benchmarks import gpu_check

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("memory_cli", ROOT / "experiments" / "memory.py")
memory_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(memory_cli)


def _rows(out: Path) -> list[dict]:
    with (out / "gpu_check.csv").open() as f:
        return list(csv.DictReader(f))


def test_points_are_the_simulated_table5_points():
    """Same step as `experiments/memory.py -m experiment=table5` (only the record's experiment
    name and the assumed 80 GB capacity differ), so measured/simulated compares like with like."""
    points = gpu_check.paper_points()
    assert [name for name, _ in points] == [
        "roberta-base/full_ft", "roberta-base/lora", "roberta-base/lora_fa", "t5-base/full_ft", "t5-base/lora",
        "t5-base/lora_fa", "llama-7b/lora_fa+recompute", "llama-7b/lora+recompute", "llama-7b/lora_fa",
        "llama-7b/lora"]
    with initialize_config_dir(config_dir=str(ROOT / "conf" / "memory"), version_base="1.3"):
        for _, p in points:
            overrides = ["experiment=table5", f"model={p.model.name}", f"method={p.method}",
                         f"selective_recompute={str(p.selective_recompute).lower()}"]
            theirs = memory_cli.to_point(compose("config", overrides=overrides))[0]
            ignore = ("experiment", "capacity_bytes")
            assert ({k: v for k, v in p.config().items() if k not in ignore}
                    == {k: v for k, v in theirs.config().items() if k not in ignore})
    llama = dict(points)["llama-7b/lora"]
    assert (llama.batch_size, llama.seq_len, llama.r, llama.attn_implementation, llama.dropout) == (16, 1024, 64,
                                                                                                    "sdpa", 0.0)


def test_rehearsal_writes_every_row_and_survives_an_injected_oom(tmp_path, monkeypatch):
    """The first point's step raises CUDA's OOM: that row says "oom", its model is freed before
    the next point builds its own, and the point after it is measured and simulated. (Two
    RoBERTa-base points keep this under ~30 s; the causal-LM and recomputation path of the
    rehearsed step is tests/test_dry_run.py's.)"""
    real_step, calls, model_refs, freed_before_next = cuda_meter.cuda_step, [], [], []

    def step(model, make_batch, **kwargs):
        calls.append(1)
        if model_refs:
            freed_before_next.append(model_refs[0]() is None)
        if len(calls) == 1:
            model_refs.append(weakref.ref(model))
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")
        return real_step(model, make_batch, **kwargs)

    monkeypatch.setattr(cuda_meter, "cuda_step", step)
    points = ["roberta-base/lora", "roberta-base/lora_fa"]
    assert gpu_check.main(["--rehearse", "--points", *points, "--out", str(tmp_path)]) == 0
    rows = _rows(tmp_path)
    assert [r["point"] for r in rows] == points
    assert [r["status"] for r in rows] == ["oom", "ok"]
    assert "OutOfMemoryError" in rows[0]["note"] and rows[0]["measured_bytes"] == ""
    assert freed_before_next == [True]
    for r in rows:
        assert int(r["simulated_bytes"]) > 0 and r["mode"] == "rehearsal" and r["torch"] == torch.__version__
        assert int(r["batch_size"]) <= 2 and int(r["seq_len"]) <= 64
    assert int(rows[1]["measured_bytes"]) > 0 and 0.5 < float(rows[1]["measured_over_simulated"]) < 2
    md = (tmp_path / "gpu_check.md").read_text()
    assert "Rehearsal on the CPU" in md and md.count("\n| roberta-base/") == 2 and "| oom |" in md


def test_budget_skips_the_points_after_it(tmp_path, monkeypatch):
    def fake_check(name, point, *, rehearse, capacity):
        time.sleep(0.3)
        return {**gpu_check.describe(name, point), "status": "ok", "measure_s": 0.3, "simulate_s": 0.0}, []

    monkeypatch.setattr(gpu_check, "check_point", fake_check)
    assert gpu_check.main(["--rehearse", "--budget-s", "0.1", "--points", "t5-base/*", "--out", str(tmp_path)]) == 0
    rows = _rows(tmp_path)
    assert [r["status"] for r in rows] == ["ok", "skipped", "skipped"]
    assert "budget" in rows[1]["note"]


def test_real_mode_refuses_without_cuda(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device" in err and "--rehearse" in err
    assert not (tmp_path / "out").exists()


def test_unknown_point_pattern_names_the_field(capsys):
    with pytest.raises(ValueError, match="points='nope/\\*'"):
        gpu_check.select(gpu_check.paper_points(), ["nope/*"])
    assert gpu_check.main(["--rehearse", "--points", "nope/*"]) == 2
    assert "points=" in capsys.readouterr().err
