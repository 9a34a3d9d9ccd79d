"""The bipartite item/pivot graph and its on-disk format (the graph store).

PinSage runs on a bipartite graph of *items* (pins; movies; venues) and *pivots*
(boards; users) that link them. Everything downstream (random-walk
neighborhoods, the minibatch producer, inference, evaluation) reads a `Graph`.

In memory, a `Graph` is a frozen dataclass of numpy arrays:

* `item_ids [N]`, `pivot_ids [M]`: raw ids (unicode strings) of row i.
* `item_to_pivot`, `pivot_to_item`: `CSR` adjacency in both directions. Rows are
  sorted, duplicate edges removed; both hold the same E edges.
* `features`: `ItemFeatures` -- dense float32 `[N, D]` (D may be 0), sparse
  id-list fields (categorical/multi-hot and hashed text tokens) as CSR rows,
  and `log_degree [N] = log1p(item degree in the training graph)`, always.
* `pairs`: `ItemPairs`, the labelled (query, positive) item pairs with their
  split (train / validation / test) for the item-to-item protocol, and
  optionally the group (the user / interaction log) each pair came from:
  pairs of one group are correlated, so confidence intervals resample groups
  (`pinsage_tf.significance`).
* `heldout`: `HeldOut`, per-pivot held-out items for the user protocol
  (NGCF/LightGCN Recall/NDCG); rows are pivots, empty where not used.

On disk (format version 1) a graph is a directory:

    manifest.json        format, version, name, counts, feature schema,
                         metadata, and for every array file its shape, dtype
                         and SHA-256.
    <array>.npy          one plain .npy per array (never pickled), so every
                         array can be memory-mapped and a graph larger than RAM
                         still opens.

`save_graph` validates the graph and writes it atomically (temporary directory,
then rename). `load_graph` checks the manifest and, by default, every checksum,
and names the bad file when something does not match. Derived tables (e.g.
neighborhoods) live in sub-directories of the graph directory and are not part
of the graph's checksum set.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

from pinsage_tf import atomic

FORMAT = "pinsage_tf.graph"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPARSE_KINDS = ("categorical", "hashed_text")


class GraphFormatError(ValueError):
  """A graph directory or in-memory graph violates the format contract."""


class Split(enum.IntEnum):
  """Split label of an item pair or a held-out interaction."""

  TRAIN = 0
  VALIDATION = 1
  TEST = 2


@dataclasses.dataclass(frozen=True)
class CSR:
  """Compressed sparse rows: row r holds `indices[indptr[r]:indptr[r + 1]]`.

  Attributes:
    indptr: int64 `[num_rows + 1]`, non-decreasing, `indptr[0] == 0`.
    indices: int32 `[nnz]` column ids.
  """

  indptr: np.ndarray
  indices: np.ndarray

  @property
  def num_rows(self) -> int:
    return int(self.indptr.shape[0]) - 1

  @property
  def nnz(self) -> int:
    return int(self.indices.shape[0])

  def row(self, r: int) -> np.ndarray:
    return self.indices[self.indptr[r]:self.indptr[r + 1]]

  def degrees(self) -> np.ndarray:
    """int64 `[num_rows]` row lengths."""
    return np.diff(self.indptr)

  @classmethod
  def from_pairs(cls, rows: np.ndarray, cols: np.ndarray, num_rows: int) -> "CSR":
    """Builds a CSR from (row, col) pairs; rows sorted, duplicates dropped."""
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    if rows.shape != cols.shape:
      raise ValueError(f"rows {rows.shape} and cols {cols.shape} differ in shape.")
    if rows.size:
      # Sort + adjacent-difference: numpy 2's hash-based np.unique is far
      # slower than a sort on large shuffled integer keys.
      width = int(cols.max()) + 1
      key = np.sort(rows * width + cols)
      key = key[np.concatenate([[True], key[1:] != key[:-1]])]
      rows, cols = key // width, key % width
    counts = np.bincount(rows, minlength=num_rows)
    if counts.shape[0] > num_rows:
      raise ValueError(f"row id {int(rows.max())} out of range for {num_rows} rows.")
    indptr = np.zeros(num_rows + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return cls(indptr=indptr, indices=cols.astype(np.int32))

  def transpose(self, num_cols: int) -> "CSR":
    rows = np.repeat(np.arange(self.num_rows, dtype=np.int64), self.degrees())
    return CSR.from_pairs(self.indices, rows, num_cols)

  def to_padded(self, max_len: int, pad: int = -1) -> np.ndarray:
    """Dense `[num_rows, max_len]` int32 copy, rows truncated or padded with `pad`."""
    out = np.full((self.num_rows, max_len), pad, dtype=np.int32)
    deg = np.minimum(self.degrees(), max_len)
    rows = np.repeat(np.arange(self.num_rows), deg)
    starts = np.repeat(self.indptr[:-1], deg)
    offs = np.arange(rows.shape[0]) - np.repeat(np.cumsum(deg) - deg, deg)
    out[rows, offs] = self.indices[starts + offs]
    return out

  def validate(self, name: str, num_rows: int, num_cols: int) -> None:
    if self.indptr.ndim != 1 or self.indptr.shape[0] != num_rows + 1:
      raise GraphFormatError(
          f"{name}: indptr must have shape [{num_rows + 1}], got {self.indptr.shape}.")
    if self.indptr[0] != 0 or self.indptr[-1] != self.nnz:
      raise GraphFormatError(f"{name}: indptr must start at 0 and end at nnz={self.nnz}.")
    if np.any(np.diff(self.indptr) < 0):
      raise GraphFormatError(f"{name}: indptr must be non-decreasing.")
    if self.nnz and (self.indices.min() < 0 or self.indices.max() >= num_cols):
      raise GraphFormatError(f"{name}: column ids must lie in [0, {num_cols}).")


@dataclasses.dataclass(frozen=True)
class SparseFeature:
  """A variable-length id-list item feature (e.g. genres, title tokens).

  Attributes:
    name: feature name, a valid file-name stem (letters, digits, `_`).
    kind: "categorical" (a closed vocabulary; `vocab` names each id) or
      "hashed_text" (token ids are hash buckets).
    vocab_size: ids lie in `[0, vocab_size)`.
    values: `CSR` with one row per item.
    vocab: optional unicode `[vocab_size]` names of the ids.
  """

  name: str
  kind: str
  vocab_size: int
  values: CSR
  vocab: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class ItemFeatures:
  """Item features. `dense [N, D]` float32, `log_degree [N]` float32."""

  dense: np.ndarray
  log_degree: np.ndarray
  dense_names: tuple[str, ...] = ()
  sparse: tuple[SparseFeature, ...] = ()

  @property
  def dense_dim(self) -> int:
    return int(self.dense.shape[1])

  def sparse_feature(self, name: str) -> SparseFeature:
    for feature in self.sparse:
      if feature.name == name:
        return feature
    raise KeyError(f"no sparse feature {name!r}; have {[f.name for f in self.sparse]}")


@dataclasses.dataclass(frozen=True)
class ItemPairs:
  """Labelled (query, positive) item pairs: int32 `[P]` each, split int8 `[P]`.

  `group` (optional, int32 `[P]`, >= 0) names the interaction log (e.g. the
  user) each pair was cut from; None when the source does not say.
  """

  query: np.ndarray
  positive: np.ndarray
  split: np.ndarray
  group: np.ndarray | None = None

  def of(self, split: Split) -> tuple[np.ndarray, np.ndarray]:
    """Returns (query, positive) of the pairs in `split`."""
    keep = self.split == int(split)
    return self.query[keep], self.positive[keep]

  def groups_of(self, split: Split) -> np.ndarray | None:
    """The `group` of the pairs in `split` (aligned with `of`), or None."""
    if self.group is None:
      return None
    return self.group[self.split == int(split)]

  def subset(self, keep: np.ndarray) -> "ItemPairs":
    """The pairs selected by the bool mask or index array `keep` (groups kept)."""
    return ItemPairs(self.query[keep], self.positive[keep], self.split[keep],
                     None if self.group is None else self.group[keep])

  def count(self, split: Split) -> int:
    return int(np.count_nonzero(self.split == int(split)))


@dataclasses.dataclass(frozen=True)
class HeldOut:
  """Per-pivot held-out items for the user protocol (rows are pivots)."""

  validation: CSR
  test: CSR

  def of(self, split: Split) -> CSR:
    if split == Split.VALIDATION:
      return self.validation
    if split == Split.TEST:
      return self.test
    raise ValueError("HeldOut has only VALIDATION and TEST rows.")


def _all_finite(array: np.ndarray, block_rows: int = 65536) -> bool:
  """`np.isfinite(array).all()` in row blocks: no full-size temporary for a memory-mapped array."""
  return all(np.isfinite(array[start:start + block_rows]).all()
             for start in range(0, array.shape[0], block_rows))


def empty_csr(num_rows: int) -> CSR:
  return CSR(np.zeros(num_rows + 1, np.int64), np.zeros(0, np.int32))


@dataclasses.dataclass(frozen=True)
class Graph:
  """A bipartite item/pivot graph with features, pairs and held-out data.

  See the module docstring for the meaning and shape of every field.
  `metadata` is JSON-serialisable dataset information (source, protocol,
  preparation parameters); `item_titles` optional unicode `[N]` display names.
  """

  name: str
  item_ids: np.ndarray
  pivot_ids: np.ndarray
  item_to_pivot: CSR
  pivot_to_item: CSR
  features: ItemFeatures
  pairs: ItemPairs
  heldout: HeldOut
  item_titles: np.ndarray | None = None
  metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def num_items(self) -> int:
    return int(self.item_ids.shape[0])

  @property
  def num_pivots(self) -> int:
    return int(self.pivot_ids.shape[0])

  @property
  def num_edges(self) -> int:
    return self.item_to_pivot.nnz

  def item_degrees(self) -> np.ndarray:
    return self.item_to_pivot.degrees()

  def pivot_degrees(self) -> np.ndarray:
    return self.pivot_to_item.degrees()

  def pivots_of(self, item: int) -> np.ndarray:
    return self.item_to_pivot.row(item)

  def items_of(self, pivot: int) -> np.ndarray:
    return self.pivot_to_item.row(pivot)

  @functools.cached_property
  def _item_index(self) -> dict[str, int]:
    return {str(r): i for i, r in enumerate(self.item_ids.tolist())}

  @functools.cached_property
  def _pivot_index(self) -> dict[str, int]:
    return {str(r): i for i, r in enumerate(self.pivot_ids.tolist())}

  def item_index(self, raw_ids: Sequence[str]) -> np.ndarray:
    """Maps raw item ids to row indices; raises KeyError naming unknown ids."""
    index = self._item_index
    missing = [r for r in raw_ids if str(r) not in index]
    if missing:
      raise KeyError(f"unknown item ids (first 5): {missing[:5]}")
    return np.array([index[str(r)] for r in raw_ids], dtype=np.int32)

  def pivot_index(self, raw_ids: Sequence[str]) -> np.ndarray:
    """Maps raw pivot ids to row indices; raises KeyError naming unknown ids."""
    index = self._pivot_index
    missing = [r for r in raw_ids if str(r) not in index]
    if missing:
      raise KeyError(f"unknown pivot ids (first 5): {missing[:5]}")
    return np.array([index[str(r)] for r in raw_ids], dtype=np.int32)

  def validate(self) -> None:
    """Raises GraphFormatError when a field breaks the format contract."""
    n, m = self.num_items, self.num_pivots
    for name, ids in (("item_ids", self.item_ids), ("pivot_ids", self.pivot_ids)):
      if ids.ndim != 1 or ids.dtype.kind != "U":
        raise GraphFormatError(f"{name} must be a 1-D unicode array, got {ids.dtype} {ids.shape}.")
      if np.unique(ids).shape[0] != ids.shape[0]:
        raise GraphFormatError(f"{name} contains duplicate raw ids.")
    self.item_to_pivot.validate("item_to_pivot", n, m)
    self.pivot_to_item.validate("pivot_to_item", m, n)
    if self.item_to_pivot.nnz != self.pivot_to_item.nnz:
      raise GraphFormatError("item_to_pivot and pivot_to_item hold different edge counts.")
    f = self.features
    if f.dense.ndim != 2 or f.dense.shape[0] != n or f.dense.dtype != np.float32:
      raise GraphFormatError(f"features.dense must be float32 [{n}, D], got {f.dense.dtype} {f.dense.shape}.")
    if len(f.dense_names) != f.dense.shape[1]:
      raise GraphFormatError("features.dense_names must name every dense column.")
    if not _all_finite(f.dense):
      raise GraphFormatError("features.dense contains NaN or Inf.")
    if f.log_degree.shape != (n,) or f.log_degree.dtype != np.float32:
      raise GraphFormatError(f"features.log_degree must be float32 [{n}].")
    seen = set()
    for s in f.sparse:
      if not s.name.replace("_", "").isalnum() or s.name in seen:
        raise GraphFormatError(f"sparse feature name {s.name!r} must be unique and [A-Za-z0-9_].")
      seen.add(s.name)
      if s.kind not in SPARSE_KINDS:
        raise GraphFormatError(f"sparse feature {s.name}: kind must be one of {SPARSE_KINDS}.")
      s.values.validate(f"sparse feature {s.name}", n, s.vocab_size)
      if s.vocab is not None and s.vocab.shape != (s.vocab_size,):
        raise GraphFormatError(f"sparse feature {s.name}: vocab must have shape [{s.vocab_size}].")
    p = self.pairs
    if not (p.query.shape == p.positive.shape == p.split.shape) or p.query.ndim != 1:
      raise GraphFormatError("pairs.query, pairs.positive and pairs.split must be equal-length 1-D.")
    if p.query.size and (min(p.query.min(), p.positive.min()) < 0 or
                         max(p.query.max(), p.positive.max()) >= n):
      raise GraphFormatError(f"pair item ids must lie in [0, {n}).")
    if p.split.size and not np.isin(p.split, [s.value for s in Split]).all():
      raise GraphFormatError("pairs.split values must be 0 (train), 1 (validation) or 2 (test).")
    if p.group is not None:
      if p.group.shape != p.query.shape or p.group.dtype != np.int32:
        raise GraphFormatError(f"pairs.group must be int32 {p.query.shape} like pairs.query, "
                               f"got {p.group.dtype} {p.group.shape}.")
      if p.group.size and p.group.min() < 0:
        raise GraphFormatError("pairs.group values must be >= 0.")
    self.heldout.validation.validate("heldout.validation", m, n)
    self.heldout.test.validate("heldout.test", m, n)
    if self.item_titles is not None and self.item_titles.shape != (n,):
      raise GraphFormatError(f"item_titles must have shape [{n}].")
    json.dumps(dict(self.metadata))

  def summary(self) -> dict[str, Any]:
    """Counts and degree statistics, JSON-serialisable."""
    def stats(deg: np.ndarray) -> dict[str, float]:
      if deg.size == 0:
        return {"min": 0, "median": 0, "mean": 0.0, "max": 0, "zero": 0}
      return {"min": int(deg.min()), "median": float(np.median(deg)),
              "mean": round(float(deg.mean()), 3), "max": int(deg.max()),
              "zero": int(np.count_nonzero(deg == 0))}
    return {
        "name": self.name,
        "items": self.num_items,
        "pivots": self.num_pivots,
        "edges": self.num_edges,
        "item_degree": stats(self.item_degrees()),
        "pivot_degree": stats(self.pivot_degrees()),
        "pairs": {s.name.lower(): self.pairs.count(s) for s in Split},
        "heldout_interactions": {"validation": self.heldout.validation.nnz,
                                 "test": self.heldout.test.nnz},
        "features": _feature_schema(self.features),
    }


def _feature_schema(f: ItemFeatures) -> dict[str, Any]:
  return {
      "dense": {"dim": f.dense_dim, "names": list(f.dense_names)},
      "sparse": [{"name": s.name, "kind": s.kind, "vocab_size": int(s.vocab_size),
                  "nnz": s.values.nnz, "has_vocab": s.vocab is not None}
                 for s in f.sparse],
      "log_degree": True,
  }


def _arrays(graph: Graph) -> dict[str, np.ndarray]:
  out = {
      "item_ids": graph.item_ids,
      "pivot_ids": graph.pivot_ids,
      "item_pivot_indptr": graph.item_to_pivot.indptr,
      "item_pivot_indices": graph.item_to_pivot.indices,
      "pivot_item_indptr": graph.pivot_to_item.indptr,
      "pivot_item_indices": graph.pivot_to_item.indices,
      "dense_features": graph.features.dense,
      "log_degree": graph.features.log_degree,
      "pairs_query": graph.pairs.query,
      "pairs_positive": graph.pairs.positive,
      "pairs_split": graph.pairs.split,
      "heldout_validation_indptr": graph.heldout.validation.indptr,
      "heldout_validation_indices": graph.heldout.validation.indices,
      "heldout_test_indptr": graph.heldout.test.indptr,
      "heldout_test_indices": graph.heldout.test.indices,
  }
  for s in graph.features.sparse:
    out[f"sparse_{s.name}_indptr"] = s.values.indptr
    out[f"sparse_{s.name}_indices"] = s.values.indices
    if s.vocab is not None:
      out[f"sparse_{s.name}_vocab"] = s.vocab
  if graph.item_titles is not None:
    out["item_titles"] = graph.item_titles
  if graph.pairs.group is not None:
    out["pairs_group"] = graph.pairs.group
  return out


def save_graph(graph: Graph, directory: str | os.PathLike, overwrite: bool = False) -> dict[str, Any]:
  """Validates `graph` and writes it atomically to `directory`.

  Returns:
    The manifest that was written.

  Raises:
    GraphFormatError: the graph breaks the format contract (nothing written).
    FileExistsError: `directory` exists and `overwrite` is False.
  """
  graph.validate()
  with atomic.atomic_directory(directory, overwrite=overwrite) as tmp:
    files = {name: atomic.save_npy(tmp, name, array)
             for name, array in _arrays(graph).items()}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": graph.name,
        "counts": {"items": graph.num_items, "pivots": graph.num_pivots,
                   "edges": graph.num_edges,
                   "pairs": {s.name.lower(): graph.pairs.count(s) for s in Split}},
        "features": _feature_schema(graph.features),
        "metadata": dict(graph.metadata),
        "files": files,
    }
    atomic.write_json(os.path.join(tmp, MANIFEST), manifest)
  return manifest


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
  """Reads and checks `directory/manifest.json` (format and version)."""
  path = os.path.join(os.fspath(directory), MANIFEST)
  if not os.path.isfile(path):
    raise GraphFormatError(f"{path}: no graph manifest; run `python -m data.prepare` first.")
  try:
    with open(path) as f:
      manifest = json.load(f)
  except json.JSONDecodeError as e:
    raise GraphFormatError(f"{path}:{e.lineno}: invalid JSON ({e.msg}).") from e
  if manifest.get("format") != FORMAT:
    raise GraphFormatError(f"{path}: not a pinsage_tf graph (format={manifest.get('format')!r}).")
  if manifest.get("format_version") != FORMAT_VERSION:
    raise GraphFormatError(
        f"{path}: format_version {manifest.get('format_version')} is not supported "
        f"(this build reads {FORMAT_VERSION}); re-run data.prepare.")
  return manifest


def graph_fingerprint(directory: str | os.PathLike) -> str:
  """SHA-256 over the manifest's per-file checksums: identifies a graph."""
  manifest = read_manifest(directory)
  digest = hashlib.sha256()
  for name in sorted(manifest["files"]):
    digest.update(f"{name}={manifest['files'][name]['sha256']};".encode())
  return digest.hexdigest()


