# symprep: `make demo` (set up + run the main job on the demo data), `make test` (set up + tests).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= $(shell nproc)
DEMO_SIZE ?= demo
DEMO_BIDS := demo/bids

.PHONY: install demo demo-data test test-fast test-cluster test-container lint format clean help

help:
	@echo "make install   create .venv (Python 3.11) and install symprep with pinned dependencies"
	@echo "make demo      install, generate the demo dataset, run the whole Snakemake workflow"
	@echo "make test      install (with test extras) and run the test suite"
	@echo "make test-cluster    a single-node SLURM on localhost, the tiny demo through it"
	@echo "make test-container  build the image with podman and run the tiny demo inside it"
	@echo "make lint      ruff, snakefmt --check, snakemake --lint, hadolint"

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

# the test suite and every docstring example of the package (--doctest-modules)
test: install
	$(BIN)/python -m pytest -q --timeout=900 -m "not cluster" tests
	$(BIN)/python -m pytest -q --timeout=300 --doctest-modules pipeline

# a single-node SLURM on localhost (Debian packages), the tiny demo through it, then stop it
test-cluster: install
	bash tests/cluster/slurm_up.sh
	$(BIN)/python -m pytest -q --timeout=1800 -m cluster tests/cluster; status=$$?; \
		bash tests/cluster/slurm_down.sh; exit $$status

# build the image for real with podman (local Debian base when no registry is reachable) and run it
test-container: install
	bash containers/build_and_test.sh

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not cluster"

lint: install
	$(BIN)/ruff check pipeline tests benchmarks
	$(BIN)/snakefmt --check Snakefile workflows
	$(BIN)/hadolint containers/Dockerfile

format: install
	$(BIN)/ruff format pipeline tests benchmarks
	$(BIN)/snakefmt Snakefile workflows

clean:
	rm -rf demo .snakemake
