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


def test_the_small_llm_suites_are_table4_on_smollm2_base_model_first_then_its_seeds():
    def jobs(suite):
        return [job for exp in demo.SUITES[suite] for job in demo.sweep_jobs(ROOT / "conf", f"small/{exp}")]
    table = jobs("small-llm")
    assert len(table) == 2 + 2 * 4  # base on both tasks, 4 methods x 2 tasks
    assert table[0] == ["experiment=small/table4_base", "task=alpaca", "method=base"]
    seeds = jobs("small-llm-seeds")
    assert len(seeds) == 2 * 2 and ["experiment=small/table4_seeds", "task=flan_cot", "method=lora_fa", "seed=2"] in seeds


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


def test_an_interrupted_suite_keeps_the_timing_of_its_part(tmp_path, monkeypatch):
    """SIGTERM (or Ctrl-C) part-way: the runs done so far are counted and their wall time kept,
    so that a fresh suite finished over several invocations still has its measured total."""
    import json
    import signal

    monkeypatch.setenv("LORAFA_RESULTS_DIR", str(tmp_path))

    def two_runs_then_sigterm(root, background, scale, counts, suite=None, workers=1):
        counts.update(jobs=5, trained=2)
        os.kill(os.getpid(), signal.SIGTERM)  # demo.main turns it into SystemExit(143)
        return counts

    monkeypatch.setattr(demo, "run_training_sweeps", two_runs_then_sigterm)
    monkeypatch.setattr(demo, "build_outputs", lambda scale: pytest.fail("no tables after an interruption"))
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as stop:
            demo.main(["--scale", "small"])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert stop.value.code == 143
    runs = json.loads((tmp_path / "small" / "timing.json").read_text())["runs"]
    assert len(runs) == 1 and runs[0]["interrupted"] is True and runs[0]["trained"] == 2 and runs[0]["jobs"] == 5
    assert runs[0]["machine"]["cpus"] == os.cpu_count()


def test_a_new_timing_keeps_the_files_history_and_notes(tmp_path):
    import json

    path = tmp_path / "timing.json"
    path.write_text(json.dumps({"runs": [{"wall_s": 1.0}], "suite_wall_s": {"value": 9.0, "how": "by hand"}}))
    demo.summary(tmp_path, 2.0, {"jobs": 1, "trained": 1, "skipped": 0, "failed": 0}, scale="small")
    kept = json.loads(path.read_text())
    assert [r["wall_s"] for r in kept["runs"]] == [1.0, 2.0] and kept["suite_wall_s"]["value"] == 9.0
    # the process's peak memory is kept with its time (pytest's own process: some MiB, not 0)
    assert 10 < kept["runs"][-1]["peak_rss_mib"] < 24 * 1024 and kept["runs"][-1]["peak_rss_child_mib"] >= 0


def test_a_suites_wall_time_sums_its_segments_from_the_fresh_start_to_the_finish(tmp_path):
    import json

    def seg(wall, trained, skipped, interrupted=False, suite="small-llm"):
        return {"wall_s": wall, "suite": suite, "trained": trained, "skipped": skipped,
                **({"interrupted": True} if interrupted else {})}
    runs = [seg(50.0, 3, 0), seg(7.0, 1, 0, suite="small"),  # an older fresh start; another suite
            seg(10.0, 2, 0, True), seg(20.0, 3, 2, True), seg(5.0, 1, 5), seg(0.5, 0, 6)]  # a rerun after
    assert demo.suite_wall(runs, "small-llm") == {"wall_s": 35.0, "segments": 3, "finished": True}
    assert demo.suite_wall(runs[:4], "small-llm") == {"wall_s": 30.0, "segments": 2, "finished": False}
    assert demo.suite_wall(runs, "small-grids") == {}
    (tmp_path / "timing.json").write_text(json.dumps({"runs": runs[:4]}))
    demo.summary(tmp_path, 5.0, {"jobs": 6, "trained": 1, "skipped": 5, "failed": 0}, scale="small", suite="small-llm")
    kept = json.loads((tmp_path / "timing.json").read_text())
    assert kept["suites"]["small-llm"] == {"wall_s": 35.0, "segments": 3, "finished": True}


def test_the_closing_summary_says_which_table5_line_is_with_recomputation():
    from demo import _headlines

    lines = [line for line in _headlines(ROOT / "results" / "mini") if "Table 5" in line]
    assert len(lines) == 2 and "without recomputation" in lines[0] and "with selective recomputation" in lines[1]
    assert "paper: OOM / 76.74 / 61.49 GB" in lines[1] and "paper" not in lines[0]


def test_the_small_grids_cover_what_a_fair_comparison_needs():
    """Table 2: LoRA, LoRA-FA and LoRA-FA corrected at three rates from 3e-4 to 3e-3 on each task,
    Full-FT at two; Tables 6 and 7 at four rates from 1e-4 to 1e-2 per row; Figure 6 3 ranks x 3
    rates, one below 1e-3."""
    def grid(name):
        rates = {}
        for job in demo.sweep_jobs(ROOT / "conf", f"small/grids/{name}"):
            kv = dict(item.split("=", 1) for item in job[1:])
            key = tuple(v for k, v in sorted(kv.items()) if k != "trainer.lr")
            rates.setdefault(key, set()).add(float(kv["trainer.lr"]))
        return rates

    table2 = grid("table2")
    assert len(table2) == 3 * 6 and all(min(r) <= 3e-4 and max(r) >= 3e-3 and len(r) >= 3 for r in table2.values())
    assert {k[0] for k in table2} == {"lora", "lora_fa", "lora_fa_corrected"}
    assert len(grid("table2_full_ft")) == 6 and all(len(r) >= 2 for r in grid("table2_full_ft").values())
    for name, rows in (("table6", 3), ("table7", 4)):
        assert len(grid(name)) == rows and all(len(r) >= 4 and min(r) <= 1e-4 and max(r) >= 1e-2
                                               for r in grid(name).values())
    fig6 = grid("fig6")
    assert len(fig6) == 2 * 3 and all(len(r) >= 3 and min(r) < 1e-3 for r in fig6.values())
