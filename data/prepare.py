r"""Prepares a graph directory from raw logs (the `pinsage-prepare` command).

    python -m data.prepare --dataset=synthetic --output_dir=/tmp/graphs/synthetic
    python -m data.prepare --dataset=movielens \
        --input_dir=../shared/datasets/ml-latest-small --output_dir=/tmp/graphs/ml
    python -m data.prepare --dataset=lightgcn \
        --input_dir=../shared/datasets/gowalla --output_dir=/tmp/graphs/gowalla
    python -m data.prepare --dataset=csv --edges_csv=edges.csv \
        [--item_features_csv=features.csv] --output_dir=/tmp/graphs/mine

Flags -> the dataset's config -> its pure loader (`data.synthetic.generate`,
`data.movielens.load_movielens`, `data.lightgcn.load_lightgcn`,
`data.csv_edges.load_csv`) -> `pinsage_tf.graph.save_graph` (atomic) -> a
JSON summary on stdout (counts, pairs per split, degree statistics,
features, graph fingerprint). Progress is logged to stderr.

Flag defaults are the config dataclasses' defaults. A dataset-specific flag
given for another dataset is an error. Bad input (file:line), bad flags, an
existing `--output_dir` without `--overwrite` or an unwritable destination
print one line `error: ...` on stderr and exit with status 2; nothing is
written (the graph is validated, then published with one rename).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from absl import app
from absl import flags
from absl import logging

from data import csv_edges
from data import lightgcn
from data import movielens
from data import synthetic
from data.errors import InputError
from pinsage_tf import graph as graph_lib

_Synth = synthetic.SyntheticConfig
_ML = movielens.MovieLensConfig
_LG = lightgcn.LightGCNConfig

_DATASET = flags.DEFINE_enum("dataset", "synthetic", ["synthetic", "movielens", "lightgcn", "csv"],
                             "Which raw format to read.")
_INPUT_DIR = flags.DEFINE_string(
    "input_dir", None, "Directory of the raw files (movielens: ratings.csv, movies.csv[, "
    "tags.csv]; lightgcn: train.txt, test.txt; csv: base of relative --edges_csv paths).")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Graph directory to write.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --output_dir.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed (synthetic, lightgcn, csv without timestamps).")

_NUM_ITEMS = flags.DEFINE_integer("num_items", _Synth.num_items, "synthetic: items (pins).")
_NUM_BOARDS = flags.DEFINE_integer("num_boards", _Synth.num_boards, "synthetic: boards.")
_NUM_COMMUNITIES = flags.DEFINE_integer("num_communities", _Synth.num_communities,
                                        "synthetic: planted communities.")
_NUM_PAIRS = flags.DEFINE_integer("num_pairs", _Synth.num_pairs, "synthetic: item pairs.")
_DENSE_DIM = flags.DEFINE_integer("dense_dim", _Synth.dense_dim, "synthetic: dense features.")
_FEATURE_NOISE = flags.DEFINE_float("feature_noise", _Synth.feature_noise,
                                    "synthetic: std of the dense-feature noise.")
_HASH_BUCKETS = flags.DEFINE_integer(
    "hash_buckets", None, f"synthetic, movielens: hashed-text buckets (defaults: synthetic "
    f"{_Synth.hash_buckets}, movielens {_ML.hash_buckets}).")

_MIN_RATING = flags.DEFINE_float("min_rating", _ML.min_rating,
                                 "movielens: ratings >= this are engagements.")
_EDGE_MIN_RATING = flags.DEFINE_float("edge_min_rating", _ML.edge_min_rating,
                                      "movielens: train-period ratings >= this are edges.")
_SPLIT = flags.DEFINE_enum("split", _ML.split, list(movielens.SPLITS),
                           "movielens: 'time' (global time cut-offs) or 'leave_last' (per "
                           "user: last rating test, the one before validation; DGL's PinSAGE "
                           "protocol).")
_USE_TAGS = flags.DEFINE_bool("use_tags", _ML.use_tags, "movielens: read tags.csv if present.")
_VAL_QUANTILE = flags.DEFINE_float("val_quantile", _ML.val_quantile,
                                   "movielens, csv: time quantile where validation starts.")
_TEST_QUANTILE = flags.DEFINE_float("test_quantile", _ML.test_quantile,
                                    "movielens, csv: time quantile where test starts.")

_TRAIN_PAIR_WINDOW = flags.DEFINE_integer(
    "train_pair_window", _ML.train_pair_window,
    "movielens: training pairs link each engagement to the N engagements before it "
    "(held-out pairs stay consecutive).")
_PAIR_ROUNDS = flags.DEFINE_integer(
    "pair_rounds", _LG.pair_rounds,
    "lightgcn: independent per-user permutations whose consecutive items give training pairs.")
_VAL_FRACTION = flags.DEFINE_float("val_fraction", _LG.val_fraction,
                                   "lightgcn: share of train items held out for validation.")
_MAX_PAIRS_PER_USER = flags.DEFINE_integer("max_pairs_per_user", _LG.max_pairs_per_user,
                                           "lightgcn: cap on directed train pairs per user.")

_EDGES_CSV = flags.DEFINE_string("edges_csv", "edges.csv",
                                 "csv: pivot_id,item_id[,timestamp] file.")
_ITEM_FEATURES_CSV = flags.DEFINE_string("item_features_csv", None,
                                         "csv: optional item_id,<f1>,... dense features file.")
_NAME = flags.DEFINE_string("name", "csv", "csv: the graph's name.")

# Dataset-specific flags and the datasets they apply to.
_APPLIES = {
    "num_items": ("synthetic",), "num_boards": ("synthetic",),
    "num_communities": ("synthetic",), "num_pairs": ("synthetic",),
    "dense_dim": ("synthetic",), "feature_noise": ("synthetic",),
    "hash_buckets": ("synthetic", "movielens"),
    "min_rating": ("movielens",), "edge_min_rating": ("movielens",), "use_tags": ("movielens",),
    "split": ("movielens",),
    "val_quantile": ("movielens", "csv"), "test_quantile": ("movielens", "csv"),
    "val_fraction": ("lightgcn",), "max_pairs_per_user": ("lightgcn",),
    "edges_csv": ("csv",), "item_features_csv": ("csv",), "name": ("csv",),
    "seed": ("synthetic", "lightgcn", "csv"), "input_dir": ("movielens", "lightgcn", "csv"),
}


def _check_flags(dataset: str) -> None:
  for name, datasets in _APPLIES.items():
    if flags.FLAGS[name].present and dataset not in datasets:
      raise ValueError(f"--{name} does not apply to --dataset={dataset} "
                       f"(only to {', '.join(datasets)}).")
  if _OUTPUT_DIR.value is None:
    raise ValueError("pass --output_dir (the graph directory to write).")
  if dataset in ("movielens", "lightgcn") and _INPUT_DIR.value is None:
    raise ValueError(f"--dataset={dataset} needs --input_dir (the raw files' directory).")


def _buckets() -> dict[str, int]:
  return {} if _HASH_BUCKETS.value is None else {"hash_buckets": _HASH_BUCKETS.value}


def _input_path(path: str) -> str:
  return os.path.join(_INPUT_DIR.value or "", path)


def load_from_flags(dataset: str) -> graph_lib.Graph:
  """Builds the dataset's config from the flags and runs its loader."""
  if dataset == "synthetic":
    return synthetic.generate(synthetic.SyntheticConfig(
        num_items=_NUM_ITEMS.value, num_boards=_NUM_BOARDS.value,
        num_communities=_NUM_COMMUNITIES.value, num_pairs=_NUM_PAIRS.value,
        dense_dim=_DENSE_DIM.value, feature_noise=_FEATURE_NOISE.value, seed=_SEED.value,
        **_buckets()))
  if dataset == "movielens":
    return movielens.load_movielens(_INPUT_DIR.value, movielens.MovieLensConfig(
        min_rating=_MIN_RATING.value, edge_min_rating=_EDGE_MIN_RATING.value,
        val_quantile=_VAL_QUANTILE.value, test_quantile=_TEST_QUANTILE.value,
        use_tags=_USE_TAGS.value, train_pair_window=_TRAIN_PAIR_WINDOW.value, split=_SPLIT.value,
        **_buckets()))
  if dataset == "lightgcn":
    return lightgcn.load_lightgcn(_INPUT_DIR.value, lightgcn.LightGCNConfig(
        val_fraction=_VAL_FRACTION.value, max_pairs_per_user=_MAX_PAIRS_PER_USER.value,
        pair_rounds=_PAIR_ROUNDS.value,
        seed=_SEED.value))
  if dataset == "csv":
    features = _ITEM_FEATURES_CSV.value
    return csv_edges.load_csv(
        _input_path(_EDGES_CSV.value), None if features is None else _input_path(features),
        csv_edges.CsvConfig(val_quantile=_VAL_QUANTILE.value,
                            test_quantile=_TEST_QUANTILE.value, seed=_SEED.value,
                            name=_NAME.value))
  raise ValueError(f"unknown --dataset={dataset}")


