# Every target creates .venv itself when it is missing, so a fresh clone needs only Python.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench unit integration clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# make demo BLNK=1: the books in the Blnk-compatible stand-in (RECON_LEDGER=blnk).
demo: $(STAMP)
	$(BIN)/python -m tests.demo $(if $(BLNK),--blnk,)

lint: $(STAMP)
	$(BIN)/ruff check worker reconcile ledger tests
	$(BIN)/ruff format --check worker reconcile ledger tests
	$(BIN)/mypy reconcile ledger worker

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m tests.bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache recon.db
