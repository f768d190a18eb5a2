"""experiments/memory.py: experiment points, records written once, reused on a second run."""

import importlib.util
from pathlib import Path

from lorafa.results import load_records

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("memory_cli", ROOT / "experiments" / "memory.py")
cli = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cli)


def test_every_experiment_has_points():
    for exp in cli.EXPERIMENTS:
        pts = cli.points(exp, "eager")
        assert pts and all({"model", "method", "batch_size", "seq_len"} <= set(p) for p in pts)
    assert len(cli.points("table5", "eager")) == 18


def test_points_become_records(tmp_path, monkeypatch):
    tiny = [dict(model="tiny-llama", method=m, batch_size=2, seq_len=32, r=4) for m in ("lora", "lora_fa")]
    monkeypatch.setattr(cli, "points", lambda exp, attn: tiny)
    assert cli.main(["fig3", "--out", str(tmp_path)]) == 0
    df = load_records(tmp_path)
    assert len(df) == 2 and set(df["memory_source"]) == {"simulated"} and set(df["status"]) == {"ok"}
    assert all(set(b) == {"weights", "gradients", "optimizer_states", "activations", "other"}
               for b in df["memory_breakdown"])
    first = sorted(df["run_id"])
    assert cli.main(["fig3", "--out", str(tmp_path)]) == 0  # finished points are reused, not rerun
    assert sorted(load_records(tmp_path)["run_id"]) == first
