# Lethe: the two commands a fresh machine needs are `make run` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# The versions this machine has on disk; other ones download gigabytes or fail to import together.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
export LETHE_S3_ENDPOINT ?= 127.0.0.1:9900
export LETHE_S3_PORT ?= 9900
PYTEST_ARGS ?=

.PHONY: venv install run test services browser help docs docs-serve

help:
	@echo "make test  - install what the tests need, start PostgreSQL/Redis/S3 on loopback, run pytest"
	@echo "make run   - the service on embedded defaults (SQLite + blob folder under ./var, in-process worker, demo model)"
	@echo "make docs  - build the documentation site into site/ (strict; benchmark tables from bench/results/)"
	@echo "make docs-serve - serve the documentation with live reload"

$(VENV)/bin/python:
	python3 -m venv $(VENV)

# Re-installs only when the project's dependency list changes.
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q -e '.[test]' $(TORCH_PINS)
	touch $@

venv install: $(VENV)/.installed

services: install
	bash scripts/ensure-services.sh $(VENV)/bin

# Headless Chromium for the dashboard's browser test (Debian's package, driven by Playwright;
# Playwright downloads no browser of its own).
browser:
	@command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

run: install
	$(VENV)/bin/lethe serve

# bench/provenance.py --check lists benchmark results whose code changed since they were
# written (never reruns them: benchmarks are too long for a test run).
test: install services browser
	$(PY) bench/provenance.py --check
	$(PY) -m pytest $(PYTEST_ARGS)

# The documentation site (mkdocs.yml, docs/). Strict: a broken link or an unknown benchmark
# table fails the build. tests/test_docs.py runs the same build in `make test`.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

docs-serve: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve
