# Two commands do everything on a fresh machine with only Python and pip:
#   make demo   - set up .venv, run the demo job on the built-in simulator, write its report page
#   make test   - set up .venv, then lint, type-check and run the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint clean

install: $(VENV)/.installed-test

# the demo needs the package and its report extra; the tests also need the test tools (pytest, ruff, mypy, datasets)
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[report]'
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/batchrun run jobs/demo.toml
	$(BIN)/batchrun report outputs/demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

clean:
	rm -rf $(VENV) outputs/demo
