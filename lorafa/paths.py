"""Where the project finds its data and writes its results."""

from __future__ import annotations

import os
import sysconfig
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


def _roots() -> list[tuple[Path, str]]:
    """The folders a recorded path may be relative to, the most specific first."""
    roots = {Path(sysconfig.get_paths()[k]).resolve(): "site-packages" for k in ("purelib", "platlib")}
    roots.update({results_dir().resolve(): "results", data_dir(): "data", REPO_ROOT: "checkout"})
    return sorted(roots.items(), key=lambda item: len(str(item[0])), reverse=True)


def portable_path(path: str | os.PathLike) -> dict:
    """A path as a record keeps it: {"path", "relative_to"}, relative to the installed packages
    ("site-packages"), the results root ("results"), the data directory ("data") or the
    checkout ("checkout"), whichever holds it most closely; absolute (relative_to None) if
    none does. So a committed record says nothing about the machine it was made on."""
    p = Path(path).expanduser().resolve()
    for root, name in _roots():
        if p == root or root in p.parents:
            return {"path": p.relative_to(root).as_posix(), "relative_to": name}
    return {"path": str(p), "relative_to": None}


def portable_text(text: str) -> str:
    """`text` (an error message) with those folders written as <site-packages>, <results>,
    <data>, <checkout>."""
    for root, name in _roots():
        text = text.replace(str(root), f"<{name}>")
    return text
