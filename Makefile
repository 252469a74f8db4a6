# Freshet: every target sets up what it needs, so `make demo` and `make test`
# work on a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.freshet-installed
OUT ?= bench-out

.PHONY: install demo test lint bench bench-quick clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU wheel of torch first: a bare `torch` requirement could pull a CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,service]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/freshet demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check embedding_store pipeline operators configs
	$(BIN)/mypy

bench: $(STAMP)
	mkdir -p $(OUT)
	$(BIN)/freshet bench store --out $(OUT)/store.json
	$(BIN)/freshet bench sweep --out $(OUT)/sweep.json
	$(BIN)/freshet bench memory --out $(OUT)/memory.json

bench-quick: $(STAMP)
	mkdir -p $(OUT)
	$(BIN)/freshet bench store --quick --out $(OUT)/store-quick.json

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .mypy_cache .ruff_cache
