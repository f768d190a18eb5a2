"""experiments/memory.py (Hydra, conf/memory/): every sweep composes into valid points, records
are written once per point and reused on a rerun, and analysis/ finds them."""

import importlib.util
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from lorafa.memory.point import MemoryPoint
from lorafa.results import config_hash, load_records

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf" / "memory"
from config_groups import group_names  # noqa: E402

spec = importlib.util.spec_from_file_location("memory_cli", ROOT / "experiments" / "memory.py")
cli = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cli)

# experiment -> number of points; the names are the ones analysis/ reads (see analysis/__init__.py)
SWEEPS = {"table5": 36, "fig2a": 24, "fig2b": 16, "fig2c": 16, "fig3": 4, "fig5": 36, "llama_dropout": 8}


@pytest.fixture(scope="module", autouse=True)
def _hydra():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield


def _compose(overrides, hydra=False):
    return compose("config", overrides=overrides, return_hydra_config=hydra)


def _grid(name):
    params = _compose([f"experiment={name}"], hydra=True).hydra.sweeper.params
    keys = list(params)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(str(params[k]).split(",") for k in keys))]


def _point(overrides):
    return cli.to_point(_compose(overrides))


_POINTS: dict = {}


def _points(name):
    """Every point of a sweep (composed once per test module)."""
    if name not in _POINTS:
        _POINTS[name] = [_point([f"experiment={name}"] + [f"{k}={v}" for k, v in g.items()])[0] for g in _grid(name)]
    return _POINTS[name]


def test_experiment_group_is_exactly_the_sweeps():
    assert set(group_names(cli.CONF, "experiment")) == set(SWEEPS)
    assert set(group_names(cli.CONF, "optimisation")) == {"none", "flash_attention", "qlora", "zero3", "selective_recompute"}


@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_every_sweep_point_composes_and_validates(name):
    points = _points(name)
    assert len(points) == SWEEPS[name] == len({config_hash(p.config()) for p in points})
    assert {p.experiment for p in points} == {name} and {p.backend for p in points} == {"simulate"}


def test_sweeps_follow_the_paper_and_the_issue():
    t5 = {(p.model.name, p.method): p for p in _points("table5")}
    cells = {m: (p.batch_size, p.seq_len, p.r, p.attn_implementation) for (m, meth), p in t5.items() if meth == "lora"}
    assert cells == {"roberta-base": (64, 128, 8, "eager"), "roberta-large": (32, 128, 8, "eager"),
                     "t5-small": (128, 128, 8, "eager"), "t5-base": (64, 128, 8, "eager"),
                     "t5-large": (32, 128, 16, "eager"), "llama-7b": (16, 1024, 64, "sdpa")}
    fig2a = _points("fig2a")
    assert {(p.attn_implementation, p.quantization, p.zero_shards) for p in fig2a} == {
        ("eager", None, 1), ("sdpa", None, 1), ("eager", "nf4", 1), ("eager", None, 8)}
    assert {p.method for p in fig2a} == {"lora_fa"} and {p.batch_size for p in fig2a} == {1, 2, 4, 8, 16, 32}
    fig2b = _point(["experiment=fig2b", "num_adapted_layers=224", "method=lora"])[0]
    assert (fig2b.model.name, fig2b.batch_size, fig2b.capacity_gb) == ("llama2-7b", 8, 40)
    fig3 = _point(["experiment=fig3", "method=lora"])[0]
    assert (fig3.model.name, fig3.batch_size, fig3.seq_len, fig3.r) == ("llama2-7b", 16, 1024, 64)
    drop = {(p.method, p.dropout, p.model.name, p.attn_implementation) for p in _points("llama_dropout")}
    assert {m for m, *_ in drop} == {"lora", "lora_fa", "peft_lora", "peft_lora_frozen_a"}
    assert {(d, m, a) for _, d, m, a in drop} == {(0.0, "llama-7b", "sdpa"), (0.1, "llama-7b", "sdpa")}


def test_results_dir_default_and_override(monkeypatch, tmp_path):
    monkeypatch.setenv("LORAFA_RESULTS_DIR", str(tmp_path))
    assert _point([])[1] == tmp_path / "paper"
    assert _point([f"results_dir={tmp_path / 'x'}", "force=true"])[1:] == (tmp_path / "x", True)


