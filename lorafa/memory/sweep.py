"""One memory point as a validated plain object, measured once and kept as a run record.

    point = MemoryPoint.from_dict({"model": "llama-7b", "method": "lora_fa", "batch_size": 16,
                                   "seq_len": 1024, "r": 64}, experiment="table5")
    record, reused = run_point(point, results_dir() / "paper")

experiments/memory.py turns its Hydra config into a MemoryPoint (this module never sees
Hydra). A point's record is found again by its config hash, so a rerun reuses it; a
simulated "oom" is a result too and is reused like an "ok" one.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from lorafa.results import (RECORD_NAME, RunRecord, config_hash, find_finished, git_commit, load_records, read_record,
                            utc_now, write_record)

BACKENDS = ("simulate", "cuda")
METHODS = ("full_ft", "lora", "lora_fa", "peft_lora", "peft_lora_frozen_a")
ATTN_IMPLEMENTATIONS = ("eager", "sdpa")
QUANTIZATIONS = (None, "nf4")
CAPACITY_UNIT = 10**9  # capacity_gb is in the paper's GB (an A100 80GB holds 80·10^9 bytes)


def _positive_int(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} is invalid; allowed: an integer >= 1" + (" or null" if allow_none else ""))


@dataclass(frozen=True)
class MemoryPoint:
    """Everything one measure_peak_memory call and its record need, checked on creation."""

    model: str
    method: str
    batch_size: int
    seq_len: int
    backend: str = "simulate"
    r: int = 8
    alpha: float | None = None  # None: 4·r
    dropout: float = 0.0
    adapter_dtype: str = "bfloat16"
    target_modules: str | tuple = "all-linear"
    num_adapted_layers: int | None = None
    attn_implementation: str = "eager"
    gradient_checkpointing: bool = False
    quantization: str | None = None
    zero_shards: int = 1
    target_len: int | None = None
    capacity_gb: float | None = 80
    experiment: str = "memory"
    scale: str = "paper"

    @classmethod
    def from_dict(cls, values: dict, **override) -> MemoryPoint:
        values = {**values, **override}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown keys {unknown}; allowed: {', '.join(sorted(names))}")
        if isinstance(values.get("target_modules"), list):
            values["target_modules"] = tuple(values["target_modules"])
        return cls(**values)

    def __post_init__(self):
        from lorafa.memory.specs import load_model_spec

        load_model_spec(self.model)  # ValueError naming the available models
        for name, value, allowed in (("backend", self.backend, BACKENDS), ("method", self.method, METHODS),
                                     ("attn_implementation", self.attn_implementation, ATTN_IMPLEMENTATIONS),
                                     ("quantization", self.quantization, QUANTIZATIONS)):
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is invalid; allowed: {', '.join(map(str, allowed))}")
        for name in ("batch_size", "seq_len", "r", "zero_shards"):
            _positive_int(name, getattr(self, name))
        for name in ("num_adapted_layers", "target_len"):
            _positive_int(name, getattr(self, name), allow_none=True)
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout={self.dropout!r} is invalid; allowed: a number in [0, 1)")
        if self.capacity_gb is not None and (isinstance(self.capacity_gb, bool)
                                             or not isinstance(self.capacity_gb, (int, float)) or self.capacity_gb <= 0):
            raise ValueError(f"capacity_gb={self.capacity_gb!r} is invalid; allowed: a number > 0 or null")
        if self.method == "full_ft" and (self.quantization or self.zero_shards > 1):
            raise ValueError("quantization and zero_shards > 1 are modelled for adapter methods only, not full_ft")
        if self.backend == "cuda" and (self.quantization or self.zero_shards > 1):
            raise ValueError("backend='cuda' measures one unquantised GPU; quantization and zero_shards > 1 "
                             "are simulated only (backend=simulate)")
        if not self.experiment or any(c in self.experiment for c in "\\\n"):
            raise ValueError(f"experiment_name={self.experiment!r} is invalid; allowed: a non-empty name")

    @property
    def lora_alpha(self) -> float:
        return float(4 * self.r if self.alpha is None else self.alpha)

    def measure_kwargs(self) -> dict:
        """The keyword arguments of lorafa.memory.measure_peak_memory."""
        return dict(model=self.model, method=self.method, batch_size=self.batch_size, seq_len=self.seq_len,
                    backend=self.backend, r=self.r, alpha=self.lora_alpha, dropout=float(self.dropout),
                    adapter_dtype=self.adapter_dtype,
                    target_modules=(self.target_modules if isinstance(self.target_modules, str)
                                    else list(self.target_modules)),
                    num_adapted_layers=self.num_adapted_layers, attn_implementation=self.attn_implementation,
                    gradient_checkpointing=bool(self.gradient_checkpointing), quantization=self.quantization,
                    zero_shards=self.zero_shards, target_len=self.target_len,
                    capacity_bytes=None if self.capacity_gb is None else int(self.capacity_gb * CAPACITY_UNIT))

    @property
    def digest(self) -> str:
        return config_hash({"experiment": self.experiment, **self.measure_kwargs()})

    @property
    def run_id(self) -> str:
        parts = (self.experiment.replace("/", "_"), self.model, self.method, f"b{self.batch_size}",
                 f"s{self.seq_len}", f"r{self.r}", self.digest)
        return "-".join(str(p) for p in parts)


def find_done(root: str | os.PathLike, digest: str) -> RunRecord | None:
    """The latest record with this config hash and status ok or oom (both are results)."""
    root = Path(root)
    found = find_finished(root, digest)
    if found is not None:
        return found
    if not (root / "runs.jsonl").exists():
        return None
    df = load_records(root)
    for row in reversed(df[(df["config_hash"] == digest) & (df["status"] == "oom")].to_dict("records")):
        path = root / "runs" / row["run_id"] / RECORD_NAME
        if path.exists():
            try:
                rec = read_record(path)
            except ValueError:
                continue
            if rec.status == "oom" and rec.config_hash == digest:
                return rec
    return None






def run_point(point: MemoryPoint, root: str | os.PathLike, force: bool = False) -> tuple[RunRecord, bool]:
    """Measure `point` and write its record under `root`, or reuse a finished one.

    Returns (record, reused). A CUDA out-of-memory error becomes a record with status "oom".
    """
    root = Path(root)
    digest = point.digest
    if not force:
        done = find_done(root, digest)
        if done is not None:
            return done, True
    from lorafa.memory.measure import measure_peak_memory

    started, t0 = utc_now(), time.perf_counter()
    common = dict(run_id=point.run_id, experiment=point.experiment, scale=point.scale, config_hash=digest,
                  git_commit=git_commit(), started_at=started)
    if point.backend == "simulate":
        device = f"simulated (fake tensors) on cpu@{socket.gethostname()}"
    else:
        import torch

        device = f"cuda:{torch.cuda.get_device_name()}" if torch.cuda.is_available() else "cuda (unavailable)"
    try:
        res = measure_peak_memory(**point.measure_kwargs())
    except Exception as err:  # a real GPU running out is a result (status oom), anything else is not
        if type(err).__name__ != "OutOfMemoryError":
            raise
        import torch

        torch.cuda.empty_cache()
        record = RunRecord(**common, model=point.model, method=point.method, task=None,
                           r=None if point.method == "full_ft" else point.r,
                           alpha=None if point.method == "full_ft" else point.lora_alpha,
                           batch_size=point.batch_size, seq_len=point.seq_len, status="oom", memory_source="cuda",
                           error=str(err).strip().splitlines()[0][:200], device=device,
                           options={"attn_implementation": point.attn_implementation, "backend": point.backend,
                                    "dropout": point.dropout, "num_adapted_layers": point.num_adapted_layers,
                                    "gradient_checkpointing": point.gradient_checkpointing},
                           wall_s=time.perf_counter() - t0, finished_at=utc_now())
    else:
        record = res.to_record(**common, device=device, wall_s=time.perf_counter() - t0, finished_at=utc_now())
    write_record(record, root)
    return record, False
