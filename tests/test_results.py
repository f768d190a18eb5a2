"""Run records: schema validation, hashing, atomic write, tolerant loading, resume lookup."""

import json
import multiprocessing as mp
import subprocess
import sys

import pytest

from lorafa.results import (
    FIELDS, RunRecord, config_hash, find_finished, load_records, read_record, write_record,
)


def rec(run_id="r1", **kw):
    base = dict(experiment="table2", model="roberta-base", task="glue/mrpc", method="lora_fa",
                config_hash="h1", r=8, alpha=16, lr=5e-4, seed=0, metrics={"accuracy": 0.9})
    base.update(kw)
    return RunRecord(run_id=run_id, **base)


def test_status_and_memory_source_are_validated():
    with pytest.raises(ValueError, match=r"status must be one of ok, diverged, oom, failed"):
        rec(status="crashed")
    with pytest.raises(ValueError, match=r"memory_source must be one of cuda, simulated, cpu-accounting"):
        rec(memory_source="gpu")
    with pytest.raises(ValueError, match="memory_breakdown keys"):
        rec(memory_breakdown={"weights": 1, "kv_cache": 2})
    with pytest.raises(ValueError, match="run_id"):
        rec(run_id="a/b")
    with pytest.raises(ValueError, match=r"metrics\['accuracy'\]"):
        rec(metrics={"accuracy": "high"})
    assert rec(memory_source="simulated", status="oom").status == "oom"


