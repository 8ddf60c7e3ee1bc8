# pdc developer entry points. Every target installs what is missing first (a no-op when up to date).
#   make run    - the main job: the tiny CPU pipeline on the embedded default corpus, then `make promote`
#   make small  - the CPU model docs/results.md reports: the `small` profile on the embedded corpus + BSDS500
#                 train (resumable: run it again after an interruption)
#   make promote - production: register the workspace's model set in MLflow, move `champion` if it wins
#   make test   - the fast test suite (what CI runs)
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.pdc-installed

.PHONY: install run small promote test test-slow bench gpu-bundle clean

install: $(STAMP)

# Re-installs only when the pins change. torch/torchvision come from pip's local wheel cache here.
# Everything: the codec core, the orchestration stack (`pipeline` extra) and the test tools (`dev`).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[pipeline,dev]"
	touch $(STAMP)

# The embedded corpus is materialized (byte-identical, pinned by data.dvc), then DVC runs the pipeline.
run: $(STAMP)
	$(BIN)/pdc data init
	$(BIN)/pdc weights --no-fid
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro
	$(BIN)/pdc pipeline promote
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc metrics show

# The `small` profile (params.yaml) on the embedded corpus plus BSDS500 train; never its val or test split.
# Killed half-way, the same command resumes: finished stages are up to date, a running one from its checkpoint.
SMALL_DATA ?= ../shared/data/bsds500/train
small: $(STAMP)
	@test -d "$(SMALL_DATA)" || { echo "make small: no training photos at SMALL_DATA=$(SMALL_DATA) (BSDS500 train, or any folder of photos: make small SMALL_DATA=DIR)"; exit 2; }
	$(BIN)/pdc data init
	$(BIN)/pdc data import "$(SMALL_DATA)" --name bsds500-train
	$(BIN)/pdc weights --no-fid
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc exp run -S profile=small
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc metrics show

# `dvc repro` / `dvc exp run` log to MLflow but leave the registry alone (pipeline.promote: false); this
# registers what the workspace holds (after `dvc repro` or `dvc exp apply`) and applies the champion rule.
promote: $(STAMP)
	$(BIN)/pdc pipeline promote

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow -q

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_data.py
	$(BIN)/python benchmarks/bench_codec.py

# Wheels + photos for a GPU machine without a package index (benchmarks/README.md, "A GPU machine without a package index").
gpu-bundle: $(STAMP)
	$(BIN)/python benchmarks/gpu_bundle.py

clean:
	rm -rf $(VENV) .pytest_cache
