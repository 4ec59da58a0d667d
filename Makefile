# A fresh machine in two commands:
#   make demo   build the project's virtual environment (.venv), the embedded example, and train on it
#   make test   the same environment plus the test requirements, then the test suite
#
# Variables (make demo VAR=value):
#   PYTHON       the interpreter that creates .venv (3.11 or newer)             default: python3
#   TORCH        the torch requirement installed first                           default: see below
#   TORCH_INDEX  a package index for torch alone, e.g. the CPU-only builds at
#                https://download.pytorch.org/whl/cpu                            default: none (PyPI)
#   EPOCHS       the demo's training epochs                                      default: 30
#
# TORCH defaults to a CUDA build (any torch that requirements.txt accepts) when nvidia-smi is found, and
# to torch==2.13.0 otherwise: on a machine without a GPU the pinned version is the CPU build when it
# is in a local wheel folder; from PyPI on Linux add TORCH_INDEX=https://download.pytorch.org/whl/cpu,
# else pip downloads the CUDA build (several GB) that cannot be used anyway.
#
# .venv is reused while requirements*.txt, TORCH and TORCH_INDEX are unchanged: a stamp file in .venv
# holds a hash of them, and pip runs again only when it differs.

PYTHON ?= python3
VENV ?= .venv
EPOCHS ?= 30
TORCH_INDEX ?=
comma := ,
HAVE_NVIDIA_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo yes)
TORCH ?= $(if $(HAVE_NVIDIA_GPU),torch>=2.4$(comma)<2.14,torch==2.13.0)

VENV_PYTHON := $(VENV)/bin/python
PIP := $(VENV_PYTHON) -m pip
# Prints the SHA-256 of its standard input: the stamp's content (Python, so it needs no sha256sum/shasum).
HASH := $(VENV_PYTHON) -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())'
# Training on a CPU shared with other jobs: OpenMP threads that busy-wait slow small models 10x or more.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: help demo test results venv venv-dev

# Checked when make reads this file, so that an unusable interpreter is one line, not a failed recipe.
ifneq ($(filter-out help,$(or $(MAKECMDGOALS),help)),)
ifneq ($(shell $(PYTHON) -c 'import sys; print(sys.version_info >= (3, 11))' 2>/dev/null),True)
$(error $(PYTHON) is missing or older than Python 3.11; name another one, e.g. make $(firstword $(MAKECMDGOALS)) PYTHON=python3.12)
endif
endif

help:
	@echo "make demo   install into $(VENV), build the embedded example and train DisCoM-KD on it"
	@echo "make test   install into $(VENV) with the test requirements and run the test suite"
	@echo "make results  re-derive docs/results.md's tables (hours on a CPU)"
	@echo "variables:  PYTHON=$(PYTHON)  TORCH='$(TORCH)'  TORCH_INDEX='$(TORCH_INDEX)'  EPOCHS=$(EPOCHS)"

venv:
	@test -x $(VENV_PYTHON) || { echo "creating $(VENV) with $$($(PYTHON) --version)"; $(PYTHON) -m venv $(VENV); }
	@key=$$( { echo "$(TORCH) $(TORCH_INDEX)"; cat requirements.txt pyproject.toml; } | $(HASH) ); \
	if [ "$$(cat $(VENV)/.stamp-run 2>/dev/null)" != "$$key" ]; then \
	  echo "installing $(TORCH)$(if $(TORCH_INDEX), from $(TORCH_INDEX)) and requirements.txt into $(VENV)"; \
	  rm -f $(VENV)/.stamp-run; \
	  $(PIP) install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)" && \
	  $(PIP) install --quiet -r requirements.txt && \
	  $(PIP) install --quiet --no-deps -e . && \
	  echo "$$key" > $(VENV)/.stamp-run; \
	fi; test -f $(VENV)/.stamp-run

venv-dev: venv
	@key=$$( cat $(VENV)/.stamp-run requirements-dev.txt | $(HASH) ); \
	if [ "$$(cat $(VENV)/.stamp-dev 2>/dev/null)" != "$$key" ]; then \
	  echo "installing requirements-dev.txt into $(VENV)"; \
	  $(PIP) install --quiet -r requirements-dev.txt && echo "$$key" > $(VENV)/.stamp-dev; \
	fi; test -f $(VENV)/.stamp-dev

# The demo retrains from scratch every time (--overwrite replaces its own earlier run folder,
# example_digits/DisCoM-KD_IMAGE_PROJ); the example itself is built once.
demo: venv
	@test -f example_digits/labels.npy || $(VENV_PYTHON) make_example.py example_digits
	$(VENV_PYTHON) main_DisCoM-KD.py example_digits IMAGE PROJ --epochs $(EPOCHS) --augment-first none --overwrite

test: venv-dev
	$(VENV_PYTHON) -m pytest -q

# docs/results.md's tables, re-derived with today's code (about 4 h 45 min on 2 CPU cores)
results: venv
	PYTHON=$(VENV_PYTHON) bash tools/results.sh
