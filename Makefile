# The two commands of the README: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= reports

.PHONY: demo test venv clean

venv: $(STAMP)

# Reinstall when the dependency list changes; pip takes torch from local wheels where it can.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

demo: $(STAMP)
	$(BIN)/mnist-train run experiments/seed001_softmax.yaml
	$(BIN)/mnist-train run experiments/seed000_mlp.yaml

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
