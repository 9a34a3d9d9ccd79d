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
      tables are read from its variables, not duplicated on disk).
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
    self._corpus = np.asarray(loaded.embeddings.numpy(), np.float32)  # [N, dim (+1)]
    self._ids = loaded.item_ids.numpy().astype(object)  # [N] bytes
    if self._corpus.shape[0] != self._n or self._ids.shape != (self._n,):
      raise ValueError(f"{path}: num_items={self._n}, but the SavedModel holds "
                       f"{self._corpus.shape[0]} embeddings and {self._ids.shape[0]} ids.")
    self._rows = {item: row for row, item in enumerate(self._ids.tolist())}
    if "items_for_pivot" in self._functions.values():
      vocab = loaded.pivots.vocabulary.asset_path.numpy().decode("utf-8")
      with open(vocab, encoding="utf-8", newline="\n") as f:
        pivots = f.read().split("\n")[:-1]
      self._pivot_rows = {p.encode("utf-8"): row for row, p in enumerate(pivots)}
      self._pivot_vectors = np.asarray(loaded.pivot_embeddings.numpy(), np.float32)
      self._pivot_indptr = loaded.pivot_indptr.numpy()
      self._pivot_items = loaded.pivot_items.numpy()
    # Imported here: `has_assets` must work where ScaNN is not installed.
    from pinsage_tf import scann_index  # pylint: disable=g-import-not-at-top
    self._searcher = scann_index.load_searcher(os.path.join(root, INDEX_DIR), num_threads)

  @property
  def signatures(self) -> frozenset[str]:
    return frozenset(self._functions)

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
      return self._outputs(*self._search(self._corpus[rows], rows[:, None]))
    if function == "related_items_by_embedding":
      queries = np.asarray(values, np.float32)
      if not np.isfinite(queries).all():
        return None
      return self._outputs(*self._search(queries, None))
    rows = _lookup(self._pivot_rows, values)
    if rows is None:
      return None
    starts, ends = self._pivot_indptr[rows], self._pivot_indptr[rows + 1]
    exclude = np.full((len(rows), int((ends - starts).max(initial=0))), -1, np.int64)
    for i, (start, end) in enumerate(zip(starts, ends)):
      exclude[i, :end - start] = self._pivot_items[start:end]
    return self._outputs(*self._search(self._pivot_vectors[rows], exclude))

  def _search(self, queries: np.ndarray, exclude: np.ndarray | None
              ) -> tuple[np.ndarray, np.ndarray]:
    """As `RetrievalModule._search`: (scores float32 `[B, k]`, rows int64 `[B, k]`, -1 padding)."""
    if self._with_bias:  # [q, 1] . [z_i, b_i] = q . z_i + b_i
      biased = np.empty((queries.shape[0], self._dim + 1), np.float32)
      biased[:, :self._dim] = queries[:, :self._dim]
      biased[:, self._dim] = 1.0
      queries = biased
    queries = np.ascontiguousarray(queries, np.float32)
    reorder = self._pre_reorder
    if exclude is None:
      count, pre_reorder = self._k, reorder
    elif exclude.shape[1] == 1:
      count, pre_reorder = self._k + 1, reorder
    else:
      count = min(self._k + int((exclude >= 0).sum(axis=1).max(initial=0)), self._n)
      pre_reorder = max(count, reorder) if reorder else -1
    index, scores = self._searcher.search_batched_parallel(
        queries, final_num_neighbors=count,
        pre_reorder_num_neighbors=-1 if pre_reorder is None else pre_reorder,
        leaves_to_search=self._leaves)
    index = index.astype(np.int64)
    if index.shape[1] < count:  # as the TF search pads a short answer
      pad = count - index.shape[1]
      index = np.pad(index, ((0, 0), (0, pad)), constant_values=-1)
      scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    missing = np.isnan(scores)  # pybind pads a short answer with (0, NaN)
    index[missing], scores[missing] = -1, -np.inf
    if exclude is None:
      return scores, index
    return _drop_excluded(scores, index, exclude, self._k)

  def _outputs(self, scores: np.ndarray, index: np.ndarray) -> dict[str, np.ndarray]:
    ids = self._ids[np.maximum(index, 0)]
    ids[index < 0] = b""
    return {"neighbor_ids": ids, "scores": scores}


def _lookup(rows: Mapping[bytes, int], values: np.ndarray) -> np.ndarray | None:
  """int64 rows of raw ids (bytes or str), or None if one is unknown."""
  out = np.empty(values.shape[0], np.int64)
  for i, value in enumerate(values.tolist()):
    row = rows.get(value.encode("utf-8") if isinstance(value, str) else value)
    if row is None:
      return None
    out[i] = row
  return out


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
