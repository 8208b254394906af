# Model-lifecycle DAG package: `make run` and `make test` do all set-up themselves.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STATE_DIR ?= .state
GCS_PORT ?= 9023
ML_PORT ?= 8780
STAMP := $(VENV)/.installed-stamp
export PYTHONPATH := $(CURDIR):$(CURDIR)/plugins
export STATE_DIR GCS_PORT ML_PORT

.PHONY: install test lint services stop run airflow bench clean

install: $(STAMP)  ## create/update .venv from requirements.txt (uv, else pip)

$(STAMP): requirements.txt constraints.txt scripts/install.sh
	@bash scripts/install.sh $(VENV)
	@touch $@

lint: install  ## ruff
	$(VENV)/bin/ruff check .

test: install lint  ## install, lint, run the whole test suite
	$(PY) -m pytest $(PYTEST_ARGS)

run: install  ## set up, start the local stack, run model_lifecycle then batch_prediction, summary, stop
	@bash scripts/run.sh

services: install  ## start the GCS emulator and the ml/v1 service in the background
	$(PY) -m include.devstack start

stop:  ## stop everything `make services` / `make airflow` started
	@if [[ -x $(PY) ]]; then $(PY) -m include.devstack stop; fi

bench: install  ## benchmarks: service vs raw TensorFlow, side by side
	$(PY) -m bench.run $(BENCH_ARGS)

clean: stop
	rm -rf $(STATE_DIR)
