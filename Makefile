# searchsync: `make demo` runs the product locally, `make test` runs the whole suite.
# Both install what they need into .venv on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# pytest-xdist workers for `make test`: each has its own databases and Redis database
# (tests/conftest.py, tests/settings.py); most tests wait on servers, so 3 beat 2 on 2 cores.
TEST_WORKERS ?= 3

.PHONY: demo test lint typecheck deploy-check check setup-postgres browser e2e bench bench-monitor clean

$(STAMP): requirements.txt requirements-dev.txt
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

setup-postgres:
	scripts/ensure-postgres.sh

# What the end-to-end tests (tests/e2e) need from Debian: chromium, driven by Playwright
# (never a downloaded browser), and a redis-server of their own. apt runs only when one
# is missing.
browser:
	@missing=""; \
	test -x /usr/bin/chromium || missing="chromium"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	if [ -n "$$missing" ]; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
	fi

demo: $(STAMP) setup-postgres
	$(PY) scripts/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: $(STAMP)
	$(VENV)/bin/mypy .

# `check --deploy` passes with the documented production environment (docs/production.env
# and a generated key) and fails without it. No database needed: plain env -i keeps out
# whatever the caller's shell has set.
deploy-check: $(STAMP)
	env -i PATH="$$PATH" $$(grep -v '^#' docs/production.env | xargs) \
		SECRET_KEY=$$($(PY) -c 'import secrets; print(secrets.token_urlsafe(50))') \
		$(PY) manage.py check --deploy --fail-level WARNING
	@if env -i PATH="$$PATH" $(PY) manage.py check --deploy --fail-level WARNING >/dev/null 2>&1; then \
		echo "check --deploy passed without the production environment"; exit 1; \
	else echo "check --deploy fails without the production environment, as it should"; fi

test: $(STAMP) setup-postgres browser lint typecheck deploy-check
	$(VENV)/bin/pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile

# The live monitor in a real browser (also part of `make test`); screenshots in artifacts/e2e/.
e2e: $(STAMP) setup-postgres browser
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/e2e

bench: $(STAMP) setup-postgres
	$(PY) bench/run.py

# Sync throughput with five live-monitor clients connected versus none (docs/benchmarks.md).
bench-monitor: $(STAMP) setup-postgres browser
	$(PY) bench/monitor.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .grimp_cache .import_linter_cache artifacts .demo
