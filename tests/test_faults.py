"""Crash-safe runs and sweeps: SIGKILL, SIGTERM (preemption), corrupt records, unwritable or full disks."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import TrainerCallback

import lorafa.recipe as experiment
from lorafa.results import load_records, read_record
from lorafa.training import TrainingInterrupted
from tests.test_pipeline import FAST, ROOT, TINY, spec_for

BASE = ["task=glue/mrpc", "model=tiny-roberta", "model.path=null", *TINY["tiny-roberta"], *FAST]  # built from arch: tiny


class SigtermAt(TrainerCallback):
    """Sends this process a real SIGTERM at the end of optimizer step `step`."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_checkpoints_and_the_rerun_resumes_from_it(tmp_path):
    spec, _ = spec_for(tmp_path, [*BASE, "trainer.max_steps=8"])
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as stop:
        experiment.run(spec, callbacks=[SigtermAt(3)])
    assert signal.getsignal(signal.SIGTERM) is handler  # restored
    # stops at the step end after the signal (step 4: the SIGTERM arrived after step 3's check)
    assert stop.value.step == 4 and Path(stop.value.checkpoint).name == "checkpoint-4"
    assert not (tmp_path / "runs.jsonl").exists() and not (tmp_path / "runs").exists()  # no record at all
    earlier = json.loads((Path(stop.value.checkpoint).parent / experiment.EARLIER_WALL).read_text())["wall_s"]
    assert earlier > 0
    saved = {p.name for p in Path(stop.value.checkpoint).iterdir()}
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"} <= saved
    from safetensors import safe_open
    with safe_open(Path(stop.value.checkpoint) / "model.safetensors", "pt") as f:  # trainable only, no base
        assert {n.split(".")[-2] for n in f.keys() if "classifier" not in n} == {"lora_B"}

    resumed = experiment.run(spec)
    assert resumed.status == "ok"
    assert resumed.options["resumed_from_step"] == 4 and resumed.options["steps_run"] == 4  # not 8 again
    assert resumed.options["wall_s_before_resume"] == pytest.approx(earlier, abs=1e-3)
    assert resumed.wall_s > earlier  # both segments
    assert not (tmp_path / "checkpoints").exists()  # deleted once the record is written

    # the resumed run ends where an uninterrupted one does
    whole = experiment.run(spec_for(tmp_path / "whole", [*BASE, "trainer.max_steps=8"])[0])
    assert whole.options["steps_run"] == 8 and "resumed_from_step" not in whole.options
    for key in ("eval_loss", "accuracy"):
        assert resumed.metrics[key] == pytest.approx(whole.metrics[key], abs=1e-5)


def cli(tmp_path, args, **kw):
    env = dict(os.environ, LORAFA_RESULTS_DIR=str(tmp_path), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(ROOT / "experiments" / "run.py"), *args], cwd=tmp_path, env=env,
                            text=True, **kw)


def test_sigkill_during_a_three_run_sweep_then_rerun_gives_three_ok_records(tmp_path):
    args = ["-m", *BASE, "scale=mini", "trainer.logging_steps=1", "trainer.max_steps=12",
            "trainer.lr=1e-3,2e-3,3e-3"]
    proc = cli(tmp_path, args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    finished, seen = 0, []
    try:
        for line in proc.stdout:  # kill as soon as the second run has logged a training loss
            seen.append(line)
            finished += line.startswith("[lorafa] ok:")
            if finished == 1 and "'loss'" in line:
                os.killpg(proc.pid, signal.SIGKILL)
                break
    finally:
        proc.wait(timeout=600)
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-20:])
    root = tmp_path / "mini"
    index = [json.loads(x) for x in (root / "runs.jsonl").read_text().splitlines()]
    assert [r["status"] for r in index] == ["ok"]  # the killed run left no record, partial or other
    assert [p.name for p in (root / "runs").iterdir()] == [index[0]["run_id"]]

    rerun = cli(tmp_path, args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err[-2000:]
    assert out.count("skip: finished run") == 1 and out.count("[lorafa] ok:") == 2
    records = load_records(root)
    assert len(records) == 3 and set(records["status"]) == {"ok"} and set(records["lr"]) == {1e-3, 2e-3, 3e-3}
    assert len((root / "runs.jsonl").read_text().splitlines()) == 3
    assert not (root / "checkpoints").exists()


def test_a_corrupt_or_partial_record_is_rerun_not_counted(tmp_path):
    spec, _ = spec_for(tmp_path, [*BASE, "trainer.max_steps=2"])
    first = experiment.run(spec)
    path = tmp_path / "runs" / first.run_id / "record.json"
    text = path.read_text()
    path.write_text(text[: len(text) // 2])  # a partial write (or a disk error) left half a file
    with pytest.raises(ValueError, match="corrupt record"):
        read_record(path)
    with pytest.warns(UserWarning, match="corrupt record.*not counted as finished"):
        second = experiment.run(spec)
    assert second.status == "ok" and second.started_at >= first.started_at
    assert read_record(path).status == "ok"  # rewritten whole
    path.unlink()  # a record file that vanished: the index line alone does not count either
    third = experiment.run(spec)
    assert third.status == "ok" and path.is_file()
    assert collections.Counter(load_records(tmp_path)["status"]) == {"ok": 1}


def _no_model(*args, **kwargs):
    raise AssertionError("a model was built although the run should have stopped first")


def test_unwritable_results_directory_is_reported_before_any_model_is_built(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    spec, _ = spec_for(blocker / "results", BASE)
    monkeypatch.setattr(experiment.FinetuneRecipe, "setup_model", _no_model)
    with pytest.raises(ValueError, match=r"results directory .*a-file/results is not writable"):
        experiment.run(spec)


def test_full_disk_is_reported_before_training(tmp_path, monkeypatch):
    Usage = collections.namedtuple("Usage", "total used free")
    spec, _ = spec_for(tmp_path, BASE)
    monkeypatch.setattr(experiment.FinetuneRecipe, "setup_model", _no_model)
    monkeypatch.setattr(experiment.shutil, "disk_usage", lambda path: Usage(10 * 2**30, 10 * 2**30 - 2**20, 2**20))
    with pytest.raises(ValueError, match=r"has 1\.0 MiB free; a run's record and logs needs about 64\.0 MiB"):
        experiment.run(spec)
    assert not (tmp_path / "runs.jsonl").exists()
