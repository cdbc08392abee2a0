# make demo: train baseline / DDM / reweighting on biased digits, evaluate, print the table.
# make test: the test suite. Both build .venv on first use.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,sd]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/fairdiff demo --out runs/demo --overwrite

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest tests

clean:
	rm -rf runs .pytest_cache
