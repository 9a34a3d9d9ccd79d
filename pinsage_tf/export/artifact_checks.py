"""Checks of a version built from a previous version's graph, on its files alone.

A reused version (`reuse.write_version`) is the previous version's
`saved_model.pb`, byte for byte, with a new checkpoint and new vocabularies.
That graph was loaded and queried through TensorFlow when it was traced
(`checks.saved_model_answers`), so what a new version can get wrong is in its
files: a checkpoint value, a vocabulary line, a warm-up request, the ScaNN
index. Loading the version through TensorFlow to find out costs ~0.3 s per
model and replaying its warm-up requests as much again; reading the files
back costs a fraction of that:

1. `read_back`: `saved_model.pb` must equal the previous version's, the
   checkpoint (`tf.train.load_checkpoint`) must hold exactly the module's
   keys, the previous object graph and, under each key, the module's
   variable value bit for bit; every asset must equal the module's.
2. `file_answers`: the version's signatures answered from what was read
   back, as its graph computes them: ids -> rows through the vocabulary
   assets, rows -> raw ids through the `item_ids` variable, exact search in
   numpy over the read-back corpus, ScaNN search by the pybind searcher over
   the version's serialised index (`retrieval_pybind`, what `serving.server`
   searches with), item sets embedded from the read-back h^{K-1} rows; the
   embedder's `embed_new_items` runs its function eagerly on the module,
   whose variables step 1 found equal to the files. Its warm-up requests
   are answered the same way (`replay_warmup_requests`).

`checks.check_retrieval` / `check_embedder` then send their usual requests
to `file_answers` and compare them with numpy's answers on the export's
inputs, so a wrong row (a corpus row, a vocabulary line) fails the export
like a wrong answer of a loaded version does.
"""

from __future__ import annotations

import dataclasses
import filecmp
import os
from typing import Any, Mapping

import numpy as np
import tensorflow as tf

from pinsage_tf import retrieval_exact
from pinsage_tf import retrieval_pybind
from pinsage_tf.export import checks
from pinsage_tf.export import retrieval
from pinsage_tf.export import reuse
from pinsage_tf.export import signatures as signatures_lib
from pinsage_tf.export import warmup

_FINGERPRINT = "fingerprint.pb"
# Item sets embedded at once by `items_for_item_set`.
_SET_BATCH = 64


@dataclasses.dataclass(frozen=True)
class WrittenVersion:
  """What a reused version's files hold, read back.

  Attributes:
    path: the version directory.
    values: checkpoint key -> its value, as read from the files.
    vocabularies: asset file name -> its lines.
  """

  path: str
  values: Mapping[str, np.ndarray]
  vocabularies: Mapping[str, list[str]]

  def variable(self, attribute: str) -> np.ndarray:
    """The value of the module's variable at `attribute` (e.g. "embeddings")."""
    return self.values[attribute + reuse.VALUE_SUFFIX]


def read_back(path: str, previous_dir: str, module: tf.Module) -> WrittenVersion:
  """Reads a version `reuse.write_version` wrote and compares it with `module`.

  Args:
    path: the new version directory.
    previous_dir: the version whose graph it reuses.
    module: the exported module.

  Raises:
    ExportError: a file differs from what the module holds (naming the file
      or checkpoint key).
  """
  if not filecmp.cmp(os.path.join(path, reuse.SAVED_MODEL),
                     os.path.join(previous_dir, reuse.SAVED_MODEL), shallow=False):
    raise checks.ExportError(f"{path}: {reuse.SAVED_MODEL} differs from the one of "
                             f"{previous_dir}, whose graph it reuses.")
  if not os.path.isfile(os.path.join(path, _FINGERPRINT)):
    raise checks.ExportError(f"{path}: {_FINGERPRINT} is missing.")
  try:
    reader = tf.train.load_checkpoint(os.path.join(path, reuse.VARIABLES))
    previous_graph = tf.train.load_checkpoint(
        os.path.join(previous_dir, reuse.VARIABLES)).get_tensor(reuse.OBJECT_GRAPH_KEY)
    variables = reuse.checkpoint_variables(module)
    keys = set(reader.get_variable_to_shape_map())
    if keys != set(variables) | {reuse.OBJECT_GRAPH_KEY}:
      raise checks.ExportError(
          f"{path}: the checkpoint holds the keys {sorted(keys - set(variables))[:5]} the module "
          f"has not, and lacks {sorted(set(variables) - keys)[:5]}.")
    if reader.get_tensor(reuse.OBJECT_GRAPH_KEY) != previous_graph:
      raise checks.ExportError(f"{path}: the checkpoint's object graph differs from the one "
                               f"of {previous_dir}.")
    values = {}
    for key, variable in variables.items():
      got, want = np.asarray(reader.get_tensor(key)), np.asarray(variable.numpy())
      if got.dtype != want.dtype or got.shape != want.shape or not np.array_equal(got, want):
        wrong = ("shape" if got.shape != want.shape
                 else f"{int(np.count_nonzero(got != want))} of {want.size} values")
        raise checks.ExportError(f"{path}: checkpoint value {key} differs from the exported "
                                 f"module's ({wrong}).")
      values[key] = got
  except tf.errors.OpError as e:
    raise checks.ExportError(f"{path}: the checkpoint cannot be read: {e.message}") from e
  assets = reuse.module_assets(module)
  written = set(os.listdir(os.path.join(path, reuse.ASSETS)))
  if written != set(assets):
    raise checks.ExportError(f"{path}: assets {sorted(written)}, the module has "
                             f"{sorted(assets)}.")
  vocabularies = {}
  for name, source in assets.items():
    if not filecmp.cmp(source, os.path.join(path, reuse.ASSETS, name), shallow=False):
      raise checks.ExportError(f"{path}: asset {name} differs from the module's {source}.")
    with open(source, encoding="utf-8", newline="\n") as f:
      vocabularies[name] = f.read().split("\n")[:-1]
  return WrittenVersion(path=path, values=values, vocabularies=vocabularies)


