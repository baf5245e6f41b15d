# Two entry points, each setting itself up on a fresh machine:
#   make demo   — create .venv, install smtpsubmit with its CLI extra, run `smtpsubmit demo`
#   make test   — system packages for the real-server fixtures, dev install, lint, types, docs,
#                 a 60 s fuzzing run, then the whole suite (its summary is the last line)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
CLI_STAMP := $(VENV)/.installed-cli

.PHONY: demo test lint types docs pytest system-deps fuzz bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP) $(CLI_STAMP)

$(CLI_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[cli]'
	touch $(CLI_STAMP)

demo: $(CLI_STAMP)
	$(BIN)/smtpsubmit demo

system-deps:
	@if [ "$$(id -u)" = 0 ]; then bash scripts/install-system-deps.sh; \
	else sudo bash scripts/install-system-deps.sh; fi

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples fuzz
	$(BIN)/ruff format --check src tests bench examples fuzz

types: $(STAMP)
	$(BIN)/mypy

# No --quiet: it sets mkdocs' log level to ERROR, so --strict never sees a warning and
# cannot fail. NO_MKDOCS_2_WARNING only hides mkdocs-material's end-of-life banner, which
# is printed, not logged, and fails nothing (tests/test_docs_build.py checks all three).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d site

pytest: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider

test: system-deps lint types docs fuzz pytest

fuzz: $(STAMP)
	$(BIN)/python -m fuzz --seconds 60

bench: $(STAMP) system-deps
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
