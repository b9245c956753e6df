# ncalab: `make train` runs the quickstart, `make test` runs the test suite; both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch is pinned to the build this project is tested with; it is installed before the package.
TORCH := torch==2.14.1 torchvision==0.29.1
PIP_QUIET := --quiet --disable-pip-version-check

.DEFAULT_GOAL := help
.PHONY: help install train test test-fast lint format clean targets compare bench demo gpu-check
SWEEP ?= $(lastword $(sort $(wildcard outputs/multirun/*)))
GPU_CHECK_OUT ?= $(if $(OUT),$(OUT),outputs/gpu_check/$(shell date +%Y-%m-%d_%H-%M-%S))

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install ncalab (editable, with the dev extra); no-op when done

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_QUIET) --upgrade pip
	$(PY) -m pip install $(PIP_QUIET) $(TORCH)
	$(PY) -m pip install $(PIP_QUIET) -e ".[dev]"
	touch $(STAMP)

train: install ## train the quickstart (small built-in target, < 10 min on a 2-core CPU)
	$(PY) train.py experiment=quickstart $(ARGS)

# One pytest-xdist worker per core. worksteal: each worker starts with half of the tests in order and takes over
# half of what another still has when it runs out, so a few long scenarios do not leave one worker running alone
# at the end (a module-scoped run may then be built in both workers).
TEST_WORKERS ?= auto

test: install ## run the test suite (every test, one worker per core)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal $(ARGS)

test-fast: install ## the unit tests only (tests/unit/; the scenarios of tests/scenarios/ are left out), one worker per core
	$(PY) -m pytest -n $(TEST_WORKERS) tests/unit $(ARGS)

compare: install ## report.html for a sweep: make compare SWEEP=outputs/multirun/<date>_<time> (default: newest)
	$(PY) -m ncalab.compare $(SWEEP)

bench: install ## time training iterations against a plain baseline: make bench ARGS="--sizes 72 --steps 16"
	$(PY) -m ncalab.tools.bench $(ARGS)

gpu-check: install ## on CUDA, < 9 min: bench at 128x128 + the 5 source experiments, short (CPU: tiny); OUT=<dir>
	$(PY) -m ncalab.tools.gpu_check --out $(GPU_CHECK_OUT) $(ARGS)

demo: install ## serve the browser demo on 127.0.0.1:8000 (CKPT=<checkpoint or folder>; default: every shipped model)
	$(PY) -m ncalab.demo serve $(CKPT) $(ARGS)

lint: install ## ruff check + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

targets: install ## redraw the built-in target images
	$(PY) -m ncalab.targets.draw

clean: ## remove caches and the virtual environment (keeps outputs/)
	rm -rf $(VENV) .pytest_cache .ruff_cache src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
