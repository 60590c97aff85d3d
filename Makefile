# threadsup developer tasks. Run `make help` for the list.
#
# Everything runs from a virtual environment in .venv that this Makefile creates with the
# machine's python3 and fills with threadsup (editable, with its prometheus extra) and the
# development tools of pyproject.toml's dependency groups, at the versions pinned there, which
# tox and CI install too. It re-installs by itself whenever setup.cfg, setup.py, pyproject.toml
# or this Makefile change (stamp file .venv/.installed), so `make demo` and `make test` work on
# a fresh clone with nothing but python3.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The dependency groups (pyproject.toml) that .venv gets: a new group joins by its name here.
GROUPS ?= test lint dev docs
# pip reads dependency groups (`--group`) from 25.1 on; a venv starts with its Python's bundled
# pip (23.2 for 3.11), so the venv's pip is brought to this one first. 26.0.1 is the last for 3.9.
PIP_VERSION := 26.0.1
PIP_INSTALL := -m pip install --quiet --progress-bar off

# make demo DURATION=10      -> python -m threadsup demo --duration 10
DURATION ?=
# make test PYTEST_ARGS='-k backoff -x'   (test-all and sdist-test take them too)
PYTEST_ARGS ?=
# make bench BENCH_ARGS=--quick
BENCH_ARGS ?=
# make soak SOAK_ARGS='--seconds 20'
SOAK_ARGS ?=
# make tox TOX_ENVS=py39,lint
TOX_ENVS ?= py39,py310,py311,py312,py313,lint
# make tox TOX_ARGS='-- -x'   (extra arguments for `tox run`; after `--` they go to pytest)
TOX_ARGS ?=