def load_graph(directory: str | os.PathLike, mmap: bool = True, verify: bool = True) -> Graph:
  """Loads a graph written by `save_graph`.

  Args:
    directory: the graph directory.
    mmap: memory-map the arrays (read-only) instead of reading them into RAM.
    verify: check every file's SHA-256 against the manifest (reads all bytes).

  Raises:
    GraphFormatError: naming the file that is missing, corrupt or inconsistent.
  """
  directory = os.fspath(directory)
  manifest = read_manifest(directory)
  files = manifest["files"]

  def load(name: str, optional: bool = False) -> np.ndarray | None:
    entry = files.get(name)
    if entry is None:
      if optional:
        return None
      raise GraphFormatError(f"{directory}/{MANIFEST}: no entry for required array {name!r}.")
    return atomic.load_npy(directory, entry, mmap=mmap, verify=verify, error=GraphFormatError)

  def csr(prefix: str) -> CSR:
    return CSR(load(prefix + "_indptr"), load(prefix + "_indices"))

  sparse = tuple(
      SparseFeature(name=s["name"], kind=s["kind"], vocab_size=int(s["vocab_size"]),
                    values=csr(f"sparse_{s['name']}"),
                    vocab=load(f"sparse_{s['name']}_vocab", optional=True))
      for s in manifest["features"]["sparse"])
  graph = Graph(
      name=manifest["name"],
      item_ids=load("item_ids"),
      pivot_ids=load("pivot_ids"),
      item_to_pivot=csr("item_pivot"),
      pivot_to_item=csr("pivot_item"),
      features=ItemFeatures(dense=load("dense_features"), log_degree=load("log_degree"),
                            dense_names=tuple(manifest["features"]["dense"]["names"]),
                            sparse=sparse),
      pairs=ItemPairs(load("pairs_query"), load("pairs_positive"), load("pairs_split"),
                      load("pairs_group", optional=True)),
      heldout=HeldOut(csr("heldout_validation"), csr("heldout_test")),
      item_titles=load("item_titles", optional=True),
      metadata=manifest.get("metadata", {}),
  )
  counts = manifest["counts"]
  if (graph.num_items, graph.num_pivots, graph.num_edges) != (
      counts["items"], counts["pivots"], counts["edges"]):
    raise GraphFormatError(f"{directory}/{MANIFEST}: counts do not match the arrays.")
  return graph


