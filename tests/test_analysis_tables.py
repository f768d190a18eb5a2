"""Table builders on hand-made records with known values: exact CSV rows."""

import pandas as pd
import pytest

from analysis import paper_values as P
from analysis import tables
from analysis.common import fmt_lr, fmt_range
from lorafa.results import RunRecord, load_records, write_record


def frame(*records):
    return pd.DataFrame([r.to_dict() for r in records])


def run(i=[0], **kw):  # noqa: B006 - a counter for unique run ids
    i[0] += 1
    return RunRecord(run_id=f"t{i[0]}", **kw)


def glue(task, lr, seed, metrics, status="ok", **kw):
    return run(experiment="table2", model="tiny-roberta", method="lora_fa", task=task, r=8, alpha=16, lr=lr,
               seed=seed, metrics=metrics, status=status, trainable_params=1_800_000, **kw)


def rows_csv(df, **equal):
    mask = pd.Series(True, index=df.index)
    for k, v in equal.items():
        mask &= df[k] == v
    return df[mask].to_csv(index=False)


def test_table2_best_lr_mean_std_mnli_and_missing_reasons():
    recs = frame(
        glue("glue/mrpc", 1e-4, 0, {"accuracy": 0.10}),  # superseded: a later run of the same seed
        glue("glue/mrpc", 1e-4, 0, {"accuracy": 0.80}),
        glue("glue/mrpc", 1e-4, 1, {"accuracy": 0.82}),
        glue("glue/mrpc", 1e-4, 2, {"accuracy": 0.84}),
        glue("glue/mrpc", 5e-4, 0, {"accuracy": 0.85}),  # higher mean, but one seed diverged
        glue("glue/mrpc", 5e-4, 1, {"accuracy": 0.87}),
        glue("glue/mrpc", 5e-4, 2, {}, status="diverged"),
        glue("glue/mnli", 1e-4, 0, {"accuracy_matched": 0.80, "accuracy_mismatched": 0.82}),
        glue("glue/mnli", 1e-4, 1, {"accuracy_matched": 0.84, "accuracy_mismatched": 0.86}),
        glue("glue/cola", 1e-4, 0, {}, status="oom"),
        glue("glue/rte", 1e-4, 0, {}, status="failed", error="data unavailable offline: glue/rte\nTraceback"),
        glue("glue/sst2", 1e-4, 0, {}, status="diverged"),
        glue("glue/qnli", 1e-4, 0, {"f1": 0.9}),
        glue("glue/stsb", 1e-4, 0, {"pearson": 0.9}),
        # another experiment's record is ignored
        run(experiment="table5", model="tiny-roberta", method="lora_fa", task="glue/stsb", metrics={"pearson": 0.1}),
    )
    df = tables.build_table2(recs)
    assert rows_csv(df, model="tiny-roberta", method="lora_fa") == """\
model,paper_model,method,column,ours,ours_std,n_seeds,lr,r,paper,paper_std,delta,note
tiny-roberta,RoBERTa-base,lora_fa,# TPs (M),1.8,,,,,1.8,,0.0,
tiny-roberta,RoBERTa-base,lora_fa,MRPC,82.0,2.0,3,0.0001,8,90.0,0.4,-8.0,
tiny-roberta,RoBERTa-base,lora_fa,COLA,,,,,,63.6,1.6,,oom
tiny-roberta,RoBERTa-base,lora_fa,QNLI,,,,,,92.5,0.7,,metric missing: accuracy
tiny-roberta,RoBERTa-base,lora_fa,RTE,,,,,,77.9,1.7,,data unavailable offline: glue/rte
tiny-roberta,RoBERTa-base,lora_fa,SST-2,,,,,,94.8,0.2,,diverged
tiny-roberta,RoBERTa-base,lora_fa,STS-B,90.0,,1,0.0001,8,89.6,0.2,0.4,
tiny-roberta,RoBERTa-base,lora_fa,MNLI,83.0,2.8284,2,0.0001,8,86.8,0.0,-3.8,
tiny-roberta,RoBERTa-base,lora_fa,QQP,,,,,,90.1,0.0,,not run
tiny-roberta,RoBERTa-base,lora_fa,Avg.,,,,,,85.7,0.6,,"incomplete: no COLA, QNLI, RTE, SST-2, QQP; mean of the other 3: 85.0 (paper 88.8)"
"""
    # every paper row is present; those without records say "not run"
    assert len(df) == 8 * 10
    others = df[~((df.model == "tiny-roberta") & (df.method == "lora_fa"))]
    assert set(others.note) == {"not run"} and others.ours.isna().all()
    assert list(dict.fromkeys(df.model)) == ["tiny-roberta", "roberta-large"]
    md = tables.markdown_table("table2", df)
    assert "Rows for tiny-roberta are compared with the paper's RoBERTa-base rows." in md
    assert "| tiny-roberta | LoRA-FA | ours | 1.80 | 82.0 ± 2.0 | _oom_ |" in md


