# pinsage_tf: `make run` (set-up + the whole pipeline on the built-in synthetic
# dataset) and `make test` (set-up + the whole test suite) on a fresh machine.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= out
DATASETS ?= ../shared/datasets
export TF_USE_LEGACY_KERAS := 1

.PHONY: setup lint test test-fast run serve bench bench-quality clean

# Re-installs only when setup.py changed (or the venv is new).
$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[dev,beam]'
	touch $(STAMP)

setup: $(STAMP)

# Rules and exclusions in ruff.toml.
lint: setup
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -q -n 2 --dist loadfile --timeout=900

# Skips the `slow` tests (listed in conftest.py): about a minute on 2 cores.
test-fast: setup
	$(PY) -m pytest -q -m "not slow" --timeout=900

SYN := $(OUT)/synthetic

# The main job end to end on the built-in synthetic dataset (a few minutes on 2 cores).
run: setup
	$(PY) -m data.prepare --dataset=synthetic --output_dir=$(SYN)/graph --overwrite
	rm -rf $(SYN)/model
	$(PY) -m trainer.train --graph_dir=$(SYN)/graph --model_dir=$(SYN)/model \
	    --config_json=trainer/configs/synthetic.json
	$(PY) -m trainer.infer --graph_dir=$(SYN)/graph --model_dir=$(SYN)/model \
	    --output_dir=$(SYN)/embeddings --overwrite
	$(PY) -m trainer.evaluate --graph_dir=$(SYN)/graph --embeddings_dir=$(SYN)/embeddings \
	    --methods=pinsage,popularity,itemknn,pixie,features --split=validation \
	    --output_json=$(SYN)/eval_validation.json
	$(PY) -m trainer.export --model_dir=$(SYN)/model --graph_dir=$(SYN)/graph \
	    --embeddings_dir=$(SYN)/embeddings --export_base=$(SYN)/exports
	@echo "Serve the export with: make serve   (REST 127.0.0.1:8501, gRPC 127.0.0.1:8500)"

# TF-Serving-compatible server on the latest export of `make run`.
serve: setup
	$(PY) -m serving.server --port=8500 --rest_api_port=8501 --enable_batching \
	    --model_config_file=$(SYN)/exports/models.config

# Benchmarks (JSON in bench/results/); each compares its variants in one run.
bench: setup
	mkdir -p bench/results
	$(PY) bench/bench_neighborhoods.py --datasets_dir=$(DATASETS) --output_json=bench/results/neighborhoods.json
	$(PY) bench/bench_training.py --datasets_dir=$(DATASETS) --output_json=bench/results/training.json
	$(PY) bench/bench_inference.py --datasets_dir=$(DATASETS) --output_json=bench/results/inference.json
	$(PY) bench/bench_exact.py --output_json=bench/results/exact.json
	$(PY) bench/bench_scann.py --output_json=bench/results/scann.json
	$(PY) bench/bench_serving.py --output=bench/results/serving.json

# Quality on real data, final configurations, test split, 3 seeds each (results/ and
# docs/experiments.md; about 4 h on 2 cores). Tune with --split=validation (bench/quality.py).
bench-quality: setup
	mkdir -p bench/results
	$(PY) bench/quality.py --dataset=gowalla --method=pinsage_pivots --seeds=0,1,2 --jobs=2 \
	    --threads_per_job=1 --split=test --datasets_dir=$(DATASETS) \
	    --output_json=bench/results/quality_gowalla_pivots_test.json
	$(PY) -m trainer.evaluate --graph_dir=$(OUT)/quality/gowalla/graph --split=test \
	    --embeddings_dir=$(OUT)/quality/gowalla/seed0/embeddings --methods=pinsage_pivots \
	    --dump_topk=bench/results/gowalla_test_topk.jsonl \
	    --output_json=bench/results/gowalla_test_seed0_dump.json
	$(PY) bench/quality.py --dataset=movielens --config_json=trainer/configs/movielens_dgl.json \
	    --prepare_flag=--split=leave_last --prepare_flag=--train_pair_window=3 --seeds=0,1,2 \
	    --jobs=2 --threads_per_job=1 --split=test \
	    --work_dir=$(OUT)/quality_dgl --datasets_dir=$(DATASETS) \
	    --output_json=bench/results/quality_movielens_dgl_test.json
	$(PY) bench/quality.py --dataset=movielens --seeds=0,1,2 --split=test --compare_to=itemknn \
	    --prepare_flag=--train_pair_window=3 --datasets_dir=$(DATASETS) \
	    --output_json=bench/results/quality_movielens_test.json
	$(PY) bench/quality.py --dataset=synthetic --seeds=0,1,2 --jobs=2 --threads_per_job=1 \
	    --split=validation --work_dir=$(OUT)/quality_synthetic \
	    --output_json=bench/results/quality_synthetic_validation.json

clean:
	rm -rf $(OUT) bench/results
