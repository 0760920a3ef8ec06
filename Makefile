# Two commands: `make serve` (run the server on localhost:50051) and `make test` (the whole suite).
# Both create .venv and install the project: `make serve` what serving needs, `make test` the test
# tools too (CPU torch pinned by constraints-cpu.txt; GPU users run
# `make CONSTRAINTS= ...` after installing their own torch, or pip-install the project directly).

PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints-cpu.txt
HOST ?= 127.0.0.1
PORT ?= 50051
HTTP_PORT ?= 8080
MODEL ?=
PYTEST_ARGS ?=

PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SERVE_STAMP := $(VENV)/.installed-serve

.PHONY: web web-protos install serve test test-fast lint format typecheck protos check-protos bench clean

$(STAMP): pyproject.toml clients/python/pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e clients/python -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# What serving needs and nothing more (no test, lint or browser packages).
$(SERVE_STAMP): pyproject.toml clients/python/pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e clients/python -e .
	touch $(SERVE_STAMP)

# Builds the web app first (`make web`) when the checkout has it and Node.js >= 20 is present;
# without Node it serves gRPC and gRPC-Web, and the page at / says how to build the app.
serve: $(SERVE_STAMP)
	@if [ ! -f clients/web/package.json ]; then :; \
	elif command -v node >/dev/null 2>&1 \
		&& node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)'; then \
		$(MAKE) web || echo "warning: the web app did not build; serving without it"; \
	else \
		echo "note: building the web app needs Node.js >= 20 (then: make web); serving without it"; \
	fi
	@echo "gRPC at $(HOST):$(PORT); web app and gRPC-Web at http://$(HOST):$(HTTP_PORT)/"
	$(VENV)/bin/tdb serve --host $(HOST) --port $(PORT) --http-port $(HTTP_PORT) $(if $(MODEL),--model $(MODEL))

test: $(STAMP) lint typecheck
	$(PY) -m pytest $(PYTEST_ARGS)

# Hygiene gates (configured in pyproject.toml): ruff lint + format check (`make format` fixes) and
# mypy --strict over tdb_core/, adapters/, services/ and clients/python/tdb_client/; `make test`
# runs both first.
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

# The web app (clients/web): pinned npm packages, then a production build into clients/web/dist,
# which `tdb serve --http-port` serves at /. Needs Node.js >= 20 (npm 11).
web:
	cd clients/web && npm ci --no-audit --no-fund && npm run build

# Regenerate the web app's TypeScript stubs from protos/ (needs `npm ci` in clients/web).
web-protos: $(STAMP)
	$(PY) scripts/gen_web_protos.py