def test_config_hash_is_stable_and_order_independent():
    a = config_hash({"lr": 1e-4, "model": {"name": "roberta-base", "r": 8}})
    b = config_hash({"model": {"r": 8, "name": "roberta-base"}, "lr": 1e-4})
    assert a == b and len(a) == 12 and all(c in "0123456789abcdef" for c in a)
    assert a != config_hash({"lr": 2e-4, "model": {"name": "roberta-base", "r": 8}})
    # the same in a fresh interpreter (no dependence on hash randomisation)
    code = ("from lorafa.results import config_hash;"
            "print(config_hash({'model': {'r': 8, 'name': 'roberta-base'}, 'lr': 1e-4}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == a
    with pytest.raises(TypeError):
        config_hash({"x": object()})


def test_import_is_light():
    code = ("import sys, lorafa.results; "
            "print(any(m in sys.modules for m in ('torch', 'transformers', 'hydra')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_write_then_load_roundtrip(tmp_path):
    r = rec(eval_history=[{"step": 10, "epoch": 0.5, "accuracy": 0.7}],
            memory_breakdown={"weights": 10, "activations": 20}, options={"dropout": 0.1},
            peak_memory_bytes=123, memory_source="cpu-accounting")
    path = write_record(r, tmp_path)
    assert path == tmp_path / "runs" / "r1" / "record.json"
    assert read_record(path) == r
    assert not [p for p in path.parent.iterdir() if p.name != "record.json"]  # no temp file left
    df = load_records(tmp_path)
    assert list(df.columns[: len(FIELDS)]) == list(FIELDS)
    row = df.iloc[0]
    assert row.run_id == "r1" and row.metrics == {"accuracy": 0.9}
    assert row.eval_history[0]["step"] == 10 and row.options == {"dropout": 0.1}


def test_nan_metrics_are_written_as_null(tmp_path):
    write_record(rec(status="diverged", metrics={"loss": float("nan")}), tmp_path)
    line = (tmp_path / "runs.jsonl").read_text()
    assert "NaN" not in line and json.loads(line)["metrics"] == {"loss": None}


def test_load_keeps_last_record_per_run_id(tmp_path):
    write_record(rec("a", metrics={"accuracy": 0.1}), tmp_path)
    write_record(rec("b"), tmp_path)
    write_record(rec("a", metrics={"accuracy": 0.2}), tmp_path)
    df = load_records(tmp_path)
    assert list(df.run_id) == ["b", "a"]
    assert df.set_index("run_id").loc["a", "metrics"] == {"accuracy": 0.2}


def test_load_skips_truncated_and_malformed_lines_with_warning(tmp_path):
    write_record(rec("a"), tmp_path)
    index = tmp_path / "runs.jsonl"
    good = json.dumps(rec("c").to_dict())
    with open(index, "a") as f:
        f.write("[1, 2]\n")  # valid JSON, not a record
        f.write(good[: len(good) // 2])  # a writer killed mid-line: no newline
    write_record(rec("b"), tmp_path)  # must start on a fresh line
    with pytest.warns(UserWarning) as caught:
        df = load_records(tmp_path)
    assert sorted(df.run_id) == ["a", "b"]
    messages = [str(w.message) for w in caught]
    assert any("runs.jsonl:2:" in m for m in messages)
    assert any("runs.jsonl:3:" in m and "truncated" in m for m in messages)


def test_load_empty_root(tmp_path):
    df = load_records(tmp_path)
    assert len(df) == 0 and list(df.columns) == list(FIELDS)


def test_find_finished(tmp_path):
    assert find_finished(tmp_path, "h1") is None
    write_record(rec("failed", status="failed", error="boom"), tmp_path)
    assert find_finished(tmp_path, "h1") is None
    write_record(rec("ok"), tmp_path)
    write_record(rec("other", config_hash="h2"), tmp_path)
    found = find_finished(tmp_path, "h1")
    assert found is not None and found.run_id == "ok" and found.metrics == {"accuracy": 0.9}


def test_corrupt_record_json_is_not_finished(tmp_path):
    path = write_record(rec("ok"), tmp_path)
    path.write_text(path.read_text()[:40])  # torn by a crash or disk-full
    with pytest.warns(UserWarning, match="corrupt"):
        assert find_finished(tmp_path, "h1") is None
    with pytest.raises(ValueError, match="corrupt"):
        read_record(path)
    # a record.json that disagrees with the index (rewritten by a later failed run) is not finished
    write_record(rec("ok"), tmp_path)
    path.write_text(json.dumps(rec("ok", status="failed").to_dict()))
    assert find_finished(tmp_path, "h1") is None
    # a missing record.json is not finished either
    path.unlink()
    assert find_finished(tmp_path, "h1") is None


def _writer(root, worker, n):
    for i in range(n):
        write_record(rec(f"w{worker}-{i}", options={"pad": "x" * 5000}), root)


def test_parallel_appends_do_not_interleave(tmp_path):
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(tmp_path, w, 25)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    lines = (tmp_path / "runs.jsonl").read_text().splitlines()
    assert len(lines) == 100
    assert all(json.loads(line)["options"]["pad"] == "x" * 5000 for line in lines)
    assert len(load_records(tmp_path)) == 100


def test_records_written_before_the_provenance_fields_still_read(tmp_path):
    """Old records (no config, versions, weights, git_dirty) load, and count as finished."""
    old = {"run_id": "old", "config_hash": "abc", "status": "ok", "metrics": {"accuracy": 0.5}, "git_commit": "1234567"}
    (tmp_path / "runs" / "old").mkdir(parents=True)
    (tmp_path / "runs" / "old" / "record.json").write_text(json.dumps(old))
    (tmp_path / "runs.jsonl").write_text(json.dumps(old) + "\n")
    record = find_finished(tmp_path, "abc")
    assert record.run_id == "old" and record.config is None and record.versions is None and record.weights is None
    frame = load_records(tmp_path)
    assert frame.loc[0, "metrics"] == {"accuracy": 0.5} and frame.loc[0, "config"] is None


def test_a_configuration_shared_by_two_experiments_trains_once(tmp_path):
    """Table 6's Kaiming point is Table 7's alpha 32: the second sweep gets a record of its own
    (its experiment, config and hash) with the first run's results and provenance."""
    from lorafa.runner import run_once

    trained = []

    def execute(accuracy):
        return lambda: trained.append(accuracy) or dict(status="ok", metrics={"accuracy": accuracy})

    def sweep(experiment, accuracy, lr=1e-3):
        config = {"experiment": experiment, "task": "glue/mrpc", "trainer": {"lr": lr}}
        describe = dict(experiment=experiment, task="glue/mrpc", method="lora_fa")
        return run_once(tmp_path, config, f"{experiment}-{lr}", describe, execute(accuracy))

    first, reused = sweep("table6", 0.72)
    assert not reused and trained == [0.72]
    shared, reused = sweep("table7", 0.99)  # the same configuration: not trained again
    assert reused and trained == [0.72]
    assert shared.experiment == "table7" and shared.run_id == "table7-0.001" and shared.metrics == {"accuracy": 0.72}
    assert shared.config["experiment"] == "table7" and shared.config_hash == config_hash(shared.config) != first.config_hash
    assert shared.options["same_run_as"] == first.run_id and shared.started_at == first.started_at
    assert read_record(tmp_path / "runs" / "table7-0.001" / "record.json") == shared
    assert sweep("table7", 0.5)[0] == shared and trained == [0.72]  # its own record now: found by hash
    assert not sweep("table7", 0.61, lr=3e-3)[1] and trained == [0.72, 0.61]  # another configuration trains
