# The two set-up commands the README promises: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench screenshots clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ingestor demo --drop sample_drop --state-dir .demo-state

test: $(STAMP)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check ingestor tests bench docs
	$(BIN)/ruff format --check ingestor tests bench docs
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/parse_bench.py
	$(BIN)/python bench/service_bench.py
	$(BIN)/python bench/sftp_bench.py

screenshots: demo
	$(BIN)/python docs/screenshots.py .demo-state/outbox --out docs/sample-email.png

clean:
	rm -rf $(VENV) .demo-state .pytest_cache .mypy_cache .ruff_cache
