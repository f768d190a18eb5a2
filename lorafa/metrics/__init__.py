"""The project's metrics as `evaluate` modules that ship inside the package.

    glue         configs cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte (scikit-learn, scipy)
    translation  corpus BLEU (sacrebleu) and ROUGE-L (rouge-score), 0..100

Each lives in <name>/<name>.py and is loaded by its directory path, never by hub name,
so evaluate has nothing to ask the hub: loading works with HF_HUB_OFFLINE=1 and without
network. evaluate copies the script into its modules cache (HF_MODULES_CACHE) and imports
the copy, so nothing is written beside these files.
"""

from __future__ import annotations

import functools
from pathlib import Path

__all__ = ["METRICS", "load_metric", "module_dir"]

METRICS = ("glue", "translation")
_ROOT = Path(__file__).resolve().parent


def module_dir(name: str) -> Path:
    """The directory evaluate.load is given for metric `name`."""
    if name not in METRICS:
        raise ValueError(f"name: unknown metric {name!r}; available: {', '.join(METRICS)}")
    return _ROOT / name


def load_metric(name: str, config_name: str | None = None):
    """The evaluate.Metric `name` (config `config_name`), loaded once per process.

    A load hashes and copies the script and imports it; a Trainer evaluates many times,
    so the instance is reused. It keeps predictions in memory: evaluate's default writes
    an Arrow file and a lock per compute into its cache, where parallel runs sharing the
    default experiment id would contend for it.
    """
    return _load(name, config_name)


@functools.cache
def _load(name: str, config_name: str | None):
    # Imported here: evaluate pulls in aiohttp and more, which code that only loads data
    # or tabulates results does not need.
    import evaluate
    return evaluate.load(str(module_dir(name)), config_name=config_name, keep_in_memory=True)
