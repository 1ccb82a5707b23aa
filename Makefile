# Every target creates the virtual environment it needs; a fresh clone needs nothing else.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run run-kafka test lint bench clean browser

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[kafka,dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/busgate dev

run-kafka: $(STAMP)
	$(BIN)/busgate dev --bus kafka

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy -p busgate

# Two workers (xdist); each test module stays on one worker (loadscope), so a module's stack
# starts once. Session fixtures (brokers, the runner) start once per worker. Modules go out
# in collection order, the long e2e ones first (tests/conftest.py), not by test count.
test: $(STAMP) lint browser
	$(BIN)/python -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder

# Headless Chromium for the browser test of /api/stream (Debian's package; needs root).
browser:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build *.egg-info