def test_table2_average_over_complete_rows():
    values = {"glue/mrpc": ("accuracy", 0.9), "glue/cola": ("mcc", 0.6), "glue/qnli": ("accuracy", 0.9),
              "glue/rte": ("accuracy", 0.7), "glue/sst2": ("accuracy", 0.9), "glue/stsb": ("pearson", 0.9),
              "glue/qqp": ("accuracy", 0.9)}
    recs = [glue(t, 1e-4, s, {k: v + 0.01 * s}) for t, (k, v) in values.items() for s in (0, 1)]
    recs += [glue("glue/mnli", 1e-4, s, {"accuracy_matched": 0.8 + 0.01 * s, "accuracy_mismatched": 0.8 + 0.01 * s})
             for s in (0, 1)]
    df = tables.build_table2(frame(*recs))
    avg = df[(df.model == "tiny-roberta") & (df.method == "lora_fa") & (df.column == "Avg.")].iloc[0]
    assert avg.ours == pytest.approx((90 + 60 + 90 + 70 + 90 + 90 + 80 + 90) / 8 + 0.5)
    assert avg.ours_std == pytest.approx(0.7071) and avg.note == ""


def test_table3_rouge_comes_from_the_bleu_selected_setting():
    def t5(lr, seed, bleu, rouge, **kw):
        return run(experiment="table3", model="t5-small", task="wmt16_en_ro", method="lora", r=8, lr=lr,
                   seed=seed, metrics={"bleu": bleu, "rougeL": rouge}, trainable_params=400_000, **kw)
    df = tables.build_table3(frame(t5(1e-4, 0, 27.0, 39.0), t5(1e-4, 1, 28.0, 40.0), t5(1e-3, 0, 26.0, 45.0)))
    assert rows_csv(df, model="t5-small", method="lora") == """\
model,paper_model,method,column,ours,ours_std,n_seeds,lr,r,paper,paper_std,delta,note
t5-small,T5-small,lora,# TPs (M),0.4,,,,,0.4,,0.0,
t5-small,T5-small,lora,BLEU,27.5,0.7071,2,0.0001,8,27.0,,0.5,
t5-small,T5-small,lora,ROUGE-L,39.5,0.7071,2,0.0001,8,39.6,,-0.1,
"""
    assert set(df[df.model == "t5-large"].note) == {"not run"}


def test_table4_gain_over_base_model():
    def llama(model, task, method, acc):
        tuned = method != "base"
        return run(experiment="table4", model=model, task=task, method=method, r=64 if tuned else None,
                   lr=2e-4 if tuned else None, seed=0, metrics={"mmlu_accuracy": acc},
                   trainable_params=83_000_000 if tuned else None)
    df = tables.build_table4(frame(llama("llama-7b", "mmlu", "base", 0.35),
                                   llama("llama-7b", "alpaca", "lora_fa", 0.374),
                                   llama("tiny-llama", "flanv2", "lora_fa", 0.30)))
    assert rows_csv(df, model="llama-7b", task="alpaca", method="lora_fa") == """\
model,paper_model,task,method,column,ours,ours_std,n_seeds,lr,r,paper,paper_std,delta,note
llama-7b,LLaMA-7B,alpaca,lora_fa,# TPs (M),83.0,,,,,83.0,,0.0,
llama-7b,LLaMA-7B,alpaca,lora_fa,MMLU,37.4,,1,0.0002,64,37.4,,0.0,
llama-7b,LLaMA-7B,alpaca,lora_fa,Gain,2.4,,,,,2.3,,0.1,
"""
    assert rows_csv(df, model="llama-7b", method="base") == """\
model,paper_model,task,method,column,ours,ours_std,n_seeds,lr,r,paper,paper_std,delta,note
llama-7b,LLaMA-7B,mmlu,base,MMLU,35.0,,1,,,35.1,,-0.1,
"""
    gain = df[(df.model == "tiny-llama") & (df.task == "flanv2") & (df.method == "lora_fa") & (df.column == "Gain")]
    assert gain.iloc[0].note == "no base-model record with MMLU"
    assert df[(df.model == "tiny-llama") & (df.method == "base")].iloc[0].note == "not run"



