# Everything a user runs. Each target installs what it needs first: a private uv in
# .tools/, then the locked workspace in .venv/ (both git-ignored).

PYTHON ?= python3
UV_VERSION := 0.13.9
UV := .tools/bin/uv
VENV := .venv
BIN := $(VENV)/bin
PACKAGES := fleet_contracts fleet_runtime fleet_devstack fleet_api fleet_scheduler fleet_agent fleet_cli
PYPROJECTS := pyproject.toml $(wildcard libs/*/pyproject.toml services/*/pyproject.toml)

.PHONY: help setup browser run test lint typecheck pytest bench fmt clean

help:
	@echo "make run    start NATS, PostgreSQL, gateway (127.0.0.1:50809), scheduler, agent"
	@echo "make test   ruff, mypy and the whole pytest suite against real NATS + PostgreSQL"
	@echo "make bench  the benchmarks; writes bench/results/latest.md"

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/python -m pip install --quiet "uv==$(UV_VERSION)"

$(VENV)/.synced: $(UV) uv.lock $(PYPROJECTS)
	$(UV) sync --frozen --all-groups --python $(PYTHON)
	@touch $@

setup: $(VENV)/.synced

# The console's browser tests drive Debian's chromium (Playwright's own browser download
# is not reachable). Installed here when missing and we may (root with apt-get); else the
# tests skip, saying what is missing.
CHROMIUM := /usr/bin/chromium
browser:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium for the browser tests (apt-get)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "apt-get could not install chromium: the browser tests will be skipped"; \
	else \
	  echo "no $(CHROMIUM) and no root apt-get: the browser tests will be skipped"; \
	fi

run: setup
	$(BIN)/python -m fleet_devstack run

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy $(addprefix -p ,$(PACKAGES)) -p bench
	$(BIN)/mypy conftest.py tests

pytest: setup browser
	$(BIN)/pytest

test: lint typecheck pytest

bench: setup
	$(BIN)/python -m bench

fmt: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .tools .mypy_cache .ruff_cache .pytest_cache
