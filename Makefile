# Two commands do all the set-up on a fresh machine:  `make demo`  and  `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WORKDIR ?= work/demo

.PHONY: install demo ui serve test lint bench clean

# torch first (its CPU build here), so nothing else pulls CUDA wheels; then the project.
$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install "torch==2.13.0"
	$(BIN)/pip install -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/lvmae demo --workdir $(WORKDIR)

# The MLflow UI on the demo's store (WORKDIR/mlflow.db), on http://127.0.0.1:5000.
ui: install
	$(BIN)/lvmae ui $(WORKDIR)

# Search and watch the demo's videos (lvmae serve) on http://127.0.0.1:8765.
serve: install
	$(BIN)/lvmae serve $(WORKDIR)/extract

test: install
	$(BIN)/ruff check .
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python benchmarks/bench_extraction.py

clean:
	rm -rf $(VENV) work
