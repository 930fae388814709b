# Every target creates/uses .venv itself, so a fresh clone needs only Python 3.11.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-test

.PHONY: install test test-all demo bench catalog clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e ".[test,plots]"
	touch $(STAMP)

install: $(STAMP)

# JAX on CPU: pin threads so the two cores are shared sanely between pytest workers.
test: $(STAMP)
	XLA_FLAGS="$${XLA_FLAGS:-}" $(BIN)/python -m pytest -q -n 2 --dist loadfile

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m ""

demo: $(STAMP)
	$(BIN)/tokjax reproduce --quick

bench: $(STAMP)
	$(BIN)/tokjax bench

catalog: $(STAMP)
	$(BIN)/tokjax catalog

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
