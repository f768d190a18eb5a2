"""Local-file-else-hub data access shared by every task family."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import datasets

from lorafa.paths import data_dir as default_data_dir
from lorafa.tasks.registry import TaskSpec


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    return Path(data_dir).expanduser().resolve() if data_dir is not None else default_data_dir()


def local_path(spec: TaskSpec, split: str, data_dir: str | Path | None) -> Path | None:
    rel = spec.local_files.get(split)
    return resolve_data_dir(data_dir) / rel if rel is not None else None


def load_local_or_hub(
    spec: TaskSpec,
    split: str,
    data_dir: str | Path | None,
    read_local: Callable[[Path], datasets.Dataset] | None,
    from_hub: Callable[[datasets.Dataset], datasets.Dataset] = lambda ds: ds,
    exists: Callable[[Path], bool] = Path.is_file,
    hub_config: str | None = None,
    path: Path | None = None,
) -> datasets.Dataset:
    """read_local(path) when the release file is there, else from_hub(the hub's split),
    both in the family's uniform columns. `path` overrides the spec's local file (MMLU
    keeps one file per subject).

    The error names both places tried, so an offline user sees which file to supply.
    Offline, HF_HUB_OFFLINE=1 makes the hub attempt fail at once instead of retrying.
    """
    path = path if path is not None else local_path(spec, split, data_dir)
    if path is not None and read_local is not None and exists(path):
        return read_local(path)
    config = hub_config if hub_config is not None else spec.hub_config
    try:
        ds = datasets.load_dataset(spec.hub_id, config, split=spec.hub_split(split))
    except Exception as exc:  # offline, unknown id, auth: all mean "no data"
        tried = f"local file {path}" if path is not None else "no local copy (hub only)"
        raise FileNotFoundError(
            f"{spec.name} split {split!r}: tried {tried}, then hub dataset "
            f"{spec.hub_id!r} (config {config!r}, split {spec.hub_split(split)!r}), which failed: "
            f"{type(exc).__name__}: {exc}. Put the file there, set LORAFA_DATA_DIR / data.dir, "
            f"or make the hub reachable."
        ) from exc
    return from_hub(ds)


def train_eval_split(
    dataset: datasets.Dataset, eval_size: int | float, seed: int = 0
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """A seeded (train, eval) pair carved out of one split, for tasks whose local copy
    has a single labelled split (QNLI dev) or none for evaluation (Alpaca)."""
    if isinstance(eval_size, float) and not 0.0 < eval_size < 1.0:
        raise ValueError(f"eval_size: a fraction must lie in (0, 1), got {eval_size}")
    if isinstance(eval_size, int) and not 0 < eval_size < len(dataset):
        raise ValueError(f"eval_size: must lie in [1, {len(dataset) - 1}], got {eval_size}")
    parts = dataset.train_test_split(test_size=eval_size, seed=seed, shuffle=True)
    return parts["train"], parts["test"]


def malformed(path: Path, lineno: int, why: str) -> ValueError:
    return ValueError(f"{path}:{lineno}: malformed row: {why}")
