"""Bring-your-own interaction logs (CSV) -> `Graph`.

Inputs:
  edges CSV          header `pivot_id,item_id[,timestamp]` (other columns are
                     ignored); ids are arbitrary non-empty strings, timestamp a
                     number (e.g. Unix seconds).
  item features CSV  optional, header `item_id,<f1>,<f2>,...`; every other
                     column is a numeric dense feature named by its header.
                     Values are used as given (standardise them beforehand).

Output graph ("csv" unless `name` is set):
* items = distinct `item_id`s of the edges file, sorted as strings; pivots =
  distinct `pivot_id`s with at least one training edge, sorted as strings.
* every interaction is an engagement: the protocol of `data.sequences` with
  each pivot's interactions in timestamp order (ties and files without
  timestamps: file order). The period of an interaction is
  - with timestamps: by global cut-offs at the `val_quantile` /
    `test_quantile` quantiles of all timestamps (as `data.movielens`);
  - without: a seeded uniform draw u per interaction, train if
    u < val_quantile, validation if u < test_quantile, else test
    (80/10/10 by default).
  Graph edges are the train-period interactions; a pair's split is its
  positive's period; held-out items are each pivot's later items that are not
  among its training items.
* dense features from the features file; items it does not list get zeros
  (their count is in metadata). No sparse features.

Bad input raises `InputError` naming the file and line: missing columns,
non-numeric timestamps or features, empty ids, an item in the features file
that never occurs in the edges file, a repeated item in the features file, or
a validation / test split without pairs.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time

from absl import logging
import numpy as np

from data.errors import InputError
from data import sequences
from data import tables
from pinsage_tf import atomic
from pinsage_tf.graph import Graph, build_graph

_FEATURE_NAME = re.compile(r"^[A-Za-z0-9_.\- ]+$")


@dataclasses.dataclass(frozen=True)
class CsvConfig:
  """Preparation parameters (see the module docstring).

  Attributes:
    val_quantile: where the validation period starts (time quantile, or the
      train share of the random split).
    test_quantile: where the test period starts.
    seed: seeds the random split used when there are no timestamps.
    name: the graph's name.
  """

  val_quantile: float = 0.8
  test_quantile: float = 0.9
  seed: int = 0
  name: str = "csv"

  def __post_init__(self):
    if not 0.0 < self.val_quantile < self.test_quantile < 1.0:
      raise ValueError("need 0 < val_quantile < test_quantile < 1; got "
                       f"{self.val_quantile} and {self.test_quantile}.")


def _dense_features(path: str, item_ids: np.ndarray) -> tuple[np.ndarray, tuple[str, ...], int]:
  """Reads the features file: (float32 [N, D], names, items without a row)."""
  table = tables.read_csv(path, ["item_id"], keep_all=True)
  names = tuple(name for name in table.header if name != "item_id")
  if not names:
    raise InputError(path, 1, "no feature column; expected a header item_id,<f1>,<f2>,...")
  for name in names:
    if not _FEATURE_NAME.match(name):
      raise InputError(path, 1, f"feature column name {name!r} must be non-empty "
                       "letters, digits, '_', '.', '-' or spaces.")
  raw = tables.ids_column(table, "item_id")
  rows = np.searchsorted(item_ids, raw)
  rows = np.minimum(rows, item_ids.shape[0] - 1)
  unknown = np.flatnonzero(item_ids[rows] != raw)
  if unknown.size:
    raise InputError(path, int(table.lines[unknown[0]]),
                     f"item_id {str(raw[unknown[0]])!r} does not occur in the edges file.")
  seen = np.zeros(item_ids.shape[0], dtype=bool)
  for row, line in zip(rows.tolist(), table.lines.tolist()):
    if seen[row]:
      raise InputError(path, line, f"item_id {str(item_ids[row])!r} is listed twice.")
    seen[row] = True
  dense = np.zeros((item_ids.shape[0], len(names)), dtype=np.float32)
  with np.errstate(over="ignore"):  # float32 overflow becomes inf, reported below.
    for j, name in enumerate(names):
      dense[rows, j] = tables.float_column(table, name)
  if not np.all(np.isfinite(dense)):
    bad = np.flatnonzero(~np.all(np.isfinite(dense[rows]), axis=1))[0]
    raise InputError(path, int(table.lines[bad]), "value overflows float32.")
  return dense, names, int(np.count_nonzero(~seen))


def load_csv(edges_csv: str | os.PathLike, item_features_csv: str | os.PathLike | None,
             config: CsvConfig) -> Graph:
  """Reads an edges file (and optionally a features file) into a `Graph`.

  Args:
    edges_csv: `pivot_id,item_id[,timestamp]` file.
    item_features_csv: `item_id,<f1>,...` file, or None for no dense features.
    config: split parameters.

  Raises:
    InputError: see the module docstring.
  """
  start = time.perf_counter()
  edges_csv = os.fspath(edges_csv)
  table = tables.read_csv(edges_csv, ["pivot_id", "item_id"], optional=["timestamp"])
  raw_pivots, pivot = np.unique(tables.ids_column(table, "pivot_id"), return_inverse=True)
  item_ids, item = np.unique(tables.ids_column(table, "item_id"), return_inverse=True)
  file_order = np.arange(table.num_rows)
  logging.info("read %d interactions (%d pivots, %d items) from %s", table.num_rows,
               raw_pivots.shape[0], item_ids.shape[0], edges_csv)

  if table.has("timestamp"):
    timestamp = tables.float_column(table, "timestamp")
    cutoffs = sequences.time_cutoffs(timestamp, config.val_quantile, config.test_quantile)
    period = cutoffs.period(timestamp)
    order = np.lexsort((file_order, timestamp, pivot))
    split_rule = {"split": "time", "validation_cutoff": cutoffs.validation,
                  "test_cutoff": cutoffs.test}
  else:
    u = np.random.default_rng(config.seed).random(table.num_rows)
    period = sequences.TimeCutoffs(config.val_quantile, config.test_quantile).period(u)
    order = np.lexsort((file_order, pivot))
    split_rule = {"split": "random per interaction (no timestamp column)"}

  everything = np.ones(table.num_rows, dtype=bool)
  log = sequences.split_log(
      source=edges_csv, pivot=pivot[order].astype(np.int64), item=item[order].astype(np.int64),
      period=period[order], is_edge=everything, is_engagement=everything,
      num_items=item_ids.shape[0])

  inputs = {"edges": atomic.sha256_file(edges_csv)}
  dense, names, missing = None, (), 0
  if item_features_csv is not None:
    item_features_csv = os.fspath(item_features_csv)
    dense, names, missing = _dense_features(item_features_csv, item_ids)
    inputs["item_features"] = atomic.sha256_file(item_features_csv)
    logging.info("read %d dense features from %s (%d items without a row)",
                 len(names), item_features_csv, missing)
  metadata = {
      "source": "csv",
      "config": dataclasses.asdict(config),
      "input_sha256": inputs,
      "protocol": {
          **split_rule,
          "edges": "train-period interactions",
          "pairs": "consecutive interactions of a pivot (timestamp, then file order); "
                   "split = period of the positive",
          "heldout": "pivot's later-period items not among its training items",
      },
      "interactions": int(table.num_rows),
      "pivots_total": int(raw_pivots.shape[0]),
      "heldout_dropped_no_train_pivot": log.dropped_heldout,
      "items_without_features": missing,
  }
  graph = build_graph(
      name=config.name, item_ids=item_ids, pivot_ids=raw_pivots[log.pivot_rows],
      edge_items=log.edge_items, edge_pivots=log.edge_pivots, dense=dense,
      dense_names=names, pairs=log.pairs, heldout=log.heldout, metadata=metadata)
  logging.info("built %s graph in %.2fs", config.name, time.perf_counter() - start)
  return graph
