# The two commands of the README: `make demo` and `make test`. Both set up .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= reports
SERVER_DIR ?= .server

.PHONY: demo test lint format venv clean server server-stop server-clean

venv: $(STAMP)

# Reinstall when the dependency list changes; pip takes torch from local wheels where it can.
$(STAMP): pyproject.toml
	@echo "Installing the workbench and its dependencies into $(VENV) (first time: about 3 minutes; torch and MLflow are the large ones)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --progress-bar on -e '.[dev]' | grep -E --line-buffered '^(Collecting|Installing|Successfully|ERROR)' ; test $${PIPESTATUS[0]} -eq 0
	touch $(STAMP)
	@echo "$(VENV) is ready"

test: $(STAMP)
	$(BIN)/python -m pytest

# One formatter and linter (ruff, configured in pyproject.toml); CI runs `lint` before the tests.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Train both seed reproductions, write a report for each and a comparison of the two.
demo: $(STAMP)
	@set -e; \
	softmax=$$($(BIN)/mnist-train run experiments/seed001_softmax.yaml); \
	mlp=$$($(BIN)/mnist-train run experiments/seed000_mlp.yaml); \
	$(BIN)/mnist-analysis run $$softmax --out $(DEMO_OUT)/seed001_softmax; \
	$(BIN)/mnist-analysis run $$mlp --out $(DEMO_OUT)/seed000_mlp; \
	$(BIN)/mnist-analysis compare --runs $$softmax --runs $$mlp --baseline $$softmax --out $(DEMO_OUT)/compare; \
	echo "reports in $(DEMO_OUT)/; browse the runs with: $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db"

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache

# A throwaway local PostgreSQL + mlflow server (docs/team-server.md); data stays in $(SERVER_DIR).
server: $(STAMP)
	$(BIN)/python scripts/team_server.py start --dir $(SERVER_DIR)

server-stop:
	$(BIN)/python scripts/team_server.py stop --dir $(SERVER_DIR)

server-clean:
	$(BIN)/python scripts/team_server.py clean --dir $(SERVER_DIR)
