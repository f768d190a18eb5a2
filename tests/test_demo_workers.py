"""demo.py --workers N: unfinished runs as their own processes, N at a time."""

from __future__ import annotations

import os
import subprocess
from types import SimpleNamespace

import pytest
from test_pipeline import FAST, TINY, spec_for

import demo  # experiments/demo.py: pytest's pythonpath (pyproject.toml) has experiments/
from lorafa.recipe import EXIT_PREEMPTED
from lorafa.results import config_hash, load_records


def jobs(tmp_path, methods):
    out = []
    for method in methods:
        overrides = ["scale=mini", "task=glue/mrpc", "model=tiny-roberta", f"method={method}", *TINY["tiny-roberta"], *FAST]
        spec, _ = spec_for(tmp_path, overrides)
        digest = config_hash(spec.config())
        same = config_hash({k: v for k, v in spec.config().items() if k != "experiment"})
        out.append(demo.Job(overrides, digest, spec.run_id(digest), same))
    return out


class Bar:
    def __init__(self):
        self.n = 0

    def update(self, k):
        self.n += k

    def set_postfix_str(self, text):
        pass


def test_two_workers_run_two_jobs_in_their_own_processes(tmp_path):
    counts = {"trained": 0, "skipped": 0, "failed": 0}
    bar = Bar()
    todo = jobs(tmp_path, ["lora", "lora_fa"])
    demo.run_in_workers(todo, tmp_path, 2, counts, bar)
    records = load_records(tmp_path)
    assert counts["trained"] == 2 and bar.n == 2
    assert sorted(records["status"]) == ["ok", "ok"] and set(records["config_hash"]) == {j.digest for j in todo}
    # each ran on cores // workers threads, and says so
    threads = max(1, (os.cpu_count() or 1) // 2)
    assert all(f",{threads}threads@" in d for d in records["device"])
    assert all((tmp_path / "logs" / f"{j.run_id}.log").read_text() for j in todo)


def test_a_stopped_suite_stops_its_running_jobs(tmp_path, monkeypatch):
    """Ctrl-C or SIGTERM while jobs run: each gets SIGTERM (a training checkpoints on it) and is
    waited for, so no run is left behind writing into the results."""
    started = []
    real_popen = subprocess.Popen

    def popen(*args, **kwargs):
        started.append(real_popen(["sleep", "30"]))
        return started[-1]

    def interrupt(_):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo.subprocess, "Popen", popen)
    monkeypatch.setattr(demo.time, "sleep", interrupt)
    with pytest.raises(KeyboardInterrupt):
        demo.run_in_workers(jobs(tmp_path, ["lora", "lora_fa", "full_ft"]), tmp_path, 2, {}, Bar())
    assert len(started) == 2 and all(p.returncode is not None for p in started)


@pytest.mark.parametrize("returncode, record, outcome", [
    (0, SimpleNamespace(status="ok", options={}, error=None), "trained"),
    (0, SimpleNamespace(status="ok", options={"same_run_as": "x"}, error=None), "copied"),
    (0, SimpleNamespace(status="diverged", options={}, error=None), "trained"),
    (1, SimpleNamespace(status="failed", options={}, error="data unavailable offline\nglue/mnli"), "unavailable"),
    (1, SimpleNamespace(status="failed", options={}, error="RuntimeError: boom"), "failed"),
    (2, None, "failed"),
    (EXIT_PREEMPTED, None, "interrupted"),
])
def test_job_outcome(returncode, record, outcome):
    assert demo.job_outcome(returncode, record) == outcome


def test_workers_must_be_positive():
    with pytest.raises(SystemExit):
        demo.main(["--workers", "0"])


def test_a_run_two_sweeps_share_is_trained_once(tmp_path):
    """Two jobs with one configuration under two experiments' names: the second waits for the
    first and copies its record (options.same_run_as) instead of training it again."""
    first, = jobs(tmp_path, ["lora_fa"])
    overrides = [*first.overrides, "experiment_name=other"]
    spec, _ = spec_for(tmp_path, overrides)
    digest = config_hash(spec.config())
    second = demo.Job(overrides, digest, spec.run_id(digest), first.same)
    counts = {"trained": 0, "skipped": 0, "failed": 0}
    demo.run_in_workers([first, second], tmp_path, 2, counts, Bar())
    assert counts["trained"] == 1 and counts["copied"] == 1 and counts["skipped"] == 0
    records = load_records(tmp_path)
    assert sorted(records["experiment"]) == ["other", "run"] and records["options"].map(lambda o: "same_run_as" in o).sum() == 1


def test_one_worker_counts_a_shared_run_as_copied(tmp_path, monkeypatch):
    """The serial path (WORKERS=1, make demo): the second sweep's job with the first's
    configuration copies its record and is counted as copied, not as a failure."""
    first, = jobs(tmp_path, ["lora_fa"])
    monkeypatch.setitem(demo.SUITES, "shared", ["x"])
    monkeypatch.setattr(demo, "sweep_jobs", lambda conf, name: [first.overrides,
                                                                [*first.overrides, "experiment_name=other"]])
    counts = demo.run_training_sweeps(tmp_path, suite="shared", counts={"trained": 0, "skipped": 0, "failed": 0})
    assert (counts["trained"], counts.get("copied"), counts["failed"], counts["jobs"]) == (1, 1, 0, 2)
    records = load_records(tmp_path)
    assert sorted(records["experiment"]) == ["other", "run"] and (records["status"] == "ok").all()
