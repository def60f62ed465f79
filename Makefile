# Everyday commands. Every target sets the project up first if needed (a local .venv).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PIP     := $(BIN)/python -m pip
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PKGS := openmpi-bin libopenmpi-dev

.PHONY: setup run test lint format bench stress clean

setup: $(STAMP)

# System packages (Open MPI for the mpirun launcher and RMA transport) when missing, then the venv.
$(STAMP): pyproject.toml
	@if ! command -v mpirun >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1 && { [ "$$(id -u)" = 0 ] || command -v sudo >/dev/null 2>&1; }; then \
	    echo "== installing $(APT_PKGS)"; \
	    $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(APT_PKGS) >/dev/null \
	      || { echo "error: apt-get install $(APT_PKGS) failed" >&2; exit 1; }; \
	  else echo "note: Open MPI not found and cannot be installed here; the mpirun launcher will be unavailable"; fi; \
	fi
	@[ -x $(BIN)/python ] || $(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	@if command -v mpicc >/dev/null 2>&1; then $(PIP) install -q mpi4py || { echo "error: pip install mpi4py failed" >&2; exit 1; }; \
	  else echo "note: mpicc not found; skipping mpi4py"; fi
	@touch $(STAMP)

run: setup
	$(BIN)/swarmbench run

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

bench: setup
	$(BIN)/python -m bench.benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
