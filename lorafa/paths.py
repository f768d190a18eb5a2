"""Where the project finds its data and writes its results."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """The local data directory: $LORAFA_DATA_DIR, else ../shared/data beside the checkout.

    The directory may not exist (paper scale fetches from the hub); callers that need a
    file report the path they tried.
    """
    env = os.environ.get("LORAFA_DATA_DIR")
    if env:
        return Path(env).expanduser().resolve()
    return (REPO_ROOT.parent / "shared" / "data").resolve()


def results_dir() -> Path:
    """Root of run records and generated tables: $LORAFA_RESULTS_DIR, else results/."""
    env = os.environ.get("LORAFA_RESULTS_DIR")
    return Path(env).expanduser().resolve() if env else REPO_ROOT / "results"


def cache_dir() -> Path:
    """Derived files worth keeping between runs but never committed (the dequantized copy of a
    GGUF model): $LORAFA_CACHE_DIR, else $XDG_CACHE_HOME/lorafa, else ~/.cache/lorafa."""
    env = os.environ.get("LORAFA_CACHE_DIR")
    if env:
        return Path(env).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "lorafa"
