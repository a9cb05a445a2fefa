# The two commands that do all the set-up on a fresh machine:
#   make demo   create .venv, install the tool, run it on the shipped example
#   make test   create .venv, install the tool non-editable with the test and training extras, run the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
OUT ?= demo-output

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

demo: $(BIN)/python
	$(BIN)/pip install --quiet .
	$(BIN)/rationale import mind2web examples/mind2web/raw_shopping_sample.json -o $(OUT)/records.jsonl
	$(BIN)/rationale validate $(OUT)/records.jsonl

# torch first, from the pinned CPU build: anything that depends on torch must find it installed,
# or pip pulls a multi-GB CUDA build. Then the package itself, non-editable, as users get it.
test: $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet ".[dev,train]"
	RATIONALE_TEST_INSTALLED=1 $(BIN)/pytest $(PYTEST_ARGS)

lint: $(BIN)/python
	$(BIN)/pip install --quiet ruff
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: $(BIN)/python
	$(BIN)/pip install --quiet .
	$(BIN)/python benchmarks/cli_startup.py
	$(BIN)/python benchmarks/reader_scale.py

clean:
	rm -rf $(VENV) $(OUT) build dist