@pytest.mark.parametrize("overrides, match", [
    (["method=lora-fa"], "allowed: full_ft"), (["backend=tpu"], "allowed: simulate"),
    (["batch_size=0"], "batch_size"), (["method=full_ft", "optimisation=qlora"], "full_ft"),
    (["backend=cuda", "optimisation=zero3"], "simulated only"), (["dropout=1.5"], "dropout")])
def test_bad_config_names_the_field(overrides, match):
    with pytest.raises(ValueError, match=match):
        _point(overrides)


def test_unknown_group_choice_lists_the_available_ones():
    with pytest.raises(ValueError, match="available: fig2a, fig2b"):
        cli.check_group_choices(cli.CONF, cli.GROUPS, ["-m", "experiment=table5,fig9"])
    with pytest.raises(ValueError, match="flash_attention"):
        cli.check_group_choices(cli.CONF, cli.GROUPS, ["optimisation=flash"])
    with pytest.raises(ValueError, match="llama-7b"):  # the model is a config group (conf/memory/model -> conf/model)
        cli.check_group_choices(cli.CONF, cli.GROUPS, ["experiment=table5", "model=llama-8b"])
    cli.check_group_choices(cli.CONF, cli.GROUPS, ["experiment=table5", "model=tiny-llama"])


def test_several_experiments_run_as_one_multirun_each():
    assert cli.split_experiments(["-m", "experiment=table5,fig3", "backend=simulate"]) == [
        ["-m", "experiment=table5", "backend=simulate"], ["-m", "experiment=fig3", "backend=simulate"]]
    assert cli.split_experiments(["experiment=table5"]) == [["experiment=table5"]]


def _run(tmp_path, *args):
    env = {**os.environ, "LORAFA_RESULTS_DIR": str(tmp_path / "results")}
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "memory.py"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_multirun_writes_one_record_per_point_and_reuses_them(tmp_path):
    args = ["-m", "experiment=fig3,fig2c", "backend=simulate", "model=tiny-llama", "batch_size=2", "seq_len=16",
            "r=4", "method=lora,lora_fa", "selective_recompute=false"]  # the command line narrows the grids (fig2c: r)
    out = _run(tmp_path, *args)
    root = tmp_path / "results" / "paper"
    df = load_records(root)
    assert len(df) == 4 and sorted(df["experiment"]) == ["fig2c", "fig2c", "fig3", "fig3"]
    for field in ("model", "method", "batch_size", "seq_len", "r", "peak_memory_bytes", "memory_source"):
        assert df[field].notna().all(), field
    assert set(df["memory_source"]) == {"simulated"} and set(df["status"]) == {"ok"}
    for rec in df.to_dict("records"):  # provenance: the config it was hashed from, versions, the architecture
        assert rec["config_hash"] == config_hash(rec["config"]) and rec["config"]["model"] == "tiny-llama"
        assert rec["versions"]["torch"] and rec["weights"]["source"] == "architecture only"
        assert rec["weights"]["arch"]["model_type"] == "llama" and isinstance(rec["git_dirty"], bool)
    assert all(set(b) == {"weights", "gradients", "optimizer_states", "activations", "other"}
               for b in df["memory_breakdown"])
    assert "## fig3 (2 points" in out and "| fig2c | tiny-llama | lora_fa |" in out  # the closing table
    lines = (root / "runs.jsonl").read_text().splitlines()

    again = _run(tmp_path, *args)  # finished points are reused, not rerun
    assert again.count("(reused)") == 4
    assert (root / "runs.jsonl").read_text().splitlines() == lines

    from analysis import figures
    assert len(figures.fig3_data(df)) == 2  # analysis/ selects them by experiment name: one bar per method
    assert cli.tables_main(["--table", "fig3", "--results-dir", str(root)]) == 0

    paths = cli.write_report(root, tmp_path / "report")
    table5 = paths[0].read_text()
    assert table5.startswith("Produced by") and "python experiments/memory.py -m experiment=table5" in table5
    assert "not run" in table5  # no table5 records here
    assert json.loads(json.dumps(MemoryPoint.from_dict({"model": "tiny-llama", "method": "lora", "batch_size": 1,
                                                        "seq_len": 4}).config()))
