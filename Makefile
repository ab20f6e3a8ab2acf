# shoprec: `make run` sets up and runs the whole pipeline, `make test` runs the tests.
# Both create .venv on first use; nothing is downloaded at run time.

PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
# DVC's usage analytics and update checks would reach outside the machine.
export DVC_NO_ANALYTICS := 1
export PATH := $(BIN):$(PATH)

.PHONY: setup run test dvc-init fashion-mnist clean-outputs

# Product images of the fashion-shop dataset (ingest.dataset: fashion-shop).
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# compat mode puts the checkout on sys.path, so a directory earlier on the path (the
	# workspace a stage runs in) takes precedence over it.
	$(BIN)/pip install -e ".[test]" --config-settings editable_mode=compat
	# The recbole wheel is only a carrier for MovieLens-100K; its code is never imported.
	$(BIN)/pip install --no-deps recbole==1.2.1
	touch $(STAMP)

setup: $(STAMP) dvc-init fashion-mnist

# Installs the Debian package when it is missing and make runs as root; other
# users get the command to run, since only the fashion-shop dataset needs it.
fashion-mnist:
	@if [ ! -f $(FASHION_MNIST) ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -q && apt-get install -y -q --no-install-recommends dataset-fashion-mnist; \
		else \
			echo "note: $(FASHION_MNIST) is missing; the fashion-shop dataset needs it:"; \
			echo "      sudo apt-get install dataset-fashion-mnist"; \
		fi; \
	fi

dvc-init:
	@if [ ! -f .dvc/config ]; then dvc init; fi
	@dvc config core.analytics false
	@dvc config core.check_update false
	@if ! dvc remote list | grep -q '^local'; then \
		dvc remote add --default local storage/dvc-remote; fi

run: setup
	dvc repro
	@echo
	@echo "metrics:          metrics.json (dvc metrics show metrics.json)"
	@echo "gate decision:    gate.json"
	@echo "report:           reports/evaluation.html (open in a browser)"
	@echo "training curves:  dvclive/ (dvc plots show)"
	@echo "promoted model:   models/registry/$$(python -c 'import json;print(json.load(open("models/production.json"))["version"])' 2>/dev/null || echo '(none: gate failed)')"
	@echo "try:              .venv/bin/shoprec recommend --user 196 -k 10"

test: setup
	python -m pytest

clean-outputs:
	rm -rf data/ingested data/split data/augment models/candidate models/compressed dvclive reports metrics.json gate.json checkpoints

# Airflow standalone on 127.0.0.1:8080 (SHOPREC_AIRFLOW_PORT to change) with .airflow/
# as its home and dags/ as its DAG folder; prints the UI address and login. See docs/airflow.md.
.PHONY: airflow
airflow: setup
	infra/airflow/standalone.sh