# pyenv's shims only expose the global version, so `make tox` puts the bin folder of every
# installed pyenv version first on PATH, where tox finds python3.9 ... python3.13.
PYENV_ROOT ?= $(shell pyenv root 2>/dev/null || echo "$$HOME/.pyenv")
empty :=
space := $(empty) $(empty)
PYENV_BINS = $(subst $(space),:,$(strip $(sort $(wildcard $(PYENV_ROOT)/versions/*/bin))))
TOX_PATH = $(if $(PYENV_BINS),$(PYENV_BINS):)$(PATH)

.PHONY: help venv demo test test-all lint docs bench soak screenshot format tox dist \
	sdist-test clean distclean

help: ## list the targets
	@echo "threadsup: make TARGET"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## /  \1\t/' | expand -t 14
	@echo "variables: DURATION=SECONDS (demo), PYTEST_ARGS=... (test), TOX_ENVS=py39,lint TOX_ARGS=... (tox),"
	@echo "           GROUPS='$(GROUPS)' (the dependency groups of .venv)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python setup.cfg setup.py pyproject.toml Makefile
	$(BIN)/python $(PIP_INSTALL) pip==$(PIP_VERSION)
	$(BIN)/python $(PIP_INSTALL) -e '.[prometheus]' $(addprefix --group ,$(GROUPS))
	@touch $@

venv: $(STAMP) ## create .venv: threadsup editable, the pinned tools of the GROUPS

demo: $(STAMP) ## run the demo tree until Ctrl-C (or DURATION=SECONDS)
	$(BIN)/python -m threadsup demo $(if $(strip $(DURATION)),--duration $(strip $(DURATION)))

# The tests marked slow (the model test, the soak, the benchmarks' quick runs, storms of
# thousands of threads, tests that wait out real timeouts) take from one to tens of seconds each:
# `make test` leaves them out for a quick answer while working; CI runs them all (tox, make
# sdist-test), as does test-all. The tests left wait (on timers, threads, subprocesses) far more
# than they compute, so 4 xdist workers on a 2-core machine overlap their waits: about 40 s
# against 60 s with the 2 workers of pyproject.toml, which the slow tests' storms keep.
TEST_WORKERS ?= 4
test: $(STAMP) ## run the test suite but for the tests marked slow (under a minute)
	$(BIN)/python -m pytest -m "not slow" -n $(TEST_WORKERS) $(PYTEST_ARGS)

test-all: $(STAMP) ## run the whole test suite, the slow tests too (some minutes)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# All three checks run, so one pass reports every problem; the target fails if any of them did.
lint: $(STAMP) ## ruff check, ruff format --check, mypy (strict, for Python 3.9)
	@rc=0; \
	for check in "ruff check ." "ruff format --check ." "mypy"; do \
		echo "$(BIN)/$$check"; $(BIN)/$$check || rc=1; \
	done; \
	exit $$rc

# A fresh build (-E) every time: Sphinx re-reads only changed pages, and a warning of an
# unchanged page would otherwise pass unseen. -n: every reference must resolve.
docs: $(STAMP) ## build the documentation site into docs/_build/html; any warning fails it
	$(BIN)/sphinx-build -E -n -W --keep-going -b html docs docs/_build/html

# make bench BENCH_ARGS='--quick --json bench.json'
bench: $(STAMP) ## run the benchmarks: threadsup beside the bare-thread floor
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

# make soak SOAK_ARGS='--seconds 20 --json soak.json'; SOAK_MODEL=0 skips the model test's
# long profile (300 examples of up to 60 steps on trees of up to 30 nodes: some minutes).
SOAK_MODEL ?= 1
soak: $(STAMP) ## chaos soak (1,000 runnables failing at random, 60 s), then the long model test
	$(BIN)/python -m benchmarks.soak $(SOAK_ARGS)
	@if [ "$(SOAK_MODEL)" != 0 ]; then \
		echo "THREADSUP_SOAK=1 $(BIN)/python -m pytest tests/test_model.py -n 0 -q"; \
		THREADSUP_SOAK=1 $(BIN)/python -m pytest tests/test_model.py -n 0 -q; \
	fi

# Needs Chromium (CHROMIUM=/path/to/chrome to pick one); commit the PNG it writes.
screenshot: $(STAMP) ## write docs/status.png: the status page of a demo tree, in headless Chromium
	$(BIN)/python docs/screenshot.py

format: $(STAMP) ## apply ruff's formatter and safe fixes
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# build/ is removed first: setuptools never prunes it, and a module deleted from threadsup/ would
# otherwise still ship in the wheel that tox tests.
tox: $(STAMP) ## run the suite on Python 3.9 to 3.13 (pyenv) and the lint env, one after another
	rm -rf build
	PATH="$(TOX_PATH)" $(BIN)/tox run -e $(TOX_ENVS) $(TOX_ARGS)

# build/ is removed for the reason above; the wheel is built from the sdist, as pip would.
dist: $(STAMP) ## build the sdist and the wheel into dist/ and check them with twine --strict
	rm -rf build dist
	$(BIN)/python -m build --outdir dist .
	$(BIN)/twine check --strict dist/*

# What a packager does with the sdist: unpack it, install it (not editable) with the test group
# it carries, and run the whole suite from the unpacked tree against the installed package: its
# threadsup/ is removed once installed, so that no test (nor a subprocess a test starts with the
# tree on its PYTHONPATH) imports the unpacked sources instead; the pytest script, unlike
# `python -m pytest`, does not put the tree on sys.path either.
# Everything happens in a temporary folder, removed afterwards.
sdist-test: $(STAMP) ## install the sdist in a temporary venv, run every test from its tree
	@set -euo pipefail; \
	tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	set -x; \
	$(BIN)/python -m build --sdist --outdir "$$tmp" .; \
	tar -xzf "$$tmp"/threadsup-*.tar.gz -C "$$tmp"; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/python" $(PIP_INSTALL) pip==$(PIP_VERSION); \
	cd "$$tmp"/threadsup-*/; \
	"$$tmp/venv/bin/python" $(PIP_INSTALL) '.[prometheus]' --group test; \
	rm -rf threadsup; \
	"$$tmp/venv/bin/pytest" -p no:cacheprovider $(PYTEST_ARGS)

clean: ## remove build output and tool caches (keeps .venv and .tox)
	rm -rf build dist .eggs *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis docs/_build
	find . -path ./$(VENV) -prune -o -path ./.tox -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean ## also remove .venv and .tox
	rm -rf $(VENV) .tox
