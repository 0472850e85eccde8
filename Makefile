# Every target creates .venv itself when it is missing, so a fresh clone needs only Python.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo demo-serve test lint bench unit integration faults proof clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# make demo BLNK=1: the books in the Blnk-compatible stand-in (RECON_LEDGER=blnk).
demo: $(STAMP)
	$(BIN)/python -m tests.demo $(if $(BLNK),--blnk,)

# The demo, then the local Stripe server keeps answering (Ctrl-C stops it) so that every
# `recon` command can be tried on the demo data.
demo-serve: $(STAMP)
	$(BIN)/python -m tests.demo --serve

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

# The fault campaign alone (RECON_PROOF_SIZE payments, 48 by default), and at the proof size.
faults: $(STAMP)
	$(BIN)/python -m pytest -m faults -s $(PYTEST_ARGS)

proof: $(STAMP)
	RECON_PROOF_SIZE=$${RECON_PROOF_SIZE:-300} $(BIN)/python -m pytest -m faults -s $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m tests.bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache recon.db
