"""What a run record says about how it was made: code, packages, machine, time.

Standard library only, so that `lorafa.results` and the analysis stay light.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("torch", "transformers", "peft", "lorafa")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


@functools.cache
def git_commit() -> str | None:
    """The checkout's short commit (None outside a git checkout). Read once per process: a
    process runs the code it imported when it started, whatever is committed while it runs."""
    out = _git("rev-parse", "--short", "HEAD")
    return out.strip() or None if out is not None else None


@functools.cache
def git_dirty() -> bool | None:
    """Whether tracked files differ from the commit, read once per process as git_commit is.
    results/ is left out: a sweep writes its records there while it runs, which says nothing
    about the code that made them."""
    out = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")
    return None if out is None else bool(out.strip())


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_name(simulated: bool = False) -> str:
    """The GPU's name, or the CPU (its cores, and the threads torch uses) and host; a simulation says so."""
    if simulated:
        return f"simulated (fake tensors) on cpu@{socket.gethostname()}"
    import torch

    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name()}"
    return f"cpu:{os.cpu_count()}cores,{torch.get_num_threads()}threads@{socket.gethostname()}"


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
