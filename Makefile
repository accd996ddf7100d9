# Quick start (README): `make demo` trains + evaluates on Fashion-MNIST offline; `make test` runs
# the test suite. Both create .venv on first use and are safe to run again.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/fashion_mnist
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: demo test install

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

$(VENV)/.tests-installed: $(VENV)/.installed requirements-test.txt
	$(PY) -m pip install -q -r requirements-test.txt
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) tools/prepare_data.py fashion_mnist
	$(PY) tools/train.py --config configs/fashion_mnist.py --workdir $(WORKDIR)
	$(PY) tools/evaluate.py --workdir $(WORKDIR)

test: $(VENV)/.tests-installed
	$(PY) -m pytest
