"""Local-file-else-hub data access shared by every task family."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import datasets

from lorafa.paths import data_dir as default_data_dir
from lorafa.tasks.registry import HeldOut, TaskSpec


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


def held_out_split(dataset: datasets.Dataset, rule: HeldOut) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train, held-out) by a HeldOut rule: train_eval_split's seeded draw of rule.n rows at
    rule.seed, per value of the column rule.by when it names one; then the training rows that
    repeat a held-out row's rule.key columns are dropped, so no held-out example is trained on.

    Per value of `by`, the held-out rows come interleaved (one of each value in turn, in file
    order), so that any prefix of them, which data.max_eval_samples and data.cot_max_examples
    take, holds every source almost equally.
    """
    if rule.by is None:
        train, held = _draw(dataset, rule, "rows")
    else:
        column = dataset[rule.by]
        parts = [_draw(dataset.select([i for i, v in enumerate(column) if v == value]), rule, f"{rule.by} {value!r}")
                 for value in dict.fromkeys(column)]
        train = datasets.concatenate_datasets([t for t, _ in parts])
        held = datasets.interleave_datasets([h for _, h in parts])  # round-robin over equal sizes: every row
    if rule.key:
        seen = set(zip(*(held[k] for k in rule.key)))
        train = train.filter(lambda *values: values not in seen, input_columns=list(rule.key),
                             desc="drop duplicates of held-out rows")
    return train, held


def _draw(dataset: datasets.Dataset, rule: HeldOut, what: str) -> tuple[datasets.Dataset, datasets.Dataset]:
    if not 0 < rule.n < len(dataset):
        raise ValueError(f"data.eval_from_train={rule.n} is invalid; allowed: 1..{len(dataset) - 1} "
                         f"({what} has {len(dataset)} training rows)")
    return train_eval_split(dataset, rule.n, seed=rule.seed)


def malformed(path: Path, lineno: int, why: str) -> ValueError:
    return ValueError(f"{path}:{lineno}: malformed row: {why}")
