# Stageflow: `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint demo up bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy workflows activities

# The browser tests drive Debian's Chromium (never Playwright's download): installed
# here when missing, which needs root (CI runs as root); otherwise it says what to run.
CHROMIUM := /usr/bin/chromium

$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "the browser tests need Chromium: sudo apt-get install chromium" >&2; exit 2; \
	fi

# Three workers, each test file on one of them (a file's module-wide world stays
# whole): on CI's 2 cores much of a test is waiting (heartbeat timeouts, restarts).
test: $(STAMP) $(CHROMIUM) lint
	$(BIN)/python -m pytest -q -n 3 --dist loadfile

demo: $(STAMP)
	$(BIN)/python -m examples.demo

up: $(STAMP)
	$(BIN)/stageflow up

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
