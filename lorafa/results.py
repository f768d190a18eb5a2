"""Run records: the one schema that connects training runs to the analysis.

Each run writes ``<root>/runs/<run_id>/record.json`` (atomically) and appends one JSON
line to ``<root>/runs.jsonl`` (under a file lock), where ``<root>`` is usually
``results/<scale>``. The analysis reads only these records.

    rec = RunRecord(run_id="...", experiment="table2", model="roberta-base",
                    task="glue/mrpc", method="lora_fa", r=8, lr=5e-4, seed=0,
                    metrics={"accuracy": 0.90})
    write_record(rec, results_dir() / "mini")
    df = load_records(results_dir() / "mini")

This module imports only the standard library and pandas (no torch, no Hydra).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import math
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

STATUSES = ("ok", "diverged", "oom", "failed")
MEMORY_SOURCES = ("cuda", "simulated", "cpu-accounting")
BREAKDOWN_KEYS = ("weights", "gradients", "optimizer_states", "activations", "other")
INDEX_NAME = "runs.jsonl"
RECORD_NAME = "record.json"


@dataclass
class RunRecord:
    """One training, evaluation or memory run (docs/DESIGN.md, "Run record").

    scale: "paper" | "mini" | ...; eval_history: [{"step", "epoch", <metric>: value, ...}]
    from periodic evaluation; memory_breakdown: bytes per BREAKDOWN_KEYS; options: free-form
    run settings (attn_implementation, gradient_checkpointing, quantization, zero_shards,
    num_adapted_layers, dropout, ...); error: message when status != "ok".
    Metric values are fractions in [0, 1] (accuracy, mcc, pearson) or 0-100 (bleu, rougeL).

    Provenance, so that a number can be traced to how it was made: config is the resolved
    configuration as plain data (config_hash == config_hash(config)); versions: python, torch,
    transformers, peft, lorafa; weights: where the model's weights came from
    (lorafa.models.weights_identity); git_commit and git_dirty (uncommitted changes to
    tracked files outside results/). Records written before these fields existed read them
    as None.
    """

    run_id: str
    experiment: str = ""
    model: str = ""
    task: str = ""
    method: str = ""
    config_hash: str = ""
    scale: str = ""
    r: int | None = None
    alpha: float | None = None
    lr: float | None = None
    init_a: str | None = None
    seed: int | None = None
    batch_size: int | None = None
    seq_len: int | None = None
    status: str = "ok"
    metrics: dict[str, float | None] = field(default_factory=dict)
    eval_history: list[dict[str, Any]] = field(default_factory=list)
    trainable_params: int | None = None
    peak_memory_bytes: int | None = None
    memory_source: str | None = None
    activation_bytes: int | None = None
    memory_breakdown: dict[str, int] | None = None
    step_time_s: float | None = None
    tokens_per_s: float | None = None
    wall_s: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    git_commit: str | None = None
    git_dirty: bool | None = None
    config: dict[str, Any] | None = None
    versions: dict[str, str | None] | None = None
    weights: dict[str, Any] | None = None
    device: str | None = None
    started_at: str | None = None
    finished_at: str | None = None

    def __post_init__(self):
        if not isinstance(self.run_id, str) or not self.run_id or self.run_id in (".", "..") \
                or "/" in self.run_id or "\\" in self.run_id or "\n" in self.run_id:
            raise ValueError(f"run_id must be a non-empty file name without '/', got {self.run_id!r}")
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}; got {self.status!r}")
        if self.memory_source is not None and self.memory_source not in MEMORY_SOURCES:
            raise ValueError(f"memory_source must be one of {', '.join(MEMORY_SOURCES)} or None; "
                             f"got {self.memory_source!r}")
        if not isinstance(self.metrics, dict):
            raise ValueError(f"metrics must be a dict of name -> number; got {type(self.metrics).__name__}")
        for name, value in self.metrics.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"metrics[{name!r}] must be a number or None; got {value!r}")
        if not isinstance(self.eval_history, list) or not all(isinstance(e, dict) for e in self.eval_history):
            raise ValueError("eval_history must be a list of dicts {step, epoch, <metric>: value}")
        if self.memory_breakdown is not None:
            unknown = set(self.memory_breakdown) - set(BREAKDOWN_KEYS)
            if unknown:
                raise ValueError(f"memory_breakdown keys must be among {', '.join(BREAKDOWN_KEYS)}; "
                                 f"got {sorted(unknown)}")
        if not isinstance(self.options, dict):
            raise ValueError(f"options must be a dict; got {type(self.options).__name__}")

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        """Build a record from a parsed JSON object; keys not in the schema are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


FIELDS = tuple(f.name for f in dataclasses.fields(RunRecord))


