# pinsage_tf: `make run` (set-up + the whole pipeline on the built-in synthetic
# dataset) and `make test` (set-up + the whole test suite) on a fresh machine.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= out
DATASETS ?= ../shared/datasets
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: setup test run bench clean

# Re-installs only when setup.py changed (or the venv is new).
$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[dev,beam]'
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(PY) -m pytest -q -n 2 --timeout=900

run: setup
	$(PY) -m data.prepare --dataset=synthetic --output_dir=$(OUT)/synthetic/graph --overwrite

bench: setup
	mkdir -p bench/results
	$(PY) bench/bench_neighborhoods.py --datasets_dir=$(DATASETS) --output_json=bench/results/neighborhoods.json
	$(PY) bench/bench_pipeline.py --datasets_dir=$(DATASETS) --output_json=bench/results/pipeline.json

clean:
	rm -rf $(OUT) bench/results