def _vocabulary(written: WrittenVersion, index: Any) -> list[str]:
  """The lines of the vocabulary asset of a `module_parts.StringIndex`."""
  return written.vocabularies[os.path.basename(
      os.fsdecode(index.vocabulary.asset_path.numpy()))]


class _Rows:
  """Raw id -> row through a vocabulary, failing as the SavedModel's lookup does."""

  def __init__(self, path: str, lines: list[str], what: str):
    self._path, self._what = path, what
    self._rows = {line.encode("utf-8"): row for row, line in enumerate(lines)}
    if len(self._rows) != len(lines):
      raise checks.ExportError(f"{path}: the {what} vocabulary holds duplicate lines.")

  def __len__(self) -> int:
    return len(self._rows)

  def __call__(self, ids: np.ndarray, signature: str, padding: bytes | None = None
               ) -> np.ndarray:
    """int64 rows of `ids` (any shape; `padding` -> -1); ExportError for an unknown id."""
    ids = np.asarray(ids, object)
    keys = [v.encode("utf-8") if isinstance(v, str) else v for v in ids.reshape(-1).tolist()]
    rows = np.array([-1 if key == padding else self._rows.get(key, -2) for key in keys],
                    np.int64).reshape(ids.shape)
    if np.any(rows == -2):
      raise checks.ExportError(f"{self._path}: {signature}: unknown {self._what} (not among "
                               f"the exported ids): {ids[rows == -2][:20].tolist()}")
    return rows


def file_answers(written: WrittenVersion, module: tf.Module, model: Any = None
                 ) -> checks.Answers:
  """The signatures of the version `written` holds, answered from its files.

  Args:
    written: `read_back` of the version.
    module: its `retrieval.RetrievalModule` or `embedder.EmbedderModule`
      (what the files were compared with; the search settings are taken
      from it).
    model: the trained `PinSageModel` (embeds `items_for_item_set`'s item
      sets; needed when the module has the pivot signatures).

  Returns:
    `checks.Answers` of every signature of the version. A request the
    SavedModel would refuse (an unknown id, a non-finite embedding, an empty
    item set) raises `ExportError`.

  Raises:
    ExportError: the files contradict each other (a vocabulary and the
      variables it indexes hold different row counts or ids).
  """
  if isinstance(module, retrieval.RetrievalModule):
    return _RetrievalFiles(written, module, model)
  return _EmbedderFiles(written, module)


