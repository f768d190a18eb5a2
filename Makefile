# Every target creates .venv from requirements.txt first if needed.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# torch's CPU wheel lies on the build machines' disk; elsewhere pip uses the index.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
SCALE ?= paper

.PHONY: help venv test bench-layer clean-venv

help:
	@echo "make demo         reproduce the paper in miniature (CPU, offline)"
	@echo "make test         run the test suite"
	@echo "make bench-layer  saved activations and step time of one adapted linear -> results/bench/layer.csv"

$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check $(FIND_LINKS) -r requirements.txt
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -q tests

bench-layer: venv
	$(PY) benchmarks/bench_layer.py

clean-venv:
	rm -rf $(VENV)
