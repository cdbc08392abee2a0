# make demo: train baseline / DDM / reweighting on biased digits, evaluate, print the table.
# make test: the test suite. Both build .venv on first use, from the lock (requirements.lock).
# make lock: re-resolve pyproject's ranges in a throwaway venv and write the exact versions to requirements.lock.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
EXTRAS  := dev,sd,faces

.PHONY: demo test install lock clean

$(STAMP): pyproject.toml requirements.lock
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/fairdiff demo --out runs/demo --overwrite

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest tests

lock:
	rm -rf .lock-venv
	$(PY) -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q --upgrade pip
	.lock-venv/bin/python -m pip install -q torch==2.13.0
	.lock-venv/bin/python -m pip install -q -e '.[$(EXTRAS)]'
	( echo "# Exact versions of everything \`make\` installs (pip format). Refresh with \`make lock\`; never edit by hand."; \
	  echo "# torch is the CPU build that \`pip install torch==2.13.0\` takes from this machine's disk."; \
	  .lock-venv/bin/python -m pip freeze --exclude-editable | sed 's/+cpu$$//' ) > requirements.lock
	rm -rf .lock-venv

clean:
	rm -rf runs .pytest_cache
