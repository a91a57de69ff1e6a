# Two entry points for a fresh machine: `make quickstart` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# pytest workers: the suite is compile-bound, so one worker per core.
WORKERS ?= 2

.PHONY: install quickstart test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[hf,dev]'
	touch $@

install: $(VENV)/.installed

quickstart: install
	$(PY) -m jaxrl_llm.cli rl --config configs/quickstart.py

test: install
	$(PY) -m pytest -q -n $(WORKERS) --durations=15 tests

clean:
	rm -rf $(VENV) runs .pytest_cache