def test_table4_small_scale_held_out_measures_and_base_rows_per_dataset():
    """SmolLM2 rows: the base model scored on each dataset's held-out rows, its MMLU from the Alpaca
    base run; seeds give a mean and spread; flan_cot stands beside the paper's FLAN v2 row."""
    def smol(task, method, seed=0, loss=None, cot=None, mmlu=None):
        metrics = {k: v for k, v in (("heldout_loss", loss), ("cot_accuracy", cot), ("mmlu_accuracy", mmlu))
                   if v is not None}
        tuned = method != "base"
        return run(experiment="table4", model="smollm2-135m", task=task, method=method, seed=seed,
                   lr=1e-3 if tuned else None, r=16 if tuned else None, metrics=metrics,
                   trainable_params=2_500_000 if tuned else 0)
    df = tables.build_table4(frame(
        smol("alpaca", "base", loss=1.9, mmlu=0.26), smol("flan_cot", "base", loss=2.4, cot=0.20),
        smol("flan_cot", "lora_fa", 0, 1.20, 0.30, 0.27), smol("flan_cot", "lora_fa", 1, 1.30, 0.34, 0.25),
        smol("alpaca", "lora", 0, 1.70, None, 0.24)))
    cells = {(r.task, r.method, r.column): r for r in df.itertuples()}
    fa = lambda column: cells[("flan_cot", "lora_fa", column)]  # noqa: E731
    assert (fa("Held-out loss").ours, fa("Held-out loss").n_seeds) == (1.25, 2)
    assert fa("Held-out loss").ours_std == 0.0707  # sample std, rounded to 4 places as every cell
    assert fa("CoT acc.").ours == 32.0 and fa("MMLU").ours == 26.0 and fa("Gain").ours == 0.0
    assert fa("MMLU").paper == 44.0  # the paper's FLAN v2 LoRA-FA row
    assert cells[("flan_cot", "base", "Held-out loss")].ours == 2.4 and cells[("flan_cot", "base", "CoT acc.")].ours == 20.0
    assert cells[("alpaca", "base", "Held-out loss")].ours == 1.9 and cells[("alpaca", "base", "MMLU")].ours == 26.0
    assert ("alpaca", "lora", "CoT acc.") not in cells  # Alpaca has no CoT questions
    assert not any(task == "flanv2" for task, _, _ in cells)  # replaced by flan_cot, not left empty
    md = tables.markdown_table("table4", df)
    assert "flan_cot: ours are FLAN v2 CoT source files" in md
    # the paper's columns first, whichever row introduced a column (the base row has no # TPs)
    assert "| Method |  | # TPs (M) | MMLU | Gain | Held-out loss | CoT acc. |" in md

def test_table5_memory_oom_and_sources():
    gb = 2**30

    def mem(model, method, r, peak, status="ok"):
        return run(experiment="table5", model=model, task="memory", method=method, r=r, batch_size=64,
                   status=status, peak_memory_bytes=peak, memory_source="simulated" if peak else None)
    df = tables.build_table5(frame(mem("roberta-base", "lora", 8, 9 * gb), mem("roberta-base", "lora", 8, int(9.5 * gb)),
                                   mem("roberta-base", "full_ft", None, None, "oom"),
                                   mem("llama-7b", "lora_fa", 64, 60 * gb),
                                   run(experiment="table5", model="llama-7b", task="memory", method="lora_fa", r=64,
                                       batch_size=16, status="ok", peak_memory_bytes=50 * gb, memory_source="simulated",
                                       options={"selective_recompute": True})))
    assert rows_csv(df, model="roberta-base") == """\
model,paper_model,method,column,ours,ours_std,n_seeds,r,paper,paper_std,delta,note,batch_size,memory_source,paper_r,paper_batch_size,paper_note,selective_recompute
roberta-base,RoBERTa-base,full_ft,Mem (GB),,,,,9.6,,,oom,64,,,64,,False
roberta-base,RoBERTa-base,lora,Mem (GB),9.25,0.3536,2,8,9.2,,0.05,,64,simulated,8,64,,False
roberta-base,RoBERTa-base,lora_fa,Mem (GB),,,,8,6.9,,,not run,,,8,64,,False
"""
    llama = df[(df.model == "llama-7b") & ~df.selective_recompute].set_index("method")
    assert llama.loc["full_ft", "paper_note"] == "OOM" and llama.loc["full_ft", "note"] == "not run"
    assert llama.loc["lora_fa", "ours"] == 60.0 and llama.loc["lora_fa", "delta"] == pytest.approx(-1.49)
    # with selective recomputation: a row of its own beside the paper's setting, no paper value to compare with
    recomputed = df[(df.model == "llama-7b") & df.selective_recompute].set_index("method")
    assert recomputed.loc["lora_fa", "ours"] == 50.0 and pd.isna(recomputed.loc["lora_fa", "paper"])
    assert "LoRA-FA + sel. recomp." in tables.markdown_table("table5", df)


