"""Figures: the data steps' values on synthetic records (worked out by hand from analysis/synthetic.py),
valid non-trivial PNGs from the drawing steps, and the CLI's report of what is missing."""

import math
import struct

import pandas as pd
import pytest

from analysis import figures, synthetic
from analysis.figure_data import (NoRecords, fig2a_data, fig2b_data, fig2c_data, fig3_data, fig4_data, fig5_data,
                                  fig6_data, optimisation)
from analysis.figures import FIGURES
from lorafa.results import RunRecord, load_records, write_record

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def records():
    return pd.DataFrame([r.to_dict() for r in synthetic.records()])


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR" and data.rstrip().endswith(b"IEND\xaeB`\x82")
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_each_figure_writes_a_png(name, records, tmp_path):
    path = figures.write(name, records, tmp_path)
    assert path == tmp_path / f"{name}.png"
    width, height = png_size(path)
    assert width > 400 and height > 250
    assert path.stat().st_size > 15_000  # axes, text and data, not a blank canvas


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_no_records_is_reported_not_drawn(name, tmp_path):
    empty = load_records(tmp_path)
    with pytest.raises(NoRecords, match="no "):
        figures.write(name, empty, tmp_path)
    assert not (tmp_path / f"{name}.png").exists()


def test_mini_scale_models_draw_without_paper_bands(tmp_path):
    gb = 2**30
    recs = [RunRecord(run_id=f"m{i}", experiment="fig5", model="tiny-llama", task="memory", method=m, r=8,
                      batch_size=b, seq_len=64, peak_memory_bytes=int((0.1 + 0.01 * b * (2 if m == "lora" else 1)) * gb),
                      memory_source="cpu-accounting", step_time_s=0.1 * b)  # tokens/s derived from step time
            for i, (m, b) in enumerate((m, b) for m in ("lora", "lora_fa") for b in (1, 2, 4))]
    recs.append(RunRecord(run_id="f3", experiment="fig3", model="tiny-llama", task="memory", method="lora_fa",
                          memory_breakdown={"weights": gb // 10, "activations": gb // 20}))
    df = pd.DataFrame([r.to_dict() for r in recs])
    for name in ("fig5", "fig3"):
        assert png_size(figures.write(name, df, tmp_path))[0] > 400


def test_optimisation_labels():
    assert optimisation({}) == "none"
    assert optimisation({"attn_implementation": "eager", "zero_shards": 1}) == "none"
    assert optimisation({"attn_implementation": "flash_attention_2"}) == "FlashAttention"
    assert optimisation({"quantization": "nf4", "zero_shards": 8}) == "QLoRA (nf4) + ZeRO-3 x8"
    assert optimisation({"gradient_checkpointing": True, "attn_implementation": "sdpa"}) == "attn=sdpa + recompute"


def test_cli_builds_what_exists_and_reports_the_rest(tmp_path, capsys):
    root = tmp_path / "results"
    for rec in synthetic.records():
        if rec.experiment in ("fig3", "fig6"):
            write_record(rec, root / "mini")
    assert figures.main(["--scale", "mini", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    made = sorted(p.name for p in (root / "mini" / "figures").iterdir())
    assert made == ["fig3.png", "fig6.png"]
    assert "fig2a: missing (no records with experiment='fig2a')" in out
    assert figures.main(["--scale", "mini", "--root", str(root), "--only", "fig4"]) == 0
    assert "fig4: missing" in capsys.readouterr().out


# ---- the data steps ------------------------------------------------------------------------------

def test_fig2a_points_keep_oom_crosses_apart(records):
    points = fig2a_data(records)
    assert set(points.opt) == {"none", "FlashAttention", "QLoRA (nf4)", "ZeRO-3 x8"}
    lora = points[(points.method == "lora") & (points.opt == "none")].set_index("x")
    # synthetic: 13.5 GB weights + 0.32 states + 3.4 GB activations per sample + LoRA's X (a quarter more)
    assert lora.loc[[1, 2, 4, 8], "gb"].tolist() == pytest.approx([18.07, 22.32, 30.82, 47.82], abs=1e-6)
    # batch 16 (81.82 GB) and 32 run out of an 80 GB GPU: no value, a cross at the top
    assert lora.loc[[16, 32], "gb"].isna().all() and lora.loc[[16, 32], "oom"].all()
    assert not lora.loc[[1, 2, 4, 8], "oom"].any()
    assert points.attrs["subtitle"] == "llama2-7b; memory: simulated" and points.attrs["paper_scale"]


def test_fig2b_and_fig2c_values(records):
    layers = fig2b_data(records)
    lora_fa = layers[layers.method == "lora_fa"].set_index("x")["gb"]
    assert lora_fa.loc[224] == pytest.approx(13.5 + 0.16 + 3.0 * 8, abs=1e-6)
    # LoRA minus LoRA-FA at batch 4: X (0.25 * 3.4 * 4) plus LoRA's doubled states, 0.16 r / 64,
    # averaged over r = 1..128 (mean r = 255 / 8)
    assert fig2c_data(records).attrs["mean_gap_gb"] == pytest.approx(3.4 + 0.16 * (255 / 8) / 64, abs=1e-6)


def test_fig3_breakdown_and_activations_relative_to_lora(records):
    bars = fig3_data(records)
    assert list(zip(bars.model, bars.method)) == [("llama2-7b", "lora"), ("llama2-7b", "lora_fa")]
    lora, lora_fa = bars.iloc[0], bars.iloc[1]
    assert (lora.activations, lora.optimizer_states, lora.total) == pytest.approx((55.58, 2.4, 73.58), abs=1e-6)
    assert lora_fa.total == pytest.approx(13.5 + 0.3 + 1.2 + 42.48 + 1.5, abs=1e-6)
    assert (lora.activations_vs_lora, lora_fa.activations_vs_lora) == pytest.approx((1.0, 42.48 / 55.58))


def test_fig4_curves_of_the_best_setting():
    def cola(run_id, lr, seed, history, final):
        return RunRecord(run_id=run_id, experiment="fig4", model="tiny-roberta", task="glue/cola", method="lora",
                         lr=lr, seed=seed, metrics={"mcc": final}, eval_history=history)
    recs = pd.DataFrame([r.to_dict() for r in (
        cola("a", 1e-4, 0, [{"step": 0, "mcc": 0.1}, {"step": 10, "mcc": 0.5}], 0.5),
        cola("b", 1e-4, 1, [{"step": 0, "eval_mcc": 0.3}, {"step": 10, "metrics": {"mcc": 0.7}}], 0.7),
        cola("c", 1e-3, 0, [{"step": 0, "mcc": 0.0}, {"step": 10, "mcc": 0.2}], 0.2))])  # worse lr: not drawn
    curves = fig4_data(recs)
    assert curves[["step", "mean", "low", "high"]].values.ravel().tolist() == pytest.approx(
        [0, 20, 10, 30, 10, 60, 50, 70])
    assert set(curves.n_seeds) == {2} and set(curves.lr) == {1e-4} and set(curves.metric) == {"MCC"}


def test_fig5_panels_on_stand_in_models():
    gb = 2**30
    recs = [RunRecord(run_id=f"m{i}", experiment="fig5", model="tiny-llama", task="memory", method=m, r=8,
                      batch_size=b, seq_len=64, peak_memory_bytes=int((0.1 + 0.01 * b * (2 if m == "lora" else 1)) * gb),
                      memory_source="cpu-accounting", step_time_s=0.1 * b)
            for i, (m, b) in enumerate((m, b) for m in ("lora", "lora_fa") for b in (1, 2, 4))]
    panels = fig5_data(pd.DataFrame([r.to_dict() for r in recs]))
    gap = panels[panels.panel == "gap"]
    assert gap.x.tolist() == [1, 2, 4] and gap.gb.tolist() == pytest.approx([0.01, 0.02, 0.04], abs=1e-8)
    speed = panels[panels.panel == "speed"]  # 64 tokens per sample in 0.1 s per sample
    assert len(speed) == 6 and speed.tokens_per_s.tolist() == pytest.approx([640.0] * 6)
    assert len(panels[panels.panel == "memory"]) == 6 and not panels.attrs["paper_scale"]


def test_fig6_grid_values_and_marks(records):
    cells = fig6_data(records).set_index(["method", "r", "lr"])
    assert len(cells) == 6 * 5 * 2 - 1  # LoRA at r=32, lr=5e-5 was not run
    assert cells.loc[("lora", 4, 1e-3), "value"] == pytest.approx(90.0)
    # 0.90 - 0.05 |log10(r lr / 4e-3)| - 0.01 (LoRA-FA below rank 2), x100
    assert cells.loc[("lora_fa", 1, 5e-3), "value"] == pytest.approx(100 * (0.89 - 0.05 * math.log10(5 / 4)))
    assert math.isnan(cells.loc[("lora", 16, 5e-3), "value"]) and cells.loc[("lora", 16, 5e-3), "mark"] == "div"
    assert cells.loc[("lora", 8, 5e-3), "mark"] == ""
    assert (cells.attrs["tasks"], cells.attrs["metric"], cells.attrs["paper_task"]) == ("MRPC", "accuracy", "")
