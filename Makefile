# Diabetes readmission MLOps platform. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# Debian packages the test suite starts as real servers or drives (MariaDB, PostgreSQL for Airflow's metadata,
# Prometheus, Pushgateway, Chromium) and the headers mysqlclient builds against.
APT_PACKAGES := mariadb-server postgresql prometheus prometheus-pushgateway chromium chromium-driver pkg-config libmariadb-dev
# The container engine the container tests build and run every image with (podman: no daemon; runc,
# as crun refuses hybrid cgroups; the dnsname plugin resolves compose service names), debootstrap for
# the stand-in base images (tests/containers/).
APT_PACKAGES += podman runc uidmap fuse-overlayfs debootstrap golang-github-containernetworking-plugin-dnsname
# podman's engine settings (runtime, cgroups, ulimits) come from the project, not the machine's /etc.
export CONTAINERS_CONF ?= $(CURDIR)/containers.conf

.PHONY: help install system-deps tools demo test airflow loadtest benchmark kubernetes clean
.PHONY: images stand-in-images test-containers lint test-fast

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[all,dev]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install the package with every service's dependencies

system-deps: ## Install the Debian packages the tests need (only what is missing)
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		apt-get -o DPkg::Lock::Timeout=600 update -qq && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

demo: install ## Run the platform on embedded defaults: data API, ingestion, training, serving, UI
	$(BIN)/readmission demo

# checkov (tests/test_deploy_kubernetes.py) pins packages the project pins differently: its own venv.
TOOLS := .venv-tools
$(TOOLS)/bin/checkov:
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q checkov==3.3.30

tools: $(TOOLS)/bin/checkov ## Install checkov into .venv-tools (the deploy tests run it)

test: system-deps install tools stand-in-images images lint ## Install what the tests need, check the code and run the whole suite
	$(BIN)/python -m pytest

test-fast: install ## The tests that start no server, browser or container, nor read the real data set
	$(BIN)/python -m pytest -m "not servers and not acceptance"

lint: install ## Formatting, lint rules and types (ruff format --check, ruff check, mypy)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

images: ## Build every image (docker where a Docker engine answers, else podman); prints sizes and build times
	scripts/build_images.sh

# The official base and third-party images when a registry answers, else stand-ins built from
# Debian's packages under the official names (tests/containers/README.md).
stand-in-images: system-deps
	tests/containers/python/build.sh
	tests/containers/airflow/build.sh
	tests/containers/postgres/build.sh
	tests/containers/mysql/build.sh
	tests/containers/minio/build.sh
	tests/containers/prometheus/build.sh

test-containers: system-deps install stand-in-images images ## Build every image and run the container tests alone
	$(BIN)/python -m pytest tests/test_deploy_containers.py tests/test_deploy_compose_stack.py

airflow: install ## Airflow's scheduler and UI (http://127.0.0.1:8080) with the DAG, and a data API to pull from
	$(BIN)/readmission airflow

loadtest: install ## Headless Locust run against the local stack; reports under reports/
	$(BIN)/readmission loadtest

benchmark: install ## Run the benchmark scripts whose figures the README reports (on an idle machine)
	@status=0; for script in benchmarks/*.py; do echo "== $$script"; $(BIN)/python $$script || status=1; done; exit $$status

kubernetes: ## Prepare kubernetes/ for `kubectl apply -k kubernetes/overlays/local` (shared config, random secrets)
	kubernetes/prepare.sh local

clean: ## Remove the virtual environment and local data
	rm -rf $(VENV) data reports
