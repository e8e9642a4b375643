# The two set-up commands the README promises: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench fuzz screenshots audit constraints clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ingestor demo --state-dir .demo-state

test: $(STAMP)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check ingestor tests bench docs fuzz
	$(BIN)/ruff format --check ingestor tests bench docs fuzz
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[bench]'
	$(BIN)/python bench/parse_bench.py
	$(BIN)/python bench/service_bench.py
	$(BIN)/python bench/sftp_bench.py
	$(BIN)/python bench/bound_bench.py
	$(BIN)/python bench/sdk_bench.py
	$(BIN)/python bench/many_files_bench.py
	$(BIN)/python bench/startup_bench.py
	$(BIN)/python bench/fleet_bench.py

# Coverage-guided fuzzing of the parsers for FUZZ_SECONDS (the corpus is kept in .fuzz-corpus/).
FUZZ_SECONDS ?= 300
fuzz: $(STAMP)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[fuzz]'
	mkdir -p .fuzz-corpus
	$(BIN)/python fuzz/fuzz_parsers.py -max_total_time=$(FUZZ_SECONDS) .fuzz-corpus

screenshots: demo
	$(BIN)/python docs/screenshots.py .demo-state/outbox --out docs/sample-email.png

# Known vulnerabilities in the pinned dependencies (needs pypi.org's JSON API or OSV).
audit: $(STAMP)
	$(BIN)/pip install --quiet -c constraints.txt pip-audit
	$(BIN)/pip-audit -r constraints.txt --progress-spinner off --strict  # a package it cannot check fails the audit

constraints:
	rm -rf .venv-constraints
	$(PYTHON) -m venv .venv-constraints
	.venv-constraints/bin/pip install --quiet -e '.[dev]' pip-audit
	{ echo "# Exact versions CI and make install (pip -c). Regenerate after changing pyproject.toml:"; \
	  echo "#   make constraints"; \
	  .venv-constraints/bin/pip freeze --exclude-editable | grep -v '^-e\|^ingestor\|^pip=='; } > constraints.txt
	rm -rf .venv-constraints

clean:
	rm -rf $(VENV) .demo-state .pytest_cache .mypy_cache .ruff_cache
