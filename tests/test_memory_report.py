"""The memory report's tables from records: Table 5's configured cells beside the paper, the dropout
ratio table, the per-record summary (analysis.table5, analysis.memory_tables)."""

from analysis.memory_tables import dropout_ratio_markdown, dropout_ratio_rows, summary_markdown
from analysis.table5 import configured_markdown, configured_rows, ratio_markdown
from lorafa.memory.report import GIB, gib, options_label
from lorafa.results import RunRecord


def rec(method, peak_gib, experiment="table5", model="llama-7b", batch=16, seq=1024, r=64, attn="sdpa",
        dropout=0.0, status="ok", act_gib=1.0):
    return RunRecord(run_id=f"{experiment}-{method}-{dropout}-{peak_gib}", experiment=experiment, model=model,
                     method=method, batch_size=batch, seq_len=seq, r=None if method == "full_ft" else r,
                     status=status, peak_memory_bytes=int(peak_gib * GIB), activation_bytes=int(act_gib * GIB),
                     memory_source="simulated", options={"attn_implementation": attn, "dropout": dropout})


def test_table5_picks_the_configured_cell_and_sits_beside_the_paper():
    cells = {"llama-7b": {"batch_size": 16, "seq_len": 1024, "r": 64, "attn_implementation": "sdpa"}}
    records = [rec("full_ft", 186.0, status="oom"), rec("lora", 99.0, attn="eager"), rec("lora", 105.0),
               rec("lora_fa", 50.0, batch=8)]
    rows = configured_rows(records, cells)
    by = {r["method"]: r for r in rows}
    assert by["full_ft"]["status"] == "oom" and by["full_ft"]["paper_note"] == "OOM"
    assert by["lora"]["peak_gib"] == 105.0 and by["lora"]["ours_over_paper"] == round(105 / 76.74, 2)
    assert by["lora_fa"]["status"] == "not run"  # batch 8 is not the configured cell
    md = configured_markdown(rows)
    assert "| LLaMA-7B | LoRA | 64 | 16 | 1024 | sdpa | 105.00 |" in md and "186.00 (OOM)" in md
    # LoRA / Full-FT: ours 105 / 186 = 0.56; the paper's Full-FT ran out of memory, so no ratio
    assert "| LLaMA-7B | - | 0.80 | 0.56 | - |" in ratio_markdown(rows)


def test_a_stand_in_is_labelled_as_itself_and_compared_with_its_paper_model():
    cells = {"tiny-llama": {"batch_size": 16, "seq_len": 1024, "r": 64, "attn_implementation": "sdpa"}}
    rows = configured_rows([rec("lora", 38.37, model="tiny-llama")], cells)
    lora = next(r for r in rows if r["method"] == "lora")
    assert (lora["model"], lora["paper_gb"], lora["ours_over_paper"]) == ("tiny-LLaMA", 76.74, 0.5)


def test_point_line_helpers():
    assert gib(3 * GIB) == 3.0 and gib(None) is None
    assert options_label({"attn_implementation": "sdpa", "zero_shards": 8, "num_adapted_layers": 224,
                          "dropout": 0.1}, "lora") == "attn=sdpa, ZeRO-3 x8, layers=224, dropout=0.1"
    assert options_label({"num_adapted_layers": 0}, "full_ft") == ""


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
