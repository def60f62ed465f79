# Everyday commands. Every target sets the project up first if needed (a local .venv).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
HVD_STAMP := $(VENV)/.horovod
KERNELS := $(VENV)/.kernels
# Horovod (optional): auto = build once, and if that fails say so and carry on; required = a failed build fails
# the setup; off = don't build it. Example: make setup HOROVOD=off
HOROVOD ?= auto
PIP     := $(BIN)/python -m pip
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PKGS := openmpi-bin libopenmpi-dev

.PHONY: setup horovod run test lint format bench stress clean reference

setup: $(STAMP) $(HVD_STAMP) $(KERNELS)

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

# Build Horovod against the venv's torch (see tools/build_horovod.sh): a few minutes the first time, seconds once
# its wheel is cached. Only Horovod-based runs need it, so in `auto` mode a failed build prints a WARNING report
# and the outcome lands in .venv/horovod-status.txt (`swarmbench doctor` shows it); the setup goes on either way.
BUILD_HOROVOD = case "$(HOROVOD)" in \
	  off) echo "note: HOROVOD=off: Horovod not built (build it later: make horovod)" ;; \
	  required) tools/build_horovod.sh $(VENV) ;; \
	  auto) tools/build_horovod.sh $(VENV) || echo "note: setup continues without Horovod (retry: make horovod)" ;; \
	  *) echo "error: HOROVOD must be auto, required or off, not '$(HOROVOD)'" >&2; exit 2 ;; \
	esac

# Once per venv: the stamp keeps `make test` from retrying a build that failed; `make horovod` retries it.
$(HVD_STAMP): $(STAMP) tools/build_horovod.sh
	@$(BUILD_HOROVOD)
	@touch $(HVD_STAMP)

# The codec's CPU kernels, compiled once into the checkout's numba cache (bench/core/__pycache__): a first run,
# or mpirun starting several processes at once, then loads them instead of compiling (tens of seconds each).
$(KERNELS): $(STAMP) bench/core/codec.py
	@echo "== compiling the codec's CPU kernels (numba; once per checkout and codec change)"
	$(BIN)/python -m bench.core.codec
	@touch $(KERNELS)

horovod: $(STAMP)
	@$(BUILD_HOROVOD)
	@touch $(HVD_STAMP)

run: setup
	$(BIN)/swarmbench run

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports

format: setup
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

bench: setup
	$(BIN)/python -m bench.diagnostics.benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info

# 100 seeded worlds of 2-8 processes: AD-PSGD and blocking SwarmSGD with lr 0 must conserve the sum of
# models, reach the mean and never deadlock. Prints counts; exit 1 unless every run is ok.
stress: setup
	$(BIN)/python -m bench.diagnostics.stress --runs 100

# Regenerate the CI regression reference (results/reference/ci-smoke/) on purpose, after a change that is meant
# to move the deterministic scaling curves; commit the folder. Needs the simulator (--engine sim). Written next to
# the old one first, so a failed run leaves the old reference in place; logs, the report and TensorBoard files are
# left out.
REF := results/reference/ci-smoke
reference: setup
	rm -rf $(REF).new
	$(BIN)/swarmbench reproduce ci-smoke --out $(REF).new
	rm -rf $(REF).new/logs $(REF).new/report
	find $(REF).new -name tensorboard -type d -prune -exec rm -rf {} +
	rm -rf $(REF) && mv $(REF).new $(REF)
	@echo "reference regenerated: review and commit $(REF)"
