# RouterForge: every target installs what it needs first (a venv in .venv), so `make demo` and
# `make test` work on a fresh machine.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch: the CPU wheel where there is no NVIDIA driver, the default (CUDA) build where there is one.
TORCH_VERSION ?= 2.13.0
TORCH_SPEC := torch==$(TORCH_VERSION)
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: setup demo test test-fast lint bench bench-quality clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1; then extra=".[dev,gpu]"; else extra=".[dev]"; fi; \
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" -e "$$extra"
	rm -f $(VENV)/.installed-*; touch $@

demo: setup
	$(BIN)/python -m routerforge.cli demo

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check routerforge data_prep training tests bench

bench: setup
	$(BIN)/python bench/bench_prep_scale.py
	$(BIN)/python bench/bench_embed.py

# Router quality on the bundled real sets: every family vs simple baselines and RouteLLM's MF code
# (about an hour on 2 cores from a cold embedding cache; see the README's Benchmarks section).
bench-quality: setup
	$(BIN)/python bench/bench_quality.py

clean:
	rm -rf data/processed data/cache checkpoints/*/ wandb runs
