# symprep: `make demo` (set up + run the main job on the demo data), `make test` (set up + tests).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= $(shell nproc)
DEMO_SIZE ?= demo
DEMO_BIDS := demo/bids

.PHONY: install demo demo-data test test-fast test-cluster lint format clean help

help:
	@echo "make install   create .venv (Python 3.11) and install symprep with pinned dependencies"
	@echo "make demo      install, generate the demo dataset, run the whole Snakemake workflow"
	@echo "make test      install (with test extras) and run the test suite"
	@echo "make lint      ruff, snakefmt --check, snakemake --lint"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel

# torch: the CPU 2.13 wheel (it lies on this machine's disk); constraints.txt pins the rest
$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet "torch==2.13.*"
	$(BIN)/pip install --quiet -c constraints.txt -e ".[test,cluster]"
	touch $(STAMP)

install: $(STAMP)

$(DEMO_BIDS)/dataset_description.json: | $(STAMP)
	$(BIN)/symprep demo-data $(DEMO_BIDS) --size $(DEMO_SIZE) --seed 0

demo-data: $(DEMO_BIDS)/dataset_description.json

demo: install demo-data
	$(BIN)/snakemake --snakefile Snakefile --configfile configs/demo.yaml \
		--cores $(CORES) --keep-going --rerun-incomplete --printshellcmds
	@echo "Outputs: demo/derivatives (per-subject derivatives, logs/, group/)"

test: install
	$(BIN)/python -m pytest -q --timeout=900 -m "not cluster"

# a single-node SLURM on localhost (Debian packages), the tiny demo through it, then stop it
test-cluster: install
	bash tests/cluster/slurm_up.sh
	$(BIN)/python -m pytest -q --timeout=1800 -m cluster tests/cluster; status=$$?; \
		bash tests/cluster/slurm_down.sh; exit $$status

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not cluster"

lint: install
	$(BIN)/ruff check pipeline tests benchmarks
	$(BIN)/snakefmt --check Snakefile workflows
	$(BIN)/snakemake --lint --configfile configs/demo.yaml --snakefile Snakefile

format: install
	$(BIN)/ruff format pipeline tests benchmarks
	$(BIN)/snakefmt Snakefile workflows

clean:
	rm -rf demo .snakemake
