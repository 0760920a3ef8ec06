# Two commands: `make serve` (run the server on localhost:50051) and `make test` (the whole suite).
# Both create .venv and install the project (CPU torch pinned by constraints-cpu.txt; GPU users run
# `make CONSTRAINTS= ...` after installing their own torch, or pip-install the project directly).

PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints-cpu.txt
HOST ?= 127.0.0.1
PORT ?= 50051
MODEL ?=
PYTEST_ARGS ?=

PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install serve test test-fast lint format typecheck protos check-protos bench clean

$(STAMP): pyproject.toml clients/python/pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e clients/python -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/tdb serve --host $(HOST) --port $(PORT) $(if $(MODEL),--model $(MODEL))

test: $(STAMP) lint
	$(PY) -m pytest $(PYTEST_ARGS)

# Hygiene gates (configured in pyproject.toml): ruff lint + format check; `make format` fixes.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

protos: $(STAMP)
	$(PY) scripts/gen_protos.py

check-protos: $(STAMP)
	$(PY) scripts/gen_protos.py --check

bench: $(STAMP)
	for b in hooks grpc transfer; do $(PY) -m benchmarks $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info clients/python/*.egg-info
