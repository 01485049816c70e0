# Two commands for a fresh Debian/Ubuntu machine with Python 3.11:
#   make demo   set up, then run the whole workflow on the synthetic demo dataset
#   make test   set up, then run the whole test suite (what CI runs)
# Set-up = a virtual environment in .venv, the Python packages, and SoX.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CORES  ?= 2
# The PyTorch release the suite is tested with (CPU wheel here; on Linux x86_64 PyPI serves a
# CUDA build). Another release inside pyproject.toml's bounds: make demo TORCH='torch>=2.4,<3'.
# TORCH is split into pip arguments (each quoted, so '<' and '>' stay), so a wheel index can
# follow: make setup TORCH='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128'
TORCH  ?= torch==2.13.0
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup sox demo report test lint format bench clean

setup: sox $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(foreach word,$(TORCH),'$(word)')
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

sox:
	@command -v sox >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sox; \
	  else \
	    echo "SoX is missing. Install it: 'sudo apt-get install sox' (Debian/Ubuntu)," \
	         "'brew install sox' (macOS) or 'conda install -c conda-forge sox'."; exit 1; \
	  fi; }

demo: setup
	$(BIN)/snakemake --cores $(CORES)
	$(BIN)/snakemake --report results/report.html
	@echo "Done: results/chains/self_verification/{summary,submission}.csv, results/systems.csv, results/report.html"

report: setup
	$(BIN)/snakemake --report results/report.html

# The style gates run first. Tests that need the FSDD recordings read their folder from
# SV_FSDD_DIR and skip without it; the SLURM cluster tests run only with SV_TEST_SLURM=1 (they
# install munge + slurm-wlm with apt-get and write /etc/slurm). .ci/run sets both. The ten
# slowest tests are listed at the end, to see where the 25-minute CI budget goes.
test: setup lint
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=10

# ruff (lint + format) and snakefmt read their settings from pyproject.toml.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check .
	$(BIN)/snakemake --lint

# Rewrites files in place: the formatters' fixes, then the lint gate.
format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
	$(BIN)/snakefmt .

bench: setup
	$(BIN)/python benchmarks/preprocess_throughput.py
	$(BIN)/python benchmarks/training_throughput.py

clean:
	rm -rf results .snakemake
