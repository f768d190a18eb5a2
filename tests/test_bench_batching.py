"""benchmarks/bench_batching.py on the mini scale's tiny RoBERTa: every batching trains, and the
ones that split a random batch into micro-batches feed fewer padded tokens than random batches."""

from __future__ import annotations


def test_bench_batching_on_the_mini_scale(tmp_path):
    from benchmarks import bench_batching

    rows = {r["batching"]: r for r in bench_batching.main(["--experiment", "mini/table2", "--tasks", "glue/sst2",
                                                           "--methods", "lora_fa",
                                                           "--steps", "3", "--out", str(tmp_path / "b.csv")])}
    assert set(rows) == set(bench_batching.BATCHINGS) and (tmp_path / "b.md").is_file()
    assert all(r["step_s"] > 0 for r in rows.values()) and rows["random"]["step_vs_random"] == 1.0
    fed = {name: r["tokens_fed_per_step"] for name, r in rows.items()}
    assert fed["micro1"] == rows["micro1"]["real_tokens_per_step"] <= fed["rebalance"] <= fed["random"]