def test_table6_best_lr_and_converging_range():
    def mrpc(lr, seed, acc, status="ok", init="ones"):
        return run(experiment="table6", model="roberta-base", task="glue/mrpc", method="lora_fa", r=8, alpha=16,
                   lr=lr, seed=seed, init_a=init, status=status, metrics={"accuracy": acc} if acc else {})
    df = tables.build_table6(frame(mrpc(1e-4, 0, 0.89), mrpc(1e-4, 1, 0.90), mrpc(2e-4, 0, 0.90),
                                   mrpc(2e-4, 1, 0.91), mrpc(3e-4, 0, 0.885), mrpc(5e-4, 0, 0.80),
                                   mrpc(9e-4, 0, None, "diverged")))
    assert df.to_csv(index=False) == """\
model,paper_model,method,task,init_a,ours,ours_std,n_seeds,lr,r,paper,paper_std,delta,note,lr_range,n_lrs_run,paper_lr_range
roberta-base,RoBERTa-base,lora_fa,glue/mrpc,all_one,90.5,0.7071,2,0.0002,8,89.72,0.4,0.78,,"{1e-4, ..., 3e-4}",5,"{1e-4, ..., 9e-4}"
roberta-base,RoBERTa-base,lora_fa,glue/mrpc,std_normal,,,,,,88.94,0.6,,not run,,,"{1e-5, ..., 9e-5}"
roberta-base,RoBERTa-base,lora_fa,glue/mrpc,kaiming_uniform,,,,,,90.0,0.4,,not run,,,"{1e-5, ..., 9e-5}"
"""
    text = tables.markdown_table("table6", df)
    assert "| roberta-base | MRPC | LoRA-FA | All-one | {1e-4, ..., 3e-4} | 2e-4 | 90.50 ± 0.71 |" in text
    assert "hence no delta" not in text


def test_a_rate_at_the_majority_class_does_not_converge_even_when_it_is_the_rows_best():
    def mrpc(lr, acc, init):  # MRPC's dev set: 68.4 % positive
        return run(experiment="table6", model="minilm-l6", task="glue/mrpc", method="lora_fa", r=8, alpha=32,
                   lr=lr, seed=0, init_a=init, status="ok",
                   metrics={"accuracy": acc, "majority_accuracy": 0.684})
    df = tables.build_table6(frame(mrpc(1e-4, 0.684, "all_one"), mrpc(1e-3, 0.684, "all_one"),
                                   mrpc(1e-4, 0.700, "kaiming_uniform"), mrpc(1e-3, 0.723, "kaiming_uniform"),
                                   mrpc(3e-3, 0.706, "kaiming_uniform")))
    ranges = dict(zip(df["init_a"], df["lr_range"]))
    assert ranges["all_one"] == ""                     # its best (68.4) is the majority class
    assert ranges["kaiming_uniform"] == "{1e-3, 3e-3}"  # 70.0 is within 2 of the best but not 2 above 68.4
    assert "above the majority class" in tables.markdown_table("table6", df)


def test_table6_on_another_task_keeps_the_paper_beside_it_without_delta():
    def sst2(lr, acc, init):
        return run(experiment="table6", model="tiny-roberta", task="glue/sst2", method="lora_fa", r=8, alpha=32,
                   lr=lr, seed=0, init_a=init, metrics={"accuracy": acc})
    df = tables.build_table6(frame(sst2(5e-4, 0.58, "all_one"), sst2(2e-3, 0.61, "all_one"),
                                   sst2(2e-3, 0.60, "kaiming_uniform")))
    rows = df.set_index("init_a")
    assert set(df.task) == {"glue/sst2"}
    assert (rows.loc["all_one", "ours"], rows.loc["all_one", "lr"], rows.loc["all_one", "paper"]) == (61.0, 2e-3, 89.72)
    assert df.delta.isna().all() and rows.loc["std_normal", "note"] == "not run"
    text = tables.markdown_table("table6", df)
    assert "| tiny-roberta | SST-2 | LoRA-FA | All-one |" in text
    assert "The paper's column is MRPC; ours is SST-2" in text


