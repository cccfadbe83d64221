# Development entry points. Only Python is needed: everything else goes into .venv.
#   make demo                     run the example project (SQLite, local master key)
#   make test [ARGS="-k crypto"]  SQLite + PostgreSQL + MariaDB + OpenBao + docs build (scripts/runtests.py)
#   make test-mysql [ARGS=...]    only the MariaDB phase (installs mysqlclient)
#   make bench [ROWS=100000]      re-encryption and read benchmarks (bench/run.py); results in bench/results/
#   make bench DB=mysql           the same on a throwaway MariaDB (installs mysqlclient); default DB=postgresql
#   make bench MODELS=person FILLFACTOR=   a quick run: the real-shaped model only, no fillfactor experiment
#   make lint | docs | clean
# PYTHON picks the interpreter that creates .venv (default python3): make test PYTHON=python3.12
# (after `make clean` if .venv already exists with another one).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=
ROWS ?= 100000
RUNS ?= 3
DB ?= postgresql
MODELS ?= customer,person
FILLFACTOR ?= 100,90,80
PIP := $(BIN)/python -m pip --quiet --disable-pip-version-check

.PHONY: demo test test-mysql bench lint docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Stamps: reinstall only when the packaging metadata changed.
$(VENV)/.installed-base: pyproject.toml | $(BIN)/python
	$(PIP) install -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(PIP) install -e ".[test,docs]"
	@touch $@ $(VENV)/.installed-base

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(PIP) install -e ".[test,bench]"
	@touch $@

demo: $(VENV)/.installed-base
	$(BIN)/python example_project/demo.py

test: $(VENV)/.installed-dev
	$(BIN)/python scripts/runtests.py -- $(ARGS)

test-mysql: $(VENV)/.installed-dev
	$(BIN)/python scripts/runtests.py --only mysql -- $(ARGS)

bench: $(VENV)/.installed-bench
	$(if $(filter mysql,$(DB)),$(BIN)/python scripts/mysql_driver.py)
	$(BIN)/python bench/run.py --database $(DB) --rows $(ROWS) --runs $(RUNS) --models $(MODELS) --fillfactor "$(FILLFACTOR)"

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .

docs: $(VENV)/.installed-dev
	$(BIN)/python -m sphinx -W --keep-going -b html docs docs/_build/html

clean:
	rm -rf $(VENV) docs/_build build dist *.egg-info .pytest_cache .ruff_cache .hypothesis .tox
	rm -f example_project/db.sqlite3
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
