# Comptroller: `make run` for the embedded demo, `make test` for the whole suite.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint install migrate seed clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml client/pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --quiet -e ".[dev]" -e ./client
	touch $@

install: $(VENV)/.installed

# Local settings for the embedded default: DEBUG on, a random secret and encryption key.
.env: | $(VENV)/.installed
	$(BIN)/python scripts/make_env.py > .env

migrate: install .env
	$(BIN)/python manage.py migrate --noinput

seed: migrate
	$(BIN)/python manage.py seed_demo

run: seed
	@bash scripts/run.sh $(HOST) $(PORT)

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy governance budgets usage

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf var staticfiles .pytest_cache