class _RetrievalFiles:
  """`file_answers` of a `RetrievalModule` version."""

  def __init__(self, written: WrittenVersion, module: retrieval.RetrievalModule, model: Any):
    path = written.path
    self._path = path
    spec = module.graph_spec()
    self._k, self._dim, self._with_bias = spec["k"], spec["dim"], spec["with_bias"]
    vocabulary = _vocabulary(written, module.items)
    self._items = _Rows(path, vocabulary, "item_ids")
    self._ids = written.variable("item_ids").astype(object)  # [N] bytes
    n = len(vocabulary)
    if self._ids.tolist() != [line.encode("utf-8") for line in vocabulary]:
      raise checks.ExportError(f"{path}: the item_ids variable and the item vocabulary "
                               "differ.")
    corpus = written.variable("embeddings")  # [N (padded), dim (+1)]
    if corpus.shape[0] < n:
      raise checks.ExportError(f"{path}: {corpus.shape[0]} corpus rows for {n} items.")
    self._corpus = corpus[:n]
    self._model = None
    tables: dict[str, Any] = {"embeddings": self._corpus, "item_ids": self._ids}
    if module.items_for_pivot is not None:
      pivots = _vocabulary(written, module.pivots)
      self._pivots = _Rows(path, pivots, "pivot_ids")
      tables.update(pivot_ids=pivots, **{name: written.variable(name) for name in (
          "pivot_embeddings", "pivot_indptr", "pivot_items")})
      if not (tables["pivot_embeddings"].shape[0] == len(pivots)
              == tables["pivot_indptr"].shape[0] - 1):
        raise checks.ExportError(f"{path}: the pivot vocabulary, embeddings and item lists "
                                 "hold different pivot counts.")
      if model is None:
        raise ValueError("file_answers of a module with pivot signatures needs the model.")
      self._model = model
      self._last_inputs = tf.constant(written.variable("last_inputs"))  # [N, hidden]
      self._pivot_tables = tables
    self._pybind = (None if spec["search"] == "exact"
                    else retrieval_pybind.PybindRetrieval(path, tables, num_threads=1))

  def __call__(self, signature: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    if signature in ("related_items", signatures_lib.DEFAULT_SIGNATURE):
      rows = self._items(inputs["item_ids"], "related_items")
      return self._search(self._corpus[rows, :self._dim], rows[:, None])
    if signature == "related_items_by_embedding":
      vectors = np.asarray(inputs["embeddings"], np.float32)
      if not np.all(np.isfinite(vectors)):
        raise checks.ExportError(f"{self._path}: related_items_by_embedding: non-finite "
                                 "embeddings.")
      return self._search(vectors, None)
    if self._model is None or signature not in ("items_for_pivot", "items_for_item_set"):
      raise checks.ExportError(f"{self._path}: no signature {signature!r}.")
    if signature == "items_for_pivot":
      rows = self._pivots(inputs["pivot_ids"], signature)
      indptr, items = self._pivot_tables["pivot_indptr"], self._pivot_tables["pivot_items"]
      exclude = [items[indptr[r]:indptr[r + 1]] for r in rows]
      return self._search(self._pivot_tables["pivot_embeddings"][rows], _padded(exclude))
    index = self._items(inputs["item_ids"], signature, padding=b"")  # [B, L]
    count = (index >= 0).sum(axis=1)
    if np.any(count == 0):
      raise checks.ExportError(f"{self._path}: items_for_item_set: a row without any item.")
    weights = ((index >= 0) / np.maximum(count, 1)[:, None]).astype(np.float32)
    # In batches, as the checks send them to a loaded version: [B * L, hidden] rows.
    z = np.concatenate([np.zeros((0, self._dim), np.float32)] + [
        retrieval.item_set_embeddings(self._model, self._last_inputs,
                                      tf.constant(index[s:s + _SET_BATCH], tf.int32),
                                      tf.constant(weights[s:s + _SET_BATCH])).numpy()
        for s in range(0, index.shape[0], _SET_BATCH)])
    return self._search(z, index)

  def _search(self, vectors: np.ndarray, exclude: np.ndarray | None) -> dict[str, np.ndarray]:
    """The k best items of `vectors [B, dim]` without the `exclude [B, L]` rows (-1 none)."""
    if self._pybind is not None:
      return self._pybind.search_embeddings(vectors, exclude)
    queries = np.asarray(vectors, np.float32)
    if self._with_bias:  # [q, 1] . [z_i, b_i]
      queries = np.concatenate([queries, np.ones((queries.shape[0], 1), np.float32)], axis=1)
    lists = None if exclude is None else [row[row >= 0] for row in exclude]
    index, scores = retrieval_exact.top_k(queries, self._corpus, self._k, exclude=lists)
    ids = np.where(index >= 0, self._ids[np.maximum(index, 0)], b"")
    return {"neighbor_ids": ids.astype(object), "scores": scores}


class _EmbedderFiles:
  """`file_answers` of an `EmbedderModule` version."""

  def __init__(self, written: WrittenVersion, module: Any):
    self._path = written.path
    self._items = _Rows(written.path, _vocabulary(written, module.items), "item_ids")
    self._vectors = written.variable("embeddings")
    if self._vectors.shape[0] != len(self._items):
      raise checks.ExportError(f"{written.path}: {self._vectors.shape[0]} embeddings for "
                               f"{len(self._items)} items in the vocabulary.")
    self._new_items = module.embed_new_items

  def __call__(self, signature: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    if signature in ("embed_items", signatures_lib.DEFAULT_SIGNATURE):
      return {"embeddings": self._vectors[self._items(inputs["item_ids"], "embed_items")]}
    if signature != "embed_new_items" or self._new_items is None:
      raise checks.ExportError(f"{self._path}: no signature {signature!r}.")
    try:
      out = self._new_items.python_function(
          {key: tf.constant(value) for key, value in inputs.items()})
    except tf.errors.InvalidArgumentError as e:
      raise checks.ExportError(f"{self._path}: embed_new_items: {e.message}") from e
    return {"embeddings": out["embeddings"].numpy()}


def _padded(rows: list[np.ndarray]) -> np.ndarray:
  """int64 `[B, max length]` of the row lists, -1 padding."""
  out = np.full((len(rows), max([0] + [len(r) for r in rows])), -1, np.int64)
  for q, r in enumerate(rows):
    out[q, :len(r)] = r
  return out


def replay_warmup_requests(path: str, answers: checks.Answers) -> int:
  """Answers every warm-up request of the version at `path` with `answers`.

  Returns:
    The number of requests. Raises what `answers` raises (an unknown id).
  """
  count = 0
  for signature, inputs in warmup.read_warmup_requests(path):
    answers(signature, inputs)
    count += 1
  return count
