# Every target makes or reuses .venv itself: on a fresh clone `make run` and `make test` need nothing else.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help install run test bench bench-archive lint clean system-deps

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,bench,lint,mysql]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install the package with test/bench/lint extras

run: $(STAMP) ## start relay + webhook on the embedded default (local SQLite archive in data/)
	$(BIN)/outbox-relay run

system-deps: ## PostgreSQL and MariaDB servers, PgBouncer, Node, systemd-analyze, wrk, Prometheus, tmux, faketime for tests and benchmarks (apt, when root)
	@bash scripts/ensure-system-deps.sh

test: $(STAMP) system-deps ## run the test suite against real PostgreSQL and MariaDB servers it starts itself
	$(BIN)/python -m pytest

bench: $(STAMP) system-deps ## benchmarks, each figure beside its baseline (QUICK=1 for a smoke run)
	$(BIN)/python bench/run.py $(if $(QUICK),--quick,)

bench-archive: $(STAMP) system-deps ## search and stats at 100 k, 1 M and 10 M rows (~10 min; QUICK=1: 100 k rows, ~1 min)
	$(BIN)/python bench/archive.py $(if $(QUICK),--quick,)

lint: $(STAMP) ## ruff
	$(BIN)/ruff check outbox_relay tests bench

clean: ## remove .venv, build files and the local data/ directory
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis .ruff_cache data
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
