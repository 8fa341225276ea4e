VENV ?= .venv
PY := $(VENV)/bin/python
TC := $(VENV)/bin/toolchain
DEMO ?= demo

.PHONY: setup demo test test-fast bench clean

# The environment is rebuilt when the pinned dependencies change.
$(VENV)/.installed: pyproject.toml scripts/setup-venv.sh
	bash scripts/setup-venv.sh $(VENV)

setup: $(VENV)/.installed

demo: setup
	bash examples/demo.sh $(DEMO)

test: setup
	$(PY) -m pytest -n 2 --timeout 900

test-fast: setup
	$(PY) -m pytest -n 2 -m "not slow"

bench: setup
	$(TC) bench --json bench.json

clean:
	rm -rf $(DEMO) .pytest_cache .hypothesis
