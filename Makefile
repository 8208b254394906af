# Model-lifecycle DAG package: `make run` and `make test` do all set-up themselves.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STATE_DIR ?= .state
GCS_PORT ?= 9023
ML_PORT ?= 8780
AIRFLOW_PORT ?= 8080
STAMP := $(VENV)/.installed-stamp
TOOLS_DIR ?= $(STATE_DIR)/tools
export PYTHONPATH := $(CURDIR):$(CURDIR)/plugins
export STATE_DIR GCS_PORT ML_PORT
export MITMDUMP := $(abspath $(TOOLS_DIR))/mitmproxy/bin/mitmdump

.PHONY: install trainer-user tools test lint browser loadgen database loadbalancer services stop run airflow bench clean

install: $(STAMP) trainer-user  ## create/update .venv from requirements.txt (uv, else pip)

trainer-user:  ## as root: the unprivileged user training jobs run as (ml-trainer), created once
	@if [[ $$(id -u) == 0 ]] && ! id -u "$${ML_ENGINE_TRAINER_USER:-ml-trainer}" >/dev/null 2>&1; then \
	  echo "install: creating user $${ML_ENGINE_TRAINER_USER:-ml-trainer} for training jobs"; \
	  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
	    "$${ML_ENGINE_TRAINER_USER:-ml-trainer}"; \
	fi

$(STAMP): requirements.txt constraints.txt scripts/install.sh
	@bash scripts/install.sh $(VENV)
	@touch $@

tools: install  ## test tools in their own venvs (mitmproxy: the flaky-GCS proxy of the fault test)
	@bash scripts/install_tools.sh $(VENV) $(TOOLS_DIR)/mitmproxy

lint: install  ## ruff
	$(VENV)/bin/ruff check .

test: install lint browser loadgen database loadbalancer tools  ## install, lint, run the whole test suite (service tests on SQLite, then on PostgreSQL)
	$(PY) -m pytest $(PYTEST_ARGS)
	$(PY) -m pytest tests/include/local_platform --database postgresql $(PYTEST_PG_ARGS)

run: install  ## set up, start the local stack, run model_lifecycle then batch_prediction, summary, stop
	@bash scripts/run.sh

services: install  ## start the GCS emulator and the ml/v1 service in the background
	$(PY) -m tools.devstack start

browser:  ## Debian's chromium for the browser test (apt-get, as root or on CI, when /usr/bin/chromium is missing)
	@if [[ ! -x /usr/bin/chromium ]]; then \
	  if [[ $$(id -u) == 0 || -n "$${CI:-}" ]]; then \
	    echo "browser: installing Debian's chromium"; \
	    $$( [[ $$(id -u) == 0 ]] || echo sudo ) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$( [[ $$(id -u) == 0 ]] || echo sudo ) apt-get install -y -qq chromium >/dev/null; \
	  else echo "browser: /usr/bin/chromium missing (apt-get install chromium); the browser test will skip"; fi; \
	fi

loadgen:  ## Debian's wrk, the load generator of `make bench` (apt-get, as root or on CI, when it is missing)
	@if ! command -v wrk >/dev/null; then \
	  if [[ $$(id -u) == 0 || -n "$${CI:-}" ]]; then \
	    echo "loadgen: installing Debian's wrk"; \
	    $$( [[ $$(id -u) == 0 ]] || echo sudo ) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$( [[ $$(id -u) == 0 ]] || echo sudo ) apt-get install -y -qq wrk >/dev/null; \
	  else echo "loadgen: wrk missing (apt-get install wrk); make bench needs it"; fi; \
	fi

database:  ## PostgreSQL's server programs for the replica tests (Debian's postgresql, as root or on CI, when initdb is missing)
	@if ! command -v initdb >/dev/null && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then \
	  if [[ $$(id -u) == 0 || -n "$${CI:-}" ]]; then \
	    echo "database: installing Debian's postgresql"; \
	    $$( [[ $$(id -u) == 0 ]] || echo sudo ) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$( [[ $$(id -u) == 0 ]] || echo sudo ) apt-get install -y -qq postgresql >/dev/null; \
	  else echo "database: PostgreSQL missing (apt-get install postgresql); the replica tests fail"; fi; \
	fi

loadbalancer:  ## Debian's haproxy, compose's load balancer, in front of two replicas in the tests (apt-get, as root or on CI)
	@if ! command -v haproxy >/dev/null && [[ ! -x /usr/sbin/haproxy ]]; then \
	  if [[ $$(id -u) == 0 || -n "$${CI:-}" ]]; then \
	    echo "loadbalancer: installing Debian's haproxy"; \
	    $$( [[ $$(id -u) == 0 ]] || echo sudo ) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$( [[ $$(id -u) == 0 ]] || echo sudo ) apt-get install -y -qq haproxy >/dev/null; \
	  else echo "loadbalancer: haproxy missing (apt-get install haproxy); the load-balancer test fails"; fi; \
	fi

airflow: install  ## Airflow 3 (api-server, scheduler, dag-processor, triggerer) + services; UI http://localhost:$(AIRFLOW_PORT) (admin/admin on loopback)
	$(PY) -m tools.airflow_stack start --port $(AIRFLOW_PORT)

stop:  ## stop everything `make services` / `make airflow` started
	@if [[ -x $(PY) ]]; then $(PY) -m tools.airflow_stack stop && $(PY) -m tools.devstack stop; fi

bench: install loadgen database  ## benchmarks: service vs raw TensorFlow, side by side
	$(PY) -m bench.run $(BENCH_ARGS)

clean: stop
	rm -rf $(STATE_DIR)