def test_table7_alpha_rows():
    def mrpc(alpha, lr, acc):
        return run(experiment="table7", model="roberta-base", task="glue/mrpc", method="lora_fa", r=8,
                   alpha=alpha, lr=lr, seed=0, metrics={"accuracy": acc})
    df = tables.build_table7(frame(mrpc(32.0, 4e-4, 0.89), mrpc(32.0, 6e-4, 0.90), mrpc(1, 1e-3, 0.70)))
    assert list(df.alpha) == list(P.TABLE7)
    row = df.set_index("alpha").loc[32]
    assert (row.ours, row.lr, row.lr_range, row.paper, row.paper_lr_range) == \
        (90.0, 6e-4, "{4e-4, 6e-4}", 90.0, "{4e-4, ..., 9e-4}")
    assert df.set_index("alpha").loc[2, "note"] == "not run"


def test_formatting_helpers():
    assert [fmt_lr(x) for x in (5e-4, 1.5e-4, 1e-3, 2e-5)] == ["5e-4", "1.5e-4", "1e-3", "2e-5"]
    assert fmt_range([3e-5, 1e-5, 2e-5]) == "{1e-5, ..., 3e-5}" and fmt_range([1e-4]) == "{1e-4}"


def test_paper_values_are_transcribed_in_full():
    assert len(P.TABLE2) == 8 and all(len(v) == 10 for v in P.TABLE2.values())
    assert P.TABLE2[("RoBERTa-base", "lora_fa")]["Avg."] == (85.7, 0.6)
    assert P.TABLE2[("RoBERTa-large", "full_ft")]["COLA"] == (67.8, 1.0)
    assert len(P.TABLE3) == 9 and P.TABLE3[("T5-large", "lora_fa")]["# TPs (M)"] == 2.25
    assert len(P.TABLE4) == 8 and all(round(v["MMLU"] - v["Gain"], 1) == P.TABLE4_BASE_MMLU for v in P.TABLE4.values())
    assert len(P.TABLE5) == 18 and P.TABLE5[("LLaMA-7B", "full_ft")] == (None, None)
    assert len(P.TABLE6) == 3 and len(P.TABLE7) == 8
    assert P.FIG3["activations_gb"] == {"lora": 55.58, "lora_fa": 42.48} and P.FIG5["gap_gb"] == (3.0, 8.0)


