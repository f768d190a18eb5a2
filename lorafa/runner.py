"""The one orchestration of every run that leaves a record: training runs and memory points.

    record, reused = run_once(root, config, run_id, describe, execute)

1. The run's resolved configuration (plain data) is hashed; a finished record with that
   hash under `root` is returned as it is (sweeps resume, reruns cost nothing). A finished
   run of the same configuration under another experiment's name gives this experiment its
   record without training again: its results and provenance, `options.same_run_as` naming it.
2. Otherwise `execute()` runs and returns the record's result fields (status, metrics,
   memory, weights, ...); `describe` holds the fields known beforehand (model, task,
   method, r, lr, ...), so that a run that fails still leaves a record saying what it was.
3. Out of memory is a result (status "oom"); any other exception leaves a "failed" record
   (the tables say why a cell is empty, and a rerun retries it: a failure identical to the
   recorded one, such as data still unavailable offline, is not written again) and propagates.
   Paths in the error are written relative to the checkout, data, results or packages. A
   `RunInterrupted` (SIGTERM after a checkpoint) leaves no record: the run is unfinished.
4. `wall_s` is the run's whole wall time: a run resumed after a preemption adds the time of its
   earlier segments (`options.wall_s_before_resume`, kept beside its checkpoint by the recipe).
5. The record carries its provenance (config, versions, git, device, times) and is written
   atomically (lorafa.results.write_record).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from lorafa.paths import portable_text
from lorafa.provenance import git_commit, git_dirty, package_versions, utc_now
from lorafa.results import RunRecord, config_hash, find_finished, find_same_run, write_record


class RunInterrupted(RuntimeError):
    """A run stopped before it had a result (and will resume): no record is written."""


def is_oom(err: BaseException) -> bool:
    return type(err).__name__ == "OutOfMemoryError" or "out of memory" in str(err).lower()


def failure_message(err: BaseException) -> str:
    """The record's error: its first line is what a table cell shows."""
    message = f"{type(err).__name__}: {err}".splitlines()[0]
    if isinstance(err, FileNotFoundError):  # a task whose files are not local and whose hub is out of reach
        message = f"data unavailable offline\n{message}"
    return portable_text(message)


def run_once(root: str | os.PathLike, config: dict[str, Any], run_id: str, describe: dict[str, Any],
             execute: Callable[[], dict[str, Any]], *, reuse: tuple[str, ...] = ("ok",), force: bool = False,
             write: bool = True) -> tuple[RunRecord, bool]:
    """Run `execute` unless a record of `config` with a status in `reuse` exists; returns
    (record, reused). write=False (ranks other than 0 of a multi-process run) returns the
    record without writing it."""
    root = Path(root)
    config = json.loads(json.dumps(config))  # plain JSON data, as the record will hold it
    digest = config_hash(config)
    if not force and (done := find_finished(root, digest, reuse)) is not None:
        return done, True
    if not force and (twin := find_same_run(root, config, reuse)) is not None:
        shared = dataclasses.replace(twin, run_id=run_id, experiment=config["experiment"], config=config,
                                     config_hash=digest, options={**twin.options, "same_run_as": twin.run_id})
        if write:
            write_record(shared, root)
        return shared, True
    common = dict(describe, run_id=run_id, config_hash=digest, config=config, versions=package_versions(),
                  git_commit=git_commit(), git_dirty=git_dirty(), started_at=utc_now())
    t0 = time.perf_counter()

    def finish(**result) -> RunRecord:
        """The record: what was known beforehand, updated by what the run found."""
        options = {**common.get("options", {}), **result.get("options", {})}
        wall_s = time.perf_counter() - t0 + options.get("wall_s_before_resume", 0.0)  # every segment of a resumed run
        record = RunRecord(**{**common, **result, "options": options}, wall_s=round(wall_s, 3),
                           finished_at=utc_now())
        if write:
            write_record(record, root)
        return record

    try:
        result = execute()
    except RunInterrupted:
        raise
    except Exception as err:
        if is_oom(err):
            _free_cuda_cache()
            return finish(status="oom", error=portable_text(str(err).strip().splitlines()[0][:200])), False
        message = failure_message(err)
        known = None if force else find_finished(root, digest, ("failed",))
        if known is not None and known.error == message:
            # the same failure as recorded (data still unavailable offline): nothing new to write, so
            # a rerun over finished results leaves the results folder as it was
            print(f"[lorafa] {run_id}: failed as recorded ({message.splitlines()[-1][:120]})", flush=True)
            raise
        try:
            finish(status="failed", error=message)
        except OSError as write_err:  # e.g. the disk filled up meanwhile: keep the original error
            print(f"[lorafa] could not write the failed record: {write_err}", flush=True)
        raise
    return finish(**result), False


def _free_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
