"""Records that travel: no machine path in a record or a committed result, and a failure
that repeats itself (data unavailable offline) recorded once."""

from __future__ import annotations

import json
import os
import sysconfig
from pathlib import Path

import pytest
import torch

from lorafa.paths import REPO_ROOT, data_dir, portable_path, portable_text, results_dir


def test_portable_path_names_the_folder_it_is_relative_to(tmp_path):
    assert portable_path(REPO_ROOT / "models" / "tiny-roberta") == {"path": "models/tiny-roberta", "relative_to": "checkout"}
    assert portable_path(data_dir() / "glue" / "x.tsv") == {"path": "glue/x.tsv", "relative_to": "data"}
    assert portable_path(results_dir() / "mini" / "runs") == {"path": "mini/runs", "relative_to": "results"}
    packaged = portable_path(torch.__file__)
    assert packaged == {"path": "torch/__init__.py", "relative_to": "site-packages"}
    assert Path(sysconfig.get_paths()["purelib"], packaged["path"]).resolve() == Path(torch.__file__).resolve()
    assert portable_path(tmp_path) == {"path": str(tmp_path.resolve()), "relative_to": None}
    text = f"tried local file {data_dir() / 'glue/QQP/train.tsv'}, then {REPO_ROOT / 'models'}"
    assert portable_text(text) == "tried local file <data>/glue/QQP/train.tsv, then <checkout>/models"


def test_weights_of_a_local_model_are_recorded_relative_to_the_checkout():
    from lorafa.models import ModelSpec, weights_identity

    spec = ModelSpec("tiny-roberta", "encoder", {"model_type": "roberta"}, path="models/tiny-roberta")
    assert weights_identity(spec) == {"source": "local", "path": "models/tiny-roberta", "relative_to": "checkout"}


def test_a_repeated_identical_failure_is_recorded_once(tmp_path):
    """A point whose data is unavailable fails the same way on every rerun of a sweep: recorded
    the first time (with the data path relative to the data directory), not rewritten after,
    recorded again with force or when the failure changes."""
    from lorafa.runner import run_once

    config = {"experiment": "table2", "task": "glue/qqp"}
    describe = dict(experiment="table2", task="glue/qqp", method="lora_fa")

    def missing(name):
        def execute():
            raise FileNotFoundError(f"glue/qqp split 'train': tried local file {data_dir() / name}")
        return execute

    def attempt(name="glue/QQP/train.tsv", force=False):
        with pytest.raises(FileNotFoundError):
            run_once(tmp_path, config, "table2-qqp", describe, missing(name), force=force)
        lines = (tmp_path / "runs.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]

    first = attempt()
    assert len(first) == 1 and first[0]["status"] == "failed"
    assert "<data>/glue/QQP/train.tsv" in first[0]["error"] and str(data_dir()) not in first[0]["error"]
    before = (tmp_path / "runs" / "table2-qqp" / "record.json").read_bytes()
    assert len(attempt()) == 1  # the same failure: nothing written
    assert (tmp_path / "runs" / "table2-qqp" / "record.json").read_bytes() == before
    assert len(attempt(force=True)) == 2
    assert len(attempt("glue/QQP/other.tsv")) == 3  # a different failure is news


def test_no_committed_result_names_this_machines_folders():
    """Every file under results/ (records, logs, tables) is free of the checkout's, the data
    directory's and the home folder's absolute paths."""
    prefixes = {str(REPO_ROOT), str(data_dir()), str(Path.home()) + os.sep}
    offenders = []
    for path in (REPO_ROOT / "results").rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl", ".csv", ".md", ".log", ".txt"):
            text = path.read_text(errors="replace")
            offenders += [f"{path.relative_to(REPO_ROOT)}: {p}" for p in prefixes if p in text]
    assert not offenders, offenders[:5]
