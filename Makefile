PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test run lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=24"
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

test: install
	$(BIN)/ruff check app tests benchmarks scripts
	$(BIN)/pytest -q

run: install
	$(BIN)/sketchreid db upgrade
	$(BIN)/sketchreid serve

lint: install
	$(BIN)/ruff check app tests benchmarks scripts
	$(BIN)/mypy app

clean:
	rm -rf $(VENV) var
