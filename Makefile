# pdc developer entry points. Every target installs what is missing first (a no-op when up to date).
#   make run    - the main job: the tiny CPU pipeline on the embedded default corpus
#   make test   - the fast test suite (what CI runs)
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.pdc-installed

.PHONY: install run test test-slow bench clean

install: $(STAMP)

# Re-installs only when the pins change. torch/torchvision come from pip's local wheel cache here.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

# The embedded corpus is materialized (byte-identical, pinned by data.dvc), then DVC runs the pipeline.
run: $(STAMP)
	$(BIN)/pdc data init
	$(BIN)/pdc weights --no-fid
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc metrics show

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow -q

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_data.py
	$(BIN)/python benchmarks/bench_codec.py

clean:
	rm -rf $(VENV) .pytest_cache