def _json_safe(value):
    """Replace non-finite floats (NaN loss of a diverged run) by None: JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def config_hash(config: dict[str, Any], length: int = 12) -> str:
    """Stable short hash of a plain config dict: sha256 of its sorted-key compact JSON.

    Equal dicts give equal hashes whatever their key order. Values must be JSON types
    (str, int, float, bool, None, list, dict); anything else raises TypeError.
    """
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_record(record: RunRecord, root: str | os.PathLike) -> Path:
    """Write root/runs/<run_id>/record.json atomically and append it to root/runs.jsonl.

    The record file is written to a temporary file in the same directory, fsynced and
    renamed over the target, so a reader sees either the old or the new record. The
    index line is appended under an exclusive flock, so parallel runs never interleave.
    Returns the path of record.json.
    """
    root = Path(root)
    data = record.to_dict()
    run_dir = root / "runs" / record.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    target = run_dir / RECORD_NAME
    fd, tmp = tempfile.mkstemp(prefix=".record.", suffix=".tmp", dir=run_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(run_dir)

    line = json.dumps(data, separators=(",", ":"), allow_nan=False) + "\n"
    with open(root / INDEX_NAME, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            # A writer killed mid-line leaves no newline: start on a fresh line so that only
            # the truncated line is lost, not ours too.
            f.seek(0, os.SEEK_END)
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    line = "\n" + line
            f.write(line.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return target


def _read_index(root: Path) -> list[dict[str, Any]]:
    """Parsed runs.jsonl lines in file order; malformed lines are skipped with a warning."""
    path = root / INDEX_NAME
    if not path.exists():
        return []
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as e:
                warnings.warn(f"{path}:{lineno}: skipping malformed or truncated record ({e.msg})",
                              stacklevel=3)
                continue
            if not isinstance(data, dict) or not isinstance(data.get("run_id"), str):
                warnings.warn(f"{path}:{lineno}: skipping record without a run_id", stacklevel=3)
                continue
            rows.append(data)
    return rows


def load_records(root: str | os.PathLike) -> pd.DataFrame:
    """All run records under root as a DataFrame, one row per run_id (the last one written).

    Reads root/runs.jsonl; malformed or truncated lines are skipped with a warning naming
    the file and line. Columns are the schema's fields (dict fields stay dicts), plus any
    extra keys found. A missing index gives an empty frame with the schema's columns.
    """
    latest: dict[str, dict[str, Any]] = {}
    for data in _read_index(Path(root)):
        latest.pop(data["run_id"], None)  # re-insert: order follows the last write
        latest[data["run_id"]] = data
    frame = pd.DataFrame(list(latest.values()))
    for name in FIELDS:
        if name not in frame.columns:
            frame[name] = pd.Series([None] * len(frame), dtype=object)
    extra = [c for c in frame.columns if c not in FIELDS]
    return frame[list(FIELDS) + extra].reset_index(drop=True)


def read_record(path: str | os.PathLike) -> RunRecord:
    """Parse one record.json; raises ValueError if it is corrupt or off-schema."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: corrupt record ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: corrupt record (not a JSON object)")
    try:
        return RunRecord.from_dict(data)
    except TypeError as e:
        raise ValueError(f"{path}: corrupt record ({e})") from e


def find_finished(root: str | os.PathLike, config_hash: str, statuses: tuple[str, ...] = ("ok",)) -> RunRecord | None:
    """The latest finished run with this config hash, or None.

    statuses: what counts as finished ("ok"; a simulated "oom" is a result too). Candidates
    come from runs.jsonl; a candidate counts only if its record.json exists, parses, and
    itself says such a status with the same hash, so a run whose record was corrupted or
    never completed is run again.
    """
    root = Path(root)
    for data in reversed(_read_index(root)):
        if data.get("config_hash") != config_hash or data.get("status") not in statuses:
            continue
        path = root / "runs" / data["run_id"] / RECORD_NAME
        if not path.exists():
            continue
        try:
            record = read_record(path)
        except ValueError as e:
            warnings.warn(f"{e}; not counted as finished", stacklevel=2)
            continue
        if record.status in statuses and record.config_hash == config_hash:
            return record
    return None


def find_same_run(root: str | os.PathLike, config: dict[str, Any],
                  statuses: tuple[str, ...] = ("ok",)) -> RunRecord | None:
    """The latest finished run of `config` under another experiment's name, or None.

    The experiment's name only labels a record (which table it belongs to): two sweeps that
    share a configuration (Table 6's Kaiming-uniform point is Table 7's alpha 32 and one of
    Figure 6's) need it trained once. Candidates are checked as in find_finished.
    """
    root = Path(root)
    label = lambda c: {k: v for k, v in c.items() if k != "experiment"}  # noqa: E731
    same = label(config)
    for data in reversed(_read_index(root)):
        if data.get("status") not in statuses or not isinstance(data.get("config"), dict) \
                or data["config"].get("experiment") == config.get("experiment") or label(data["config"]) != same:
            continue
        found = find_finished(root, data["config_hash"], statuses)
        if found is not None and found.run_id == data["run_id"]:
            return found
    return None


def plain(value):
    """NaN/NA -> None and numpy scalars -> Python values, so records compare and print plainly."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def write_benchmark(rows: list[dict[str, Any]], out: str | os.PathLike, table: str) -> None:
    """A benchmark's rows as a CSV at `out` and its Markdown `table` beside it (.md); prints the table."""
    import csv

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out.with_suffix(".md").write_text(table + "\n")
    print(table)
    print(f"\nwrote {out} and {out.with_suffix('.md')}")
