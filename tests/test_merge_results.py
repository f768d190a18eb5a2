"""experiments/merge_results.py: a suite timed fresh in another results root adds its new records
and its timing to the committed ones, keeps the committed record of a run both hold, and adds
nothing twice."""

import json

import pytest

from lorafa.results import RunRecord, load_records, write_record
from merge_results import main


def rec(run_id, config_hash, accuracy, status="ok"):
    return RunRecord(run_id=run_id, experiment="table2", model="minilm-l6", task="glue/mrpc", method="lora",
                     lr=1e-3, seed=0, status=status, metrics={"accuracy": accuracy}, wall_s=10.0,
                     config={"trainer": {"lr": 1e-3}}, config_hash=config_hash)


def timing(suite, finished_at, skipped, interrupted, wall):
    return {"suite": suite, "finished_at": finished_at, "wall_s": wall, "skipped": skipped, "trained": 3,
            "interrupted": interrupted}


def test_merge_copies_new_records_keeps_shared_ones_and_sums_the_fresh_suite(tmp_path, capsys):
    src, dst = tmp_path / "fresh" / "small", tmp_path / "small"
    write_record(rec("grid", "h1", 0.80), dst)           # a grid run ...
    write_record(rec("grid", "h1", 0.80), src)           # ... that the fresh suite reran, to the same result
    write_record(rec("seed1", "h2", 0.79), src)
    write_record(rec("mnli", "h3", None, status="failed"), src)
    (dst / "timing.json").write_text(json.dumps({"runs": [timing("small-grids", "t0", 0, False, 100.0)]}))
    (src / "timing.json").write_text(json.dumps({"runs": [timing("small", "t1", 0, True, 60.0),
                                                          timing("small", "t2", 10, False, 40.0)]}))
    assert main([str(src), str(dst)]) == 0
    assert "2 records copied; 1 runs both hold, metrics differing by at most 0" in capsys.readouterr().out
    records = load_records(dst)
    assert sorted(records["config_hash"]) == ["h1", "h2", "h3"]
    kept = json.loads((dst / "timing.json").read_text())
    assert kept["suites"]["small"] == {"wall_s": 100.0, "segments": 2, "finished": True}
    assert kept["suites"]["small-grids"]["wall_s"] == 100.0

    assert main([str(src), str(dst)]) == 0  # again: nothing new
    assert "0 records copied" in capsys.readouterr().out
    assert len((dst / "runs.jsonl").read_text().splitlines()) == 3
    assert len(json.loads((dst / "timing.json").read_text())["runs"]) == 3


def test_merge_reports_a_shared_run_that_differs(tmp_path, capsys):
    src, dst = tmp_path / "fresh" / "small", tmp_path / "small"
    write_record(rec("a", "h1", 0.80), dst)
    write_record(rec("a", "h1", 0.75), src)
    main([str(src), str(dst)])
    assert "differing by at most 0.05" in capsys.readouterr().out
    assert load_records(dst)["metrics"][0]["accuracy"] == 0.80  # the destination's record stays


def test_merge_refuses_a_folder_without_records(tmp_path):
    with pytest.raises(SystemExit):
        main([str(tmp_path / "nothing"), str(tmp_path / "small")])
