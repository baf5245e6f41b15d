# Two entry points, each setting itself up on a fresh machine:
#   make demo   — create .venv, install smtpsubmit with its CLI extra, run `smtpsubmit demo`
#   make test   — system packages for the real-server fixtures, dev install, lint, types, docs,
#                 a 60 s fuzzing run, then the whole suite (its summary is the last line)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
CLI_STAMP := $(VENV)/.installed-cli
# Django's own backend tests run under the 5.x of the dev venv and, here, under 4.2 LTS.
DJANGO_LTS := .venv-django42
UPSTREAM := $(VENV)/.django-upstream-tests

.PHONY: demo test lint types docs pytest django-lts system-deps fuzz bench clean

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

$(UPSTREAM): $(STAMP) scripts/fetch-django-tests.py
	$(BIN)/python scripts/fetch-django-tests.py
	touch $(UPSTREAM)

$(DJANGO_LTS)/.installed: pyproject.toml
	$(PYTHON) -m venv $(DJANGO_LTS)
	$(DJANGO_LTS)/bin/python -m pip install --quiet --upgrade pip
	$(DJANGO_LTS)/bin/python -m pip install --quiet -e '.[cli]' 'django>=4.2,<4.3' \
		pytest pytest-timeout hypothesis
	$(DJANGO_LTS)/bin/python scripts/fetch-django-tests.py
	touch $@

django-lts: $(DJANGO_LTS)/.installed
	$(DJANGO_LTS)/bin/pytest -q -p no:cacheprovider tests/test_django_backend.py

pytest: $(STAMP) $(UPSTREAM)
	$(BIN)/pytest -q -p no:cacheprovider

test: system-deps lint types docs fuzz django-lts pytest

fuzz: $(STAMP)
	$(BIN)/python -m fuzz --seconds 60

BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	touch $(BENCH_STAMP)

bench: $(STAMP) $(BENCH_STAMP) system-deps
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(DJANGO_LTS) .mypy_cache .ruff_cache .pytest_cache