def test_cli_writes_every_table_and_reports_missing(tmp_path, capsys):
    root = tmp_path / "results"
    write_record(glue("glue/mrpc", 1e-4, 0, {"accuracy": 0.8}), root / "mini")
    write_record(glue("glue/cola", 1e-4, 0, {}, status="oom"), root / "mini")
    assert tables.main(["--scale", "mini", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    # only Table 2 has records: the others are not built unless asked for (as at the small scale)
    assert (root / "mini" / "tables" / "table2.csv").is_file() and not (root / "mini" / "tables" / "table3.csv").exists()
    assert "table3: no table3 records" in out
    assert tables.main(["--scale", "mini", "--root", str(root), *[f"--only=table{n}" for n in range(2, 8)]]) == 0
    out += capsys.readouterr().out
    for n in range(2, 8):
        assert (root / "mini" / "tables" / f"table{n}.csv").stat().st_size > 0
        assert (root / "mini" / "tables" / f"table{n}.md").read_text().startswith(f"# Table {n}")
    assert "2 run record(s)" in out and "table2: 1 cell(s) oom: tiny-roberta/lora_fa/COLA" in out
    assert "not run" in out
    written = pd.read_csv(root / "mini" / "tables" / "table2.csv")
    assert written[(written.model == "tiny-roberta") & (written.method == "lora_fa") & (written.column == "MRPC")].ours.iloc[0] == 80.0

    capsys.readouterr()
    assert tables.main(["--scale", "mini", "--root", str(root), "--only", "table5"]) == 0
    out = capsys.readouterr().out
    assert "table5:" in out and "table2:" not in out
    assert len(load_records(root / "mini")) == 2


def test_a_grid_cell_is_chosen_on_seed_0_and_reports_its_seeds():
    """The small grids run every rate at seed 0 and the chosen one at seeds 0-2: the cell compares
    rates on seed 0 (not one lucky seed against a mean of three), then reports mean ± std."""
    recs = frame(
        glue("glue/mrpc", 1e-3, 0, {"accuracy": 0.80}),
        glue("glue/mrpc", 1e-3, 1, {"accuracy": 0.70}),
        glue("glue/mrpc", 1e-3, 2, {"accuracy": 0.72}),
        glue("glue/mrpc", 3e-3, 0, {"accuracy": 0.78}),  # its one seed beats 1e-3's mean (74.0), not its seed 0
        glue("glue/mrpc", 3e-4, 0, {"accuracy": 0.60}),
    )
    df = tables.build_table2(recs)
    cell = df[(df.model == "tiny-roberta") & (df.method == "lora_fa") & (df.column == "MRPC")].iloc[0]
    assert cell.lr == 1e-3 and cell.n_seeds == 3 and round(cell.ours, 1) == 74.0


def test_chosen_rates_are_the_cells_best_on_seed_0_and_print_as_the_configs_block():
    from analysis.chosen_rates import chosen_rates, yaml_block

    recs = frame(
        glue("glue/mrpc", 1e-3, 0, {"accuracy": 0.80}),
        glue("glue/mrpc", 1e-3, 1, {"accuracy": 0.70}),
        glue("glue/mrpc", 3e-3, 0, {"accuracy": 0.78}),
        glue("glue/mrpc", 3e-4, 0, {"accuracy": 0.60}),
        glue("glue/cola", 1e-3, 0, {"mcc": 0.2}),          # one rate: not a grid, no choice
        glue("glue/sst2", 1e-3, 0, {"accuracy": 0.9}),
        glue("glue/sst2", 3e-3, 0, {}, status="diverged"),  # the only other rate diverged
    )
    assert chosen_rates(recs) == {"glue/mrpc": {"lora_fa": 1e-3}}
    assert yaml_block(chosen_rates(recs)) == "chosen_lr:\n  glue/mrpc: {lora_fa: 1e-3}\n"
    assert yaml_block({}) == "chosen_lr: {}\n"


def test_the_rate_grid_shows_every_rate_of_a_cell_and_bolds_the_chosen_one(tmp_path):
    from analysis.chosen_rates import rate_grid, write_grid

    recs = frame(
        glue("glue/mrpc", 1e-3, 0, {"accuracy": 0.80}),
        glue("glue/mrpc", 1e-3, 1, {"accuracy": 0.70}),
        glue("glue/mrpc", 3e-3, 0, {"accuracy": 0.78}),
        glue("glue/mrpc", 3e-4, 0, {"accuracy": 0.60}),
        glue("glue/cola", 1e-3, 0, {"mcc": 0.2}),  # one rate: not a grid
    )
    grid = rate_grid(recs)
    assert list(grid["lr"]) == [3e-4, 1e-3, 3e-3] and set(grid["task"]) == {"glue/mrpc"}
    assert list(grid["chosen"]) == [False, True, False]
    assert [round(v, 1) for v in grid["seed0"]] == [60.0, 80.0, 78.0]
    _, md = write_grid(grid, tmp_path)
    text = md.read_text()
    assert "| task | LoRA-FA (3e-4 / 1e-3 / 3e-3) |" in text
    assert "| MRPC (accuracy) | 60.0 / **80.0** / 78.0 |" in text
    assert "MRPC LoRA-FA 75.0 ± 7.1 (2)" in text
    assert list(grid["heldout_mean"].isna()) == [True, False, True]
    assert "| method | MRPC | mean of 1 |" in text and "| LoRA-FA | 70.0 | 70.0 |" in text  # seed 1 only


def test_update_replaces_only_the_configs_chosen_lr_block(tmp_path):
    from analysis.chosen_rates import update_config

    path = tmp_path / "table2.yaml"
    path.write_text("experiment_name: table2\n# why\nchosen_lr:\n  glue/sst2: {lora: 1e-3}\ntrainer:\n  lr: 1\n")
    assert update_config("chosen_lr:\n  glue/cola: {lora: 3e-3}\n  glue/sst2: {lora: 1e-3}\n", path)
    assert path.read_text() == ("experiment_name: table2\n# why\nchosen_lr:\n  glue/cola: {lora: 3e-3}\n"
                                "  glue/sst2: {lora: 1e-3}\ntrainer:\n  lr: 1\n")
    assert not update_config("chosen_lr:\n  glue/cola: {lora: 3e-3}\n  glue/sst2: {lora: 1e-3}\n", path)
    path.write_text("trainer:\n  lr: 1\n")
    with pytest.raises(ValueError, match="no top-level chosen_lr"):
        update_config("chosen_lr: {}\n", path)
