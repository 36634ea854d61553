PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test run lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=24"
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

test: install
	$(BIN)/ruff check app tests benchmarks scripts docker
	$(BIN)/pytest -q

# Needs a bundle in $SKETCHREID_MODEL_DIR (default model_store/default); serve says so if not.
run: install
	$(BIN)/sketchreid db upgrade
	$(BIN)/sketchreid serve

lint: install
	$(BIN)/ruff check app tests benchmarks scripts docker
	$(BIN)/mypy app

# Short runs of both benchmarks (well under a minute); see README.md for the full sizes.
bench: install
	$(BIN)/python benchmarks/bench_rerank.py --queries 50 --gallery 500 2000
	$(BIN)/python benchmarks/bench_service.py --galleries 200 1000 --api-items 200 \
		--single 20 --batch 50 --searches 5

clean:
	rm -rf $(VENV) var
