"""analysis.grouping pairs records that differ only in length grouping, on hand-made records."""

import pandas as pd
import pytest

from analysis import grouping
from lorafa.results import RunRecord


def rec(run_id, seed, accuracy, grouped, lr=1e-3, wall=100.0, method="lora_fa", status="ok", threads=2):
    trainer = {"lr": lr, "seed": seed, "batch_size": 16}
    if grouped:  # a random-batch config leaves the flag out (its default), as RunSpec.config() does
        trainer["group_by_length"] = True
    config = {"task": "glue/mrpc", "method": {"name": method}, "trainer": trainer}
    return RunRecord(run_id=run_id, experiment="table2", model="minilm-l6", task="glue/mrpc", method=method,
                     lr=lr, seed=seed, status=status, metrics={"accuracy": accuracy}, wall_s=wall,
                     config=config, config_hash=run_id, device=f"cpu:2cores,{threads}threads@vm")


def frame(*records):
    return pd.DataFrame([r.to_dict() for r in records])


def test_pairs_equal_settings_only_and_reads_the_difference_against_the_seed_spread():
    grouped = frame(rec("g0", 0, 0.78, True, wall=320), rec("g1", 1, 0.777, True),
                    rec("g_other_lr", 0, 0.70, True, lr=3e-4),
                    rec("g_other_lr2", 0, 0.70, True, lr=3e-3),        # no random run at 3e-3: unpaired
                    rec("g_lora", 0, 0.75, True, method="lora"))
    random = frame(rec("r0", 0, 0.806, False, wall=305), rec("r1", 1, 0.80, False, threads=1),
                   rec("r2", 2, 0.812, False),
                   rec("r_lora", 0, 0.70, False, method="lora", status="failed"),   # not ok: unpaired
                   rec("r_lr3", 0, 0.79, False, lr=3e-4),              # one seed at 3e-4: 1e-3's spread stands beside it
                   rec("r_grouped_here", 0, 0.5, True, lr=3e-3))              # a grouped record among the random ones is ignored
    bench = pd.DataFrame([{"task": "glue/mrpc", "method": "lora_fa", "batching": "grouped", "step_s": 0.5},
                          {"task": "glue/mrpc", "method": "lora_fa", "batching": "random", "step_s": 0.6},
                          {"task": "glue/mrpc", "method": "lora", "batching": "random", "step_s": 0.6}])
    df = grouping.grouping_pairs(grouped, random, bench)
    assert list(zip(df["lr"], df["seed"], df["grouped"], df["random"])) == [
        (3e-4, 0, 70.0, pytest.approx(79.0)), (1e-3, 0, 78.0, pytest.approx(80.6)), (1e-3, 1, pytest.approx(77.7), 80.0)]
    assert df["delta"].tolist() == pytest.approx([9.0, 2.6, 2.3])
    assert df["seed_std"].tolist() == pytest.approx([0.6, 0.6, 0.6])  # std of 80.6, 80.0, 81.2 (at 1e-3)
    assert df["seed_std_lr"].tolist() == [1e-3, 1e-3, 1e-3]
    assert df["wall_ratio"][1] == pytest.approx(305 / 320)
    assert pd.isna(df["wall_ratio"][2])  # seed 1's random run had one thread, its grouped one two
    assert df["bench_step_ratio"].tolist() == pytest.approx([1.2, 1.2, 1.2])
    assert set(df["grouped_config_hash"]) == {"g_other_lr", "g0", "g1"}
    text = grouping.grouping_markdown(df)
    assert "| table2 | MRPC | LoRA-FA | 1e-3 | 0 | accuracy | 78.0 | 80.6 | +2.6 | 0.6 | 320 (2) | 305 (2) | 0.95 | 1.20 |" in text
    assert "| 77.7 | 80.0 | +2.3 | 0.6 | 100 (2) | 100 (1) | - | 1.20 |" in text
    assert "| 3e-4 | 0 | accuracy | 70.0 | 79.0 | +9.0 | 0.6 (at 1e-3) |" in text
    assert "MRPC +4.6 (3)" in text


def test_a_config_differing_in_anything_else_does_not_pair():
    g = rec("g", 0, 0.7, True)
    r = rec("r", 0, 0.8, False)
    r.config["trainer"]["batch_size"] = 32
    assert grouping.grouping_pairs(frame(g), frame(r)).empty
    assert grouping.grouping_markdown(grouping.grouping_pairs(frame(g), frame(r))).startswith("No pairs yet")


def test_cli_writes_the_table_from_two_scales(tmp_path):
    from lorafa.results import write_record
    write_record(rec("g0", 0, 0.78, True), tmp_path / "small-grouped")
    write_record(rec("r0", 0, 0.806, False), tmp_path / "small")
    assert grouping.main(["--root", str(tmp_path)]) == 0
    out = pd.read_csv(tmp_path / "small" / "tables" / "grouping.csv")
    assert out["delta"].round(1).tolist() == [2.6]


def test_sensitivity_pairs_name_the_setting_they_vary():
    def table6(run_id, init, accuracy, grouped):
        r = rec(run_id, 0, accuracy, grouped)
        r.experiment = "table6"
        r.config["method"]["adapter"] = {"r": 8, "alpha": 32, "init_a": init}
        return r
    grouped = frame(table6("g_std", "std_normal", 0.684, True), table6("g_one", "all_one", 0.70, True),
                    rec("g0", 0, 0.78, True))
    random = frame(table6("r_std", "std_normal", 0.684, False), table6("r_one", "all_one", 0.72, False),
                   rec("r0", 0, 0.806, False))
    df = grouping.grouping_pairs(grouped, random)
    assert list(zip(df["experiment"], df["setting"], df["random"])) == [
        ("table2", "", pytest.approx(80.6)), ("table6", "All-one", pytest.approx(72.0)),
        ("table6", "Std-normal", pytest.approx(68.4))]
    text = grouping.grouping_markdown(df)
    assert "| table6 (All-one) | MRPC | LoRA-FA | 1e-3 | 0 | accuracy | 70.0 | 72.0 | +2.0 |" in text
    assert "| table2 | MRPC | LoRA-FA | 1e-3 | 0 | accuracy | 78.0 | 80.6 |" in text
    r = rec("x", 0, 0.7, False)
    r.experiment, r.config["method"]["adapter"] = "table7", {"alpha": 128}
    assert grouping.setting_label(r.to_dict()) == "alpha 128"


def test_ranks_sort_as_numbers_and_experiments_in_the_papers_order():
    def fig6(run_id, r, grouped):
        record = rec(run_id, 0, 0.7, grouped)
        record.experiment = "fig6"
        record.config["method"]["adapter"] = {"r": r, "alpha": 4 * r}
        return record
    grouped = frame(*(fig6(f"g{r}", r, True) for r in (32, 8, 2)), rec("g0", 0, 0.78, True))
    random = frame(*(fig6(f"r{r}", r, False) for r in (32, 8, 2)), rec("r0", 0, 0.8, False))
    df = grouping.grouping_pairs(grouped, random)
    assert list(zip(df["experiment"], df["setting"])) == [("table2", ""), ("fig6", "r 2"), ("fig6", "r 8"),
                                                          ("fig6", "r 32")]
