"""lorafa.memory.report: Table 5 beside the paper and the dropout ratio table, from records."""

from lorafa.memory.report import (GIB, dropout_ratio_markdown, dropout_ratio_rows, summary_markdown, table5_markdown,
                                  table5_rows)
from lorafa.results import RunRecord


def rec(method, peak_gib, experiment="table5", model="llama-7b", batch=16, seq=1024, r=64, attn="sdpa",
        dropout=0.0, status="ok", act_gib=1.0):
    return RunRecord(run_id=f"{experiment}-{method}-{dropout}-{peak_gib}", experiment=experiment, model=model,
                     method=method, batch_size=batch, seq_len=seq, r=None if method == "full_ft" else r,
                     status=status, peak_memory_bytes=int(peak_gib * GIB), activation_bytes=int(act_gib * GIB),
                     memory_source="simulated", options={"attn_implementation": attn, "dropout": dropout})


def test_table5_picks_the_configured_cell_and_sits_beside_the_paper():
    cells = {"llama-7b": {"batch_size": 16, "seq_len": 1024, "r": 64, "attn_implementation": "sdpa"}}
    paper = {("LLaMA-7B", "full_ft"): (None, None), ("LLaMA-7B", "lora"): (64, 76.74),
             ("LLaMA-7B", "lora_fa"): (64, 61.49)}
    records = [rec("full_ft", 186.0, status="oom"), rec("lora", 99.0, attn="eager"), rec("lora", 105.0),
               rec("lora_fa", 50.0, batch=8)]
    rows = table5_rows(records, cells, paper, {"llama-7b": "LLaMA-7B"})
    by = {r["method"]: r for r in rows}
    assert by["full_ft"]["status"] == "oom" and by["full_ft"]["paper_note"] == "OOM"
    assert by["lora"]["peak_gib"] == 105.0 and by["lora"]["ours_over_paper"] == round(105 / 76.74, 2)
    assert by["lora_fa"]["status"] == "not run"  # batch 8 is not the configured cell
    md = table5_markdown(rows)
    assert "| LLaMA-7B | LoRA | 64 | 16 | 1024 | sdpa | 105.00 |" in md and "186.00 (OOM)" in md


def test_dropout_ratios_ours_and_peft():
    records = [rec(m, peak, experiment="llama_dropout", dropout=p, act_gib=act)
               for p, vals in ((0.0, (100, 80, 100, 80)), (0.1, (110, 80, 110, 90)))
               for m, peak, act in zip(("lora", "lora_fa", "peft_lora", "peft_lora_frozen_a"), vals, vals)]
    rows = dropout_ratio_rows(records)
    assert [r["dropout"] for r in rows] == [0.0, 0.1]
    assert rows[0]["ours_fa_over_lora_peak"] == rows[0]["peft_frozen_over_peft_lora_peak"] == 0.8
    assert rows[1]["ours_fa_over_lora_peak"] == 80 / 110 and rows[1]["peft_frozen_over_peft_lora_act"] == 90 / 110
    md = dropout_ratio_markdown(rows)
    assert "| 0.1 | peak | 0.727 | 0.818 | 0.818 |" in md
    assert "attn=sdpa" in rows[0]["setting"]
    assert "| llama_dropout | llama-7b | lora |" in summary_markdown(records)
