# Comptroller: `make run` for the embedded demo, `make test` for the whole suite,
# `make install-prod` and `make release` for production (docs/deploy.md).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint install install-prod release prod-check migrate seed clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml client/pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --quiet -e ".[dev]" -e ./client
	touch $@

install: $(VENV)/.installed

# The client is tested against the newest anthropic SDK (pinned in pyproject.toml's dev extra) and
# the oldest it supports, kept beside the venv and put first on the path for that run.
OLDEST_ANTHROPIC := 0.71.0
SDK_OLDEST := $(VENV)/sdk/anthropic-$(OLDEST_ANTHROPIC)

$(SDK_OLDEST)/.installed: | $(VENV)/.installed
	$(BIN)/pip install --quiet --no-deps --target $(SDK_OLDEST) anthropic==$(OLDEST_ANTHROPIC) distro==1.9.0
	touch $@

# The gateway is tested through the official TypeScript SDK too (tests/test_gateway_js.py), at the
# version pinned in tests/gateway_js/package-lock.json; npm ci reads npm's cache when it has it.
GATEWAY_JS := tests/gateway_js

$(GATEWAY_JS)/node_modules/.installed: $(GATEWAY_JS)/package-lock.json
	@if command -v npm > /dev/null; then \
		npm ci --prefix $(GATEWAY_JS) --no-audit --no-fund --prefer-offline --loglevel=error && touch $@; \
	else echo "npm not found: the TypeScript SDK tests will skip"; fi

# Local settings for the embedded default: DEBUG on, a random secret and encryption key.
.env: | $(VENV)/.installed
	$(BIN)/python scripts/make_env.py > .env

migrate: install .env
	$(BIN)/python manage.py migrate --noinput

seed: migrate
	$(BIN)/python manage.py seed_demo

run: seed
	@bash scripts/run.sh $(HOST) $(PORT)

# Production: the runtime dependencies only, into the same .venv (the gateway imports the client's
# metering and estimate modules, so the client package is installed too).
install-prod: | $(BIN)/activate
	$(BIN)/pip install --quiet . ./client

# Each deploy, with the production settings in the environment: static files (on every web
# machine), the database schema (once; safe to repeat), then the deployment checks. Start
# the Procfile's processes (or deploy/systemd/) afterwards.
release:
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py check --deploy --fail-level WARNING

# CI's production boot and schemathesis run (.ci/prod-boot), with DATABASE_URL and REDIS_URL
# set; run it after changing an API: an answer the schema does not describe fails it.
prod-check: install
	bash .ci/prod-boot

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy governance budgets usage gateway
	$(BIN)/mypy --config-file client/pyproject.toml client/comptroller_client client/typing_check.py

test: lint $(SDK_OLDEST)/.installed $(GATEWAY_JS)/node_modules/.installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	PYTHONPATH=$(SDK_OLDEST) $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_client_e2e.py
	@# The model-based money test runs on both databases: SQLite's locked transaction too, not only PostgreSQL's statements.
	@if [ -n "$$DATABASE_URL" ]; then env -u DATABASE_URL -u REDIS_URL $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_money_model.py; fi

clean:
	rm -rf var staticfiles .pytest_cache
