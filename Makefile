# streamlearn — every entry point a new user needs. `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
OUT ?= out

.PHONY: help install demo test test-fast lint format bench bench-peers kafka-up kafka-down prometheus-install clean

help:
	@echo "make demo      create the virtualenv, install, replay the bundled example stream (no Kafka)"
	@echo "make test      install, lint, start what the tests need, run the whole suite"
	@echo "make test-fast unit tests only (no Kafka / Prometheus)"
	@echo "make lint      ruff check + format check;  make format  to apply formatting"
	@echo "make bench     run the benchmarks (results in benchmarks/results/)"
	@echo "make bench-peers  the bandits beside Vowpal Wabbit and Open Bandit Pipeline (own venv: .venv-peers)"
	@echo "make kafka-up / kafka-down   a local single-node Kafka (KRaft) from the official jars"

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "streamlearn needs Python >= 3.11, found " + sys.version.split()[0]'
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	@rm -rf $(OUT)/demo && mkdir -p $(OUT)/demo
	$(BIN)/streamlearn replay examples/stream.jsonl.gz \
	    --learner ftrl --learner river:linear_model.LogisticRegression --learner neural --learner error_memory \
	    --dead-letter $(OUT)/demo/dead_letters.jsonl --state-dir $(OUT)/demo/state \
	    --summary-json $(OUT)/demo/summary.json \
	    --report $(OUT)/demo/report --drift-points 20000,40000,60000,75000
	@echo
	@echo "snapshots:" && $(BIN)/streamlearn state list --state-dir $(OUT)/demo/state
	@echo "report: $(OUT)/demo/report/index.html"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

prometheus-install:
	@command -v prometheus >/dev/null 2>&1 || { \
	    echo "installing Debian package prometheus (needed by the Prometheus tests)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null) \
	    || { echo "could not install prometheus: run 'apt-get install prometheus' as root"; exit 1; }; }

test: install lint prometheus-install
	$(BIN)/pytest -q

test-fast: install
	$(BIN)/pytest -q -m "not kafka and not prometheus and not slow"

bench: install
	mkdir -p benchmarks/results
	$(PY) benchmarks/replay.py
	@for b in benchmarks/snapshot.py benchmarks/kafka_worker.py benchmarks/bandits.py benchmarks/neural.py benchmarks/error_memory.py benchmarks/serving.py benchmarks/scaling.py benchmarks/allreduce.py; do \
	    if [ -f $$b ]; then echo "== $$b"; $(PY) $$b || exit 1; fi; done

# obp 0.5.7 pins torch 1.12 and Python < 3.10: it goes in a virtualenv of its own, without its
# pins, beside the versions the main one resolved (the constraint keeps pip from fetching another torch)
PEERS := .venv-peers
$(PEERS)/.installed: pyproject.toml $(VENV)/.installed
	test -d $(PEERS) || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install --quiet --upgrade pip
	$(PY) -m pip freeze --exclude-editable > $(PEERS)/constraints.txt
	$(PEERS)/bin/python -m pip install --quiet -c $(PEERS)/constraints.txt -e '.[peers]'
	$(PEERS)/bin/python -m pip install --quiet --no-deps --ignore-requires-python obp==0.5.7
	touch $@

bench-peers: $(PEERS)/.installed
	mkdir -p benchmarks/results
	$(PEERS)/bin/python benchmarks/bandits_peers.py

kafka-up: install
	$(PY) -m tests.kafka.broker up

kafka-down:
	$(PY) -m tests.kafka.broker down

clean:
	rm -rf $(OUT) .pytest_cache .ruff_cache build *.egg-info
