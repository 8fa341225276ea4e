VENV ?= .venv
PY := $(VENV)/bin/python
TC := $(VENV)/bin/toolchain
DEMO ?= demo

.PHONY: setup browser lock lint docs demo test test-fast bench clean

# The environment is updated when the pins or the lock change; it holds
# exactly the versions in requirements.lock.
$(VENV)/.installed: pyproject.toml requirements.lock scripts/setup-venv.sh
	bash scripts/setup-venv.sh $(VENV)

setup: $(VENV)/.installed

# The headless browser the report test opens the demo's page in.
browser:
	bash scripts/setup-browser.sh

# Re-resolves pyproject.toml's ranges (every package at its newest version
# within them) in a scratch environment and writes requirements.lock.
lock:
	bash scripts/setup-venv.sh --lock requirements.lock

demo: setup
	bash examples/demo.sh $(DEMO)

# The documentation site into site/: --strict fails on a broken link, anchor
# or API reference. (The variable quiets mkdocs-material's banner about MkDocs 2.)
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -d site

test: setup browser lint docs
	$(PY) -m pytest -n 2 --timeout 900 --hypothesis-profile=ci

lint: setup
	$(VENV)/bin/ruff check toolchain models deploy tests scripts examples docs
	$(VENV)/bin/mypy

test-fast: setup
	$(PY) -m pytest -n 2 -m "not slow" --hypothesis-profile=ci

bench: setup
	$(TC) bench --json bench.json

clean:
	rm -rf $(DEMO) .pytest_cache .hypothesis site dist
