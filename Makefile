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

.PHONY: setup demo test test-fast lint bench bench-quality clean gpu-wheels gpu-data gpu-carry

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1; then extra=".[dev,gpu]"; else extra=".[dev]"; fi; \
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" -e "$$extra"
	rm -f $(VENV)/.installed-*; touch $@

demo: setup
	$(BIN)/python -m routerforge.cli demo

# Lint first (seconds), then the whole suite: what CI runs (.ci/run).
test: lint
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
# The GPU check (bench/gpu_checks.sh) on a machine without network whose Python (3.12) has torch, transformers,
# accelerate, peft, sentence-transformers and scikit-learn but not the packages below: their wheels, fetched
# here (versions = what the test suite runs with). Installed there with --no-deps, so every missing dependency
# is named too. wandb (20 MB, plus its dependencies) is left out: with it the working tree would pass the 64 MiB
# a device machine takes; the check runs with tracking.report_to=none.
GPU_WHEELS ?= datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 fsspec==2026.9.0 trl==1.16.0 omegaconf==2.4.0 \
	faiss-cpu==1.15.1
GPU_WHEEL_PLATFORMS := $(foreach n,2_28 2_27 2_17,--platform manylinux_$(n)_x86_64) --platform manylinux2014_x86_64
GPU_CARRY_MAX_MIB ?= 63

gpu-wheels:
	rm -rf .whl && mkdir -p .whl
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		$(GPU_WHEEL_PLATFORMS) -d .whl $(GPU_WHEELS)
	@total=$$( (git ls-files -z | du --files0-from=- -cb | tail -1 | cut -f1; du -sb .whl | cut -f1; \
		du -sb .gpu-data 2>/dev/null | cut -f1) | paste -sd+ | bc); \
	echo "working tree + .whl + .gpu-data: $$((total / 1048576)) MiB (limit $(GPU_CARRY_MAX_MIB) MiB)"; \
	test $$total -le $$(( $(GPU_CARRY_MAX_MIB) * 1048576 ))

# The tiny prepared datasets the check trains on (MF and cluster need MiniLM embeddings, made here).
gpu-data: setup
	$(BIN)/python bench/gpu_checks_data.py .gpu-data

gpu-carry: gpu-data gpu-wheels

clean:
	rm -rf data/processed data/cache checkpoints/*/ wandb runs
