"""experiments/demo.py: sweep expansion and core sharing with the background simulation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import demo  # experiments/demo.py: pytest's pythonpath (pyproject.toml) has experiments/

ROOT = Path(__file__).resolve().parent.parent


def test_sweep_jobs_expand_like_hydra_multirun():
    jobs = demo.sweep_jobs(ROOT / "conf", "mini/fig6")
    assert len(jobs) == 2 * 3 * 2 and all(j[0] == "experiment=mini/fig6" for j in jobs)
    assert ["experiment=mini/fig6", "method=lora_fa", "rank=32", "trainer.lr=0.002"] in jobs


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores to share")
def test_training_leaves_a_core_to_the_running_simulation():
    before = torch.get_num_threads()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert demo.share_cores(sleeper) == os.cpu_count() - 1 == torch.get_num_threads()
    finally:
        sleeper.kill()
        sleeper.wait()
    try:
        assert demo.share_cores(sleeper) == os.cpu_count() == torch.get_num_threads()
        assert demo.share_cores(None) == os.cpu_count()
    finally:
        torch.set_num_threads(before)
