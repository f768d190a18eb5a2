# Every target creates .venv from requirements.txt first if needed.
#   make demo                 the paper in miniature (CPU, offline)
#   make test                 the test suite
#   make small                Table 2 and Fig. 4 on a real pretrained encoder, each cell at its chosen rate (CPU, offline, hours)
#   make small-grids          the small scale's learning-rate grids (Table 2 per cell, Tables 6, 7, Fig. 6; hours)
#   make small-llm            Table 4 on a real pretrained LLaMA-architecture model (CPU, offline, hours)
#   make small-llm-seeds      its seeds 1 and 2 for LoRA and LoRA-FA on flan_cot (about an hour)
#   make table2 [SCALE=mini|small]  run the missing runs of Table 2's sweep, then build the table
#   make tables / figures     rebuild every table / figure from results/$(SCALE) (no training)
#   make dry-run              every paper experiment rehearsed: real architectures, random weights, one step
#   make gpu-check [ARGS=...] Table 5's memory points measured on one CUDA GPU beside the simulator (<= 8 min)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# torch's CPU wheel lies on the build machines' disk; elsewhere pip uses the index.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
SCALE ?= paper
EXP := $(if $(filter paper,$(SCALE)),,$(SCALE)/)
# At small scale Tables 6, 7 and Figure 6 are learning-rate grids (conf/experiment/small/grids/).
GRID := $(if $(filter small,$(SCALE)),grids/)
# Runs at once in the small suites, each its own process (experiments/demo.py --workers).
WORKERS ?= 1
RUN := $(PY) experiments/run.py -m
MEMORY := $(PY) experiments/memory.py -m backend=$(if $(filter mini,$(SCALE)),simulate,$(or $(BACKEND),simulate))
RESULTS := $(or $(LORAFA_RESULTS_DIR),results)/$(SCALE)

.PHONY: help venv test demo small small-grids small-llm small-llm-seeds small-llm-lr-search dry-run bench-layer gpu-check base-models tables figures clean-venv \
        table2 table3 table4 table5 table6 table7 fig2 fig3 fig4 fig5 fig6

help:
	@sed -n '2,10p' Makefile

# lorafa is installed editable, so scripts import it from anywhere without touching sys.path;
# its build backend is the venv's own setuptools (torch requires one), so nothing is downloaded.
$(VENV)/.installed: requirements.txt requirements-no-deps.txt pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check $(FIND_LINKS) -r requirements.txt
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps -r requirements-no-deps.txt
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation \
		--check-build-dependencies -e .
	touch $@

venv: $(VENV)/.installed

test: venv
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(PY) -m pytest -q tests

demo: venv
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(PY) experiments/demo.py

# Table 2 (and Figure 4) on MiniLM at each cell's rate chosen by small-grids, with 3 seeds of
# Full-FT, LoRA and LoRA-FA on each task; resumable, finished runs skipped.
small: venv
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(PY) experiments/demo.py --scale small --workers $(WORKERS)

# Table 4 on SmolLM2-135M (the small scale's LLaMA); resumable, finished runs skipped.
small-llm: venv
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(PY) experiments/demo.py --scale small --suite small-llm --workers $(WORKERS)

# Table 4's seeds 1 and 2 for LoRA and LoRA-FA on flan_cot (its seed spread), after small-llm.
small-llm-seeds: venv
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(PY) experiments/demo.py --scale small --suite small-llm-seeds --workers $(WORKERS)

# The learning-rate grids of the small scale (Table 2 per method and task, Tables 6, 7, Figure 6):
# resumable, finished runs skipped, timing in results/small/timing.json.
small-grids: venv
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(PY) experiments/demo.py --scale small --suite small-grids --workers $(WORKERS)

# Not part of `make small-llm`: the learning-rate search behind its rates (experiment table4_lr).
small-llm-lr-search: venv
	for m in lora_fa lora lora_qv full_ft; do $(RUN) experiment=small/table4_lr/$$m || exit 1; done

# The paper-scale path rehearsed without a GPU or the hub (experiments/dry_run.py): each distinct
# model x task x method point of every paper experiment, one step; results/dry-run/summary.csv.
dry-run: venv
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(PY) experiments/dry_run.py $(if $(ONLY),--only $(ONLY),)

bench-layer: venv
	$(PY) benchmarks/bench_layer.py --threads 1 --reps 12

# Table 5's memory points on one CUDA GPU: measured peak beside the simulator's and the paper's;
# results/gpu/gpu_check.{csv,md}. ARGS=--rehearse runs every code path on a CPU with tiny shapes.
gpu-check: venv
	$(PY) benchmarks/gpu_check.py $(ARGS)

base-models: venv
	$(PY) experiments/train_tokenizer.py
	$(PY) experiments/pretrain_tiny.py --model all

tables: venv
	$(PY) -m analysis.tables --scale $(SCALE)

figures: venv
	$(PY) -m analysis.figures --scale $(SCALE)

# Paper scale runs the paper's models (hub or model.path) and needs GPUs; SCALE=mini runs
# the miniature sweeps of conf/experiment/mini/. Finished runs are skipped.
table2: venv
	$(RUN) experiment=$(EXP)table2
	$(if $(EXP),,$(RUN) experiment=table2_large)
	$(if $(filter small,$(SCALE)),$(RUN) experiment=small/table2_seeds && $(RUN) experiment=small/grids/table2 \
		&& $(RUN) experiment=small/grids/table2_full_ft)
	$(PY) -m analysis.tables --scale $(SCALE) --only table2
table3: venv
	$(RUN) experiment=$(EXP)table3
	$(if $(EXP),,$(RUN) experiment=table3_base && $(RUN) experiment=table3_large)
	$(PY) -m analysis.tables --scale $(SCALE) --only table3
table4: venv
	$(RUN) experiment=$(EXP)table4_base
	$(RUN) experiment=$(EXP)table4
	$(if $(filter small,$(SCALE)),$(RUN) experiment=small/table4_seeds)
	$(PY) -m analysis.tables --scale $(SCALE) --only table4
table6 table7: venv
	$(RUN) experiment=$(EXP)$(GRID)$@
	$(PY) -m analysis.tables --scale $(SCALE) --only $@
fig4: venv
	$(RUN) experiment=$(EXP)$@
	$(PY) -m analysis.figures --scale $(SCALE) --only $@
fig6: venv
	$(RUN) experiment=$(EXP)$(GRID)$@
	$(PY) -m analysis.figures --scale $(SCALE) --only $@
# Memory: simulated (BACKEND=simulate, any machine) or measured (BACKEND=cuda, a GPU).
table5: venv
	$(MEMORY) experiment=table5 results_dir=$(RESULTS)
	$(PY) -m analysis.tables --scale $(SCALE) --only table5
fig2: venv
	$(MEMORY) experiment=fig2a,fig2b,fig2c results_dir=$(RESULTS)
	$(PY) -m analysis.figures --scale $(SCALE) --only fig2a --only fig2b --only fig2c
fig3 fig5: venv
	$(MEMORY) experiment=$@ results_dir=$(RESULTS)
	$(PY) -m analysis.figures --scale $(SCALE) --only $@

clean-venv:
	rm -rf $(VENV)
