# hf_finetune: every target works offline on a fresh machine; `install` builds .venv from scratch.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch 2.14.1 + torchvision 0.29.1 lie on this machine's disk; the ranges in pyproject pick them.
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m hf_finetune.demo

test: $(STAMP)
	$(PY) -m pytest -q -rs --durations=15

test-fast: $(STAMP)
	$(PY) -m pytest -q -rs -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check hf_finetune tests bench
	$(VENV)/bin/ruff format --check hf_finetune tests bench

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
