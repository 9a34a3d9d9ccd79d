"""`pinsage_retrieval`'s ScaNN signatures answered by a `scann_ops_pybind` searcher and numpy.

Why: ScaNN's TF op searches a batch on `cores - 1` threads (one on two
cores) and has no thread setting, and every SavedModel call costs TensorFlow's
dispatch (~0.5 ms). ScaNN's pybind searcher searches the same index on every
core given to it, and numpy does the id lookup, the bias column and the
exclusions around it.

Layout (next to the SavedModel, where stock TF Serving does not look):

    VERSION/assets.extra/scann/index/        the ScaNN index, serialised by
                                             scann_ops_pybind (the same files the
                                             SavedModel's ScaNN state was read from)
    VERSION/assets.extra/scann/search.json   {"format", "k", "dim", "with_bias",
                                             "num_items", "pre_reorder", "leaves",
                                             "signatures": {key: function}}

`write_assets` writes it at export time; the SavedModel itself is unchanged
and keeps working on its own (`tf.saved_model.load`, stock TF Serving with
ScaNN's ops).

Contract of `PybindRetrieval(version_dir, loaded, num_threads)`:

* `signatures`: the signature keys it answers (`related_items`,
  `serving_default`, `related_items_by_embedding`, and `items_for_pivot` when
  exported; `items_for_item_set` embeds its pivot with the model and stays with
  the SavedModel).
* `run(key, inputs)` returns what the SavedModel's signature returns for the
  same validated inputs: `neighbor_ids` object `[B, k]` of bytes ("" padding)
  and `scores` float32 `[B, k]` (-inf padding), the same neighbors and scores
  (the two searchers are one index; brute-force scores can differ in the last
  float bit with the batch's composition). It returns None for a request it
  does not answer: an empty batch, an unknown id or a non-finite embedding,
  which the caller sends to the SavedModel so that its own error (or empty
  answer) is returned.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Mapping

import numpy as np

from pinsage_tf import atomic

ASSETS_DIR = os.path.join("assets.extra", "scann")
INDEX_DIR = "index"
SEARCH_FILE = "search.json"
FORMAT = 1
# Largest [B, C, L] comparison `_drop_excluded` broadcasts (else row by row).
_MAX_COMPARISONS = 1 << 22
# What the searcher answers from besides the index: the SavedModel's variables of
# these names and its pivot vocabulary ("pivot_ids").
TABLES = ("embeddings", "item_ids", "pivot_ids", "pivot_embeddings", "pivot_indptr",
          "pivot_items")
# Signature function -> its input alias.
_INPUTS = {"related_items": "item_ids", "related_items_by_embedding": "embeddings",
           "items_for_pivot": "pivot_ids"}


def has_assets(version_dir: str | os.PathLike) -> bool:
  """Whether `version_dir` holds the pybind index and its search settings."""
  return os.path.isfile(os.path.join(os.fspath(version_dir), ASSETS_DIR, SEARCH_FILE))


def write_assets(version_dir: str | os.PathLike, artifacts_dir: str | os.PathLike,
                 search: Mapping[str, Any]) -> str:
  """Moves the serialised index into `version_dir` and writes its search settings.

  Args:
    version_dir: the (temporary) SavedModel version directory.
    artifacts_dir: the directory `scann_index.build_state` serialised the
      index of the SavedModel's ScaNN state to (moved, not copied).
    search: `RetrievalModule.pybind_search()`.

  Returns:
    The assets directory.
  """
  target = os.path.join(os.fspath(version_dir), ASSETS_DIR)
  os.makedirs(target, exist_ok=True)
  shutil.move(os.fspath(artifacts_dir), os.path.join(target, INDEX_DIR))
  atomic.write_json(os.path.join(target, SEARCH_FILE), {"format": FORMAT, **search})
  return target


class PybindRetrieval:
  """The ScaNN signatures of a loaded `pinsage_retrieval` version; see the module docstring.

  Args:
    version_dir: the version directory (with `ASSETS_DIR`).
    loaded: its `tf.saved_model.load` result (item ids, corpus and pivot
      tables are read from its variables, not duplicated on disk), or the
      same tables as arrays (`TABLES` -> array; `pivot_ids`: the pivot
      vocabulary, a list of str), e.g. read back from the version's
      checkpoint (`pinsage_tf.export.artifact_checks`).
    num_threads: threads the pybind searcher searches a batch on.
  """

  def __init__(self, version_dir: str | os.PathLike, loaded: Any, num_threads: int):
    root = os.path.join(os.fspath(version_dir), ASSETS_DIR)
    path = os.path.join(root, SEARCH_FILE)
    with open(path, encoding="utf-8") as f:
      config = json.load(f)
    if config.get("format") != FORMAT:
      raise ValueError(f"{path}: format {config.get('format')!r}, expected {FORMAT}; re-export "
                       "the model with this version of pinsage_tf.")
    self._k = int(config["k"])
    self._dim = int(config["dim"])
    self._with_bias = bool(config["with_bias"])
    self._n = int(config["num_items"])
    self._pre_reorder = config["pre_reorder"]
    self._leaves = -1 if config["leaves"] is None else int(config["leaves"])
    self._functions = {key: fn for key, fn in config["signatures"].items() if fn in _INPUTS}
    if isinstance(loaded, Mapping):
      tables = loaded
    else:
      tables = _Variables(loaded)
    self._corpus = np.asarray(tables["embeddings"], np.float32)  # [N, dim (+1)]
    ids = np.asarray(tables["item_ids"]).astype(object)  # [N] bytes
    if self._corpus.shape[0] != self._n or ids.shape != (self._n,):
      raise ValueError(f"{path}: num_items={self._n}, but the SavedModel holds "
                       f"{self._corpus.shape[0]} embeddings and {ids.shape[0]} ids.")
    self._rows = {item: row for row, item in enumerate(ids.tolist())}
    # [N + 1]: row -1 (padding) reads "" without a mask.
    self._ids = np.append(ids, np.array([b""], object))
    # keep[j]: the columns of k + 1 results without column j (the query item found there).
    self._keep = np.array([[c for c in range(self._k + 1) if c != j]
                           for j in range(self._k + 1)], np.int64)  # [k + 1, k]
    self._signatures = frozenset(self._functions)
    if "items_for_pivot" in self._functions.values():
      self._pivot_rows = {p.encode("utf-8"): row for row, p in enumerate(tables["pivot_ids"])}
      self._pivot_vectors = np.asarray(tables["pivot_embeddings"], np.float32)
      self._pivot_indptr = np.asarray(tables["pivot_indptr"])
      self._pivot_items = np.asarray(tables["pivot_items"])
    # Imported here: `has_assets` must work where ScaNN is not installed.
    from pinsage_tf import scann_index  # pylint: disable=g-import-not-at-top
    self._searcher = scann_index.load_searcher(os.path.join(root, INDEX_DIR), num_threads)

  @property
  def signatures(self) -> frozenset[str]:
    return self._signatures

  def run(self, key: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """The outputs of signature `key` for validated `inputs`, or None (see the module docstring)."""
    function = self._functions[key]
    values = np.asarray(inputs[_INPUTS[function]])
    if values.shape[0] == 0:
      return None
    if function == "related_items":
      rows = _lookup(self._rows, values)
      if rows is None:
        return None
      queries = self._corpus.take(rows, axis=0)  # a copy: its bias column becomes the query's 1
      if self._with_bias:
        queries[:, self._dim] = 1.0
      return self._outputs(*self._search(queries, rows[:, None]))
    if function == "related_items_by_embedding":
      queries = np.asarray(values, np.float32)
      if np.count_nonzero(np.isfinite(queries)) != queries.size:
        return None
      return self._outputs(*self._search(self._queries(queries), None))
    rows = _lookup(self._pivot_rows, values)
    if rows is None:
      return None
    starts, ends = self._pivot_indptr[rows], self._pivot_indptr[rows + 1]
    exclude = np.full((len(rows), int((ends - starts).max(initial=0))), -1, np.int64)
    for i, (start, end) in enumerate(zip(starts, ends)):
      exclude[i, :end - start] = self._pivot_items[start:end]
    return self.search_embeddings(self._pivot_vectors[rows], exclude)

  def search_embeddings(self, vectors: np.ndarray, exclude: np.ndarray | None
                        ) -> dict[str, np.ndarray]:
    """The k best items of finite `vectors [B, dim]`, without the `exclude` rows.

    `exclude`: None, or int `[B, L]` item rows per query (-1 = none). The
    outputs are a signature's (`neighbor_ids`, `scores`).
    """
    if exclude is not None:
      exclude = np.asarray(exclude, np.int64)
    return self._outputs(*self._search(self._queries(vectors), exclude))

  def _queries(self, vectors: np.ndarray) -> np.ndarray:
    """float32 `[B, dim (+1)]` C-contiguous queries of `[B, dim]` vectors."""
    if not self._with_bias:
      return np.ascontiguousarray(vectors, np.float32)
    biased = np.empty((vectors.shape[0], self._dim + 1), np.float32)  # [q, 1] . [z_i, b_i]
    biased[:, :self._dim] = vectors[:, :self._dim]
    biased[:, self._dim] = 1.0
    return biased

  def _search(self, queries: np.ndarray, exclude: np.ndarray | None
              ) -> tuple[np.ndarray, np.ndarray]:
    """As `RetrievalModule._search`: (scores float32 `[B, k]`, rows `[B, k]`, -1 padding)."""
    reorder = self._pre_reorder
    if exclude is None:
      count, pre_reorder = self._k, reorder
    elif exclude.shape[1] == 1:
      count, pre_reorder = self._k + 1, reorder
    else:
      count = min(self._k + int((exclude >= 0).sum(axis=1).max(initial=0)), self._n)
      pre_reorder = max(count, reorder) if reorder else -1
    # Batched even for one query: ScaNN's single-query `search` can score in
    # another float order than the TF op's batched search (last bit).
    index, scores = self._searcher.search_batched_parallel(
        queries, final_num_neighbors=count,
        pre_reorder_num_neighbors=-1 if pre_reorder is None else pre_reorder,
        leaves_to_search=self._leaves)
    return _results(scores, index, count, exclude, self._k, self._keep)

  def _outputs(self, scores: np.ndarray, index: np.ndarray) -> dict[str, np.ndarray]:
    return {"neighbor_ids": self._ids.take(index), "scores": scores}


class _Variables(Mapping):
  """The `TABLES` of a loaded SavedModel, read from its variables and pivot vocabulary."""

  def __init__(self, loaded: Any):
    self._loaded = loaded

  def __getitem__(self, name: str) -> Any:
    if name == "pivot_ids":
      vocab = self._loaded.pivots.vocabulary.asset_path.numpy().decode("utf-8")
      with open(vocab, encoding="utf-8", newline="\n") as f:
        return f.read().split("\n")[:-1]
    return getattr(self._loaded, name).numpy()

  def __iter__(self):
    return iter(TABLES)

  def __len__(self) -> int:
    return len(TABLES)


def _lookup(rows: Mapping[bytes, int], values: np.ndarray) -> np.ndarray | None:
  """int64 rows of raw ids (bytes or str), or None if one is unknown."""
  keys = values.tolist()
  try:
    return np.array([rows[key] for key in keys], np.int64)
  except KeyError:  # an unknown id, or str ids (the table holds bytes)
    pass
  found = []
  for key in keys:
    row = rows.get(key.encode("utf-8") if isinstance(key, str) else key)
    if row is None:
      return None
    found.append(row)
  return np.array(found, np.int64)


def _results(scores: np.ndarray, index: np.ndarray, count: int, exclude: np.ndarray | None,
             k: int, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The k results a query keeps from the searcher's answer, as `RetrievalModule._search`.

  A full answer (`count` results a row, every score finite), the common case,
  needs no padding, and one excluded row per query then needs no sort
  (`_drop_one`); any other answer takes `_padded_results`.

  Args:
    scores: float32 `[B, C]` and index `[B, C]` (C <= count) as the pybind
      searcher returns them: each row best first, short answers padded with
      (0, NaN) or cut.
    count: results searched for.
    exclude: None, or int64 `[B, L]` rows to drop per query (-1 = none).
    k: results kept.
    keep: int64 `[k + 1, k]`, row j the columns 0..k without j.

  Returns:
    (scores float32 `[B, k]`, rows `[B, k]`), -inf and -1 where fewer than k remain.
  """
  if index.shape[1] == count and np.count_nonzero(np.isfinite(scores)) == scores.size:
    if exclude is None:
      return scores, index
    if exclude.shape[1] == 1 and count == k + 1:
      return _drop_one(scores, index, exclude[:, 0], keep)
  return _padded_results(scores, index, count, exclude, k)


