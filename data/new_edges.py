"""New interactions for an existing graph (the input of `trainer.refresh`).

Inputs:
  new edges CSV      header `pivot_id,item_id[,timestamp]`, exactly these
                     columns (an unknown column is an error: it usually means
                     the file is not what the job expects); ids are non-empty
                     strings, the timestamp a number when present.
  new item features  optional, header `item_id,<f1>,...,<fD>` with exactly
                     the graph's dense feature names in the graph's order;
                     one row per NEW item (an item not in the graph).

Checks against the graph (each an `InputError` naming the file and line):
* when the graph's item and pivot ids are disjoint (as `data.csv_edges` and
  `data.synthetic` make them): an `item_id` that is a pivot id of the graph,
  a `pivot_id` that is an item id, or an id used as both in the file -- a
  swapped column, not a new node. Graphs that number both kinds from 0
  (`data.lightgcn`) tell ids apart by column only, so there is nothing to
  check;
* an edge to a new item without a features row when the graph has dense
  features (the model needs them), a features row for an item that is not
  new, or one listed twice;
* a graph with sparse features cannot take new items (their sparse
  features cannot be given here);
* an edge the graph already has is not an error (it is skipped and
  counted): re-running a job on an overlapping export of the log is common.

Output: `NewEdges` with raw ids in file order; the refresh maps them to rows
(`pinsage_tf.refresh.append_edges`).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from data import tables
from data.errors import InputError
from pinsage_tf import graph as graph_lib

EDGE_COLUMNS = ("pivot_id", "item_id")
OPTIONAL_EDGE_COLUMNS = ("timestamp",)


@dataclasses.dataclass(frozen=True)
class NewEdges:
  """Parsed, checked new interactions.

  Attributes:
    pivot_ids, item_ids: str `[E]` raw ids, file order (edges already in the
      graph and repeated lines removed).
    timestamps: float64 `[E]` or None.
    new_item_ids: str `[Q]` items not in the graph, in order of first
      appearance in the edges file.
    new_item_dense: float32 `[Q, D]` their dense features (D = the graph's).
    skipped_existing: edges of the file the graph already had (or repeats).
  """

  pivot_ids: np.ndarray
  item_ids: np.ndarray
  timestamps: np.ndarray | None
  new_item_ids: np.ndarray
  new_item_dense: np.ndarray
  skipped_existing: int


def _exact_header(table: tables.Table, allowed: tuple[str, ...], what: str) -> None:
  unknown = [name for name in table.header if name not in allowed]
  if unknown:
    raise InputError(table.path, 1, f"unknown column {unknown[0]!r} in the {what} header "
                     f"{','.join(table.header)}; expected {','.join(allowed)}.")


def read_new_edges(edges_csv: str | os.PathLike, graph: graph_lib.Graph,
                   item_features_csv: str | os.PathLike | None = None) -> NewEdges:
  """Reads and checks new edges (and new items' features) against `graph`.

  Raises:
    InputError: see the module docstring.
  """
  edges_csv = os.fspath(edges_csv)
  table = tables.read_csv(edges_csv, EDGE_COLUMNS, OPTIONAL_EDGE_COLUMNS, keep_all=True)
  _exact_header(table, EDGE_COLUMNS + OPTIONAL_EDGE_COLUMNS, "edges")
  pivots, items = tables.ids_column(table, "pivot_id"), tables.ids_column(table, "item_id")
  timestamps = tables.float_column(table, "timestamp") if table.has("timestamp") else None
  item_index = {str(r): i for i, r in enumerate(graph.item_ids.tolist())}
  pivot_index = {str(r): i for i, r in enumerate(graph.pivot_ids.tolist())}
  if not (item_index.keys() & pivot_index.keys()):
    # Disjoint name spaces (the graph's own ids never overlap): an id of the
    # other kind is a swapped column or a typo.
    file_items: set[str] = set()
    file_pivots: set[str] = set()
    for row, (pivot, item) in enumerate(zip(pivots.tolist(), items.tolist())):
      line = int(table.lines[row])
      if item in pivot_index or item in file_pivots or item == pivot:
        raise InputError(edges_csv, line, f"item_id {item!r} is a pivot id"
                         f"{' of the graph' if item in pivot_index else ' in this file'}; "
                         "item and pivot ids must differ (are the columns swapped?).")
      if pivot in item_index or pivot in file_items:
        raise InputError(edges_csv, line, f"pivot_id {pivot!r} is an item id"
                         f"{' of the graph' if pivot in item_index else ' in this file'}; "
                         "item and pivot ids must differ (are the columns swapped?).")
      file_items.add(item)
      file_pivots.add(pivot)

  # Drop edges the graph has and repeated lines (first occurrence kept).
  keep = np.ones(items.shape[0], bool)
  seen: set[tuple[str, str]] = set()
  for row, (pivot, item) in enumerate(zip(pivots.tolist(), items.tolist())):
    key = (pivot, item)
    if key in seen:
      keep[row] = False
      continue
    seen.add(key)
    i, p = item_index.get(item), pivot_index.get(pivot)
    if i is not None and p is not None and p in set(graph.pivots_of(i).tolist()):
      keep[row] = False
  new_items: list[str] = []
  first_line: dict[str, int] = {}
  for row in np.flatnonzero(keep).tolist():
    item = str(items[row])
    if item not in item_index and item not in first_line:
      first_line[item] = int(table.lines[row])
      new_items.append(item)
  new_item_ids = np.asarray(new_items, dtype=str)

  dim = graph.features.dense_dim
  if new_items and graph.features.sparse:
    raise InputError(edges_csv, first_line[new_items[0]],
                     f"item_id {new_items[0]!r} is new, but the graph has sparse features "
                     f"{[s.name for s in graph.features.sparse]} that a refresh cannot set; "
                     "re-prepare the graph with the new items instead.")
  dense = np.zeros((len(new_items), dim), np.float32)
  if item_features_csv is not None:
    dense = _new_item_features(os.fspath(item_features_csv), graph, new_item_ids, first_line,
                               edges_csv)
  elif dim and new_items:
    raise InputError(edges_csv, first_line[new_items[0]],
                     f"item_id {new_items[0]!r} is not in the graph, which has {dim} dense "
                     "features; pass its features with --new_item_features_csv.")
  return NewEdges(pivot_ids=pivots[keep], item_ids=items[keep],
                  timestamps=None if timestamps is None else timestamps[keep],
                  new_item_ids=new_item_ids, new_item_dense=dense,
                  skipped_existing=int(np.count_nonzero(~keep)))


def _new_item_features(path: str, graph: graph_lib.Graph, new_item_ids: np.ndarray,
                       first_line: dict[str, int], edges_csv: str) -> np.ndarray:
  """float32 `[Q, D]` features of the new items from `path` (see module docstring)."""
  names = tuple(graph.features.dense_names)
  table = tables.read_csv(path, ("item_id",) + names, keep_all=True)
  _exact_header(table, ("item_id",) + names, "features")
  if not names:
    raise InputError(path, 1, "the graph has no dense features, so new items take none; "
                     "drop --new_item_features_csv.")
  raw = tables.ids_column(table, "item_id")
  row_of = {str(r): i for i, r in enumerate(new_item_ids.tolist())}
  item_index = set(graph.item_ids.tolist())
  dense = np.zeros((new_item_ids.shape[0], len(names)), np.float32)
  seen = np.zeros(new_item_ids.shape[0], bool)
  rows = []
  for item, line in zip(raw.tolist(), table.lines.tolist()):
    if item not in row_of:
      where = "is already in the graph" if item in item_index else "has no new edge"
      raise InputError(path, line, f"item_id {item!r} {where}; list only new items.")
    if seen[row_of[item]]:
      raise InputError(path, line, f"item_id {item!r} is listed twice.")
    seen[row_of[item]] = True
    rows.append(row_of[item])
  with np.errstate(over="ignore"):
    for j, name in enumerate(names):
      dense[rows, j] = tables.float_column(table, name)
  bad = np.flatnonzero(~np.all(np.isfinite(dense[rows]), axis=1))
  if bad.size:
    raise InputError(path, int(table.lines[bad[0]]), "value overflows float32.")
  missing = np.flatnonzero(~seen)
  if missing.size:
    item = str(new_item_ids[missing[0]])
    raise InputError(edges_csv, first_line[item], f"item_id {item!r} is new but {path} has no "
                     "features row for it; every new item needs one.")
  return dense