def build_graph(
    *,
    name: str,
    item_ids: Sequence[str] | np.ndarray,
    pivot_ids: Sequence[str] | np.ndarray,
    edge_items: np.ndarray,
    edge_pivots: np.ndarray,
    dense: np.ndarray | None = None,
    dense_names: Sequence[str] = (),
    sparse: Sequence[SparseFeature] = (),
    pairs: ItemPairs | None = None,
    heldout: HeldOut | None = None,
    item_titles: Sequence[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Graph:
  """Assembles a validated `Graph` from edge lists (item index, pivot index).

  Builds both CSR directions (duplicate edges dropped) and `log_degree`
  from the given (training) edges. Missing parts default to empty.
  """
  item_ids = np.asarray(item_ids, dtype=str)
  pivot_ids = np.asarray(pivot_ids, dtype=str)
  n, m = item_ids.shape[0], pivot_ids.shape[0]
  item_to_pivot = CSR.from_pairs(edge_items, edge_pivots, n)
  pivot_to_item = item_to_pivot.transpose(m)
  if dense is None:
    dense = np.zeros((n, 0), np.float32)
  empty = np.zeros(0, np.int32)
  graph = Graph(
      name=name,
      item_ids=item_ids,
      pivot_ids=pivot_ids,
      item_to_pivot=item_to_pivot,
      pivot_to_item=pivot_to_item,
      features=ItemFeatures(
          dense=np.ascontiguousarray(dense, dtype=np.float32),
          log_degree=np.log1p(item_to_pivot.degrees()).astype(np.float32),
          dense_names=tuple(dense_names), sparse=tuple(sparse)),
      pairs=pairs or ItemPairs(empty, empty, np.zeros(0, np.int8)),
      heldout=heldout or HeldOut(empty_csr(m), empty_csr(m)),
      item_titles=None if item_titles is None else np.asarray(item_titles, dtype=str),
      metadata=dict(metadata or {}),
  )
  graph.validate()
  return graph
