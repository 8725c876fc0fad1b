# The two set-up commands (see README.md):
#   make demo   run the examples on the embedded default (SQLite, in-process worker)
#   make test   install what the tests need, start the servers, run the whole suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# Test worker processes (pytest-xdist). The tests mostly wait on workers, timers and
# servers, so more processes than cores pay; tests/conftest.py says how files are grouped.
TEST_WORKERS ?= 3

.PHONY: docs demo test lint typecheck unit bench soak clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m examples.demo

test: $(VENV)/.installed
	bash scripts/install-servers.sh
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(PY) -m mkdocs build --strict --quiet
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup

# The documentation site (docs/, mkdocs.yml) into .site/, offline; warnings are errors.
docs: $(VENV)/.installed
	$(PY) -m mkdocs build --strict

lint: $(VENV)/.installed
	$(PY) -m ruff check . && $(PY) -m ruff format --check . && $(PY) -m mypy

unit: $(VENV)/.installed
	$(PY) -m pytest tests/engine -q

bench: $(VENV)/.installed
	bash scripts/install-servers.sh
	$(PY) bench/throughput.py

# The fault soak (tests/chaos/soak.py) for DURATION seconds: make soak DURATION=3600
DURATION ?= 600
soak: $(VENV)/.installed
	bash scripts/install-servers.sh
	$(PY) bench/chaos.py --duration $(DURATION)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache celery_durable.sqlite3* bank.sqlite3*