def main(argv: list[str]) -> int:
  """Prepares, saves and summarises a graph; returns the exit status (0 or 2)."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  dataset = _DATASET.value
  start = time.perf_counter()
  try:
    _check_flags(dataset)
    if os.path.exists(_OUTPUT_DIR.value) and not _OVERWRITE.value:
      raise FileExistsError(f"{_OUTPUT_DIR.value} already exists; pass --overwrite to "
                            "replace it.")
    graph = load_from_flags(dataset)
    logging.info("writing %s", _OUTPUT_DIR.value)
    graph_lib.save_graph(graph, _OUTPUT_DIR.value, overwrite=_OVERWRITE.value)
  except (InputError, graph_lib.GraphFormatError, ValueError, OSError) as e:
    logging.debug("preparation failed", exc_info=True)
    print(f"error: {e}", file=sys.stderr)
    return 2
  summary: dict[str, Any] = {
      "output_dir": os.path.abspath(_OUTPUT_DIR.value),
      "fingerprint": graph_lib.graph_fingerprint(_OUTPUT_DIR.value),
      "seconds": round(time.perf_counter() - start, 2),
      **graph.summary(),
  }
  if "diagnostics" in graph.metadata:
    summary["diagnostics"] = graph.metadata["diagnostics"]
  print(json.dumps(summary, indent=2))
  return 0


def run() -> None:
  """Console-script entry point (`pinsage-prepare`)."""
  app.run(main)


if __name__ == "__main__":
  run()