def _padded_results(scores: np.ndarray, index: np.ndarray, count: int,
                    exclude: np.ndarray | None, k: int) -> tuple[np.ndarray, np.ndarray]:
  """`_results` of any answer: padded as the TF search pads, then `_drop_excluded`'s sort."""
  index = index.astype(np.int64)
  if index.shape[1] < count:  # as the TF search pads a short answer
    pad = count - index.shape[1]
    index = np.pad(index, ((0, 0), (0, pad)), constant_values=-1)
    scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
  missing = np.isnan(scores)  # pybind pads a short answer with (0, NaN)
  index[missing], scores[missing] = -1, -np.inf
  if exclude is None:
    return scores, index
  return _drop_excluded(scores, index, exclude, k)


def _drop_one(scores: np.ndarray, index: np.ndarray, exclude: np.ndarray, keep: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
  """`_drop_excluded` of one row per query from a full answer, without a sort.

  Args:
    scores: float32 `[B, k + 1]`, every score finite, each row best first (as
      ScaNN returns it).
    index: `[B, k + 1]` rows, distinct within a row.
    exclude: int64 `[B]`, the row to drop from each query's results.
    keep: int64 `[k + 1, k]`, row j the columns without column j.

  Returns:
    (scores `[B, k]`, index `[B, k]`): each row without `exclude` where it was
    found, else without its last result; what the stable sort of
    `_drop_excluded` keeps from such an answer.
  """
  if index.shape[0] == 1:  # a list search costs less than numpy's calls for one row
    found = index[0].tolist()
    row = int(exclude[0])
    columns = keep[found.index(row) if row in found else len(found) - 1]
    return scores.take(columns, axis=1), index.take(columns, axis=1)
  hit = index == exclude[:, None]  # [B, k + 1], at most one True a row
  hit[:, -1] = True  # not found: argmax picks the last column
  flat = keep.take(hit.argmax(axis=1), axis=0)  # [B, k] columns
  flat += np.arange(0, index.size, index.shape[1])[:, None]  # flat positions
  return scores.take(flat), index.take(flat)


def _drop_excluded(scores: np.ndarray, index: np.ndarray, exclude: np.ndarray, k: int
                   ) -> tuple[np.ndarray, np.ndarray]:
  """numpy's `search.drop_excluded` for `[B, C]` results, C >= k: the first k not excluded."""
  if exclude.shape[1] == 1:
    excluded = index == exclude
  elif index.size * exclude.shape[1] <= _MAX_COMPARISONS:
    excluded = (index[:, :, None] == exclude[:, None, :]).any(axis=2)
  else:  # long exclusion lists: one sorted membership test per row
    excluded = np.stack([np.isin(found, drop) for found, drop in zip(index, exclude)])
  masked = np.where(excluded | (index < 0), np.float32(-np.inf), scores)
  order = np.argsort(-masked, axis=1, kind="stable")[:, :k]  # top_k: equal scores keep order
  order += (np.arange(index.shape[0]) * index.shape[1])[:, None]  # flat positions
  top = masked.ravel()[order]
  kept = index.ravel()[order]
  kept[top == -np.inf] = -1
  return top, kept
