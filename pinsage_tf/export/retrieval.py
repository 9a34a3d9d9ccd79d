"""The retrieval models: related items of an item, an embedding, a pivot or an item set.

`RetrievalModule` is exported twice: `pinsage_retrieval` searches a ScaNN
index (custom ops), `pinsage_retrieval_exact` searches by brute force with
stock TensorFlow ops. `PivotTables` adds the pivot signatures for a model
trained with the pivot objective.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import tensorflow as tf

from pinsage_tf import graph as graph_lib
from pinsage_tf import retrieval_exact
from pinsage_tf import scann_index
from pinsage_tf.export import module_parts
from pinsage_tf.export import search
from pinsage_tf.export import signatures as signatures_lib


@dataclasses.dataclass(frozen=True)
class PivotTables:
  """What the retrieval models' pivot signatures serve from.

  Attributes:
    model: the trained `PinSageModel`; its last convolution and head embed
      request-time item sets (only their variables are saved).
    vocab_file: the graph's raw pivot ids, one per line (row p = pivot p).
    vectors: float32 `[M, dim]` the stored pivot embeddings.
    pivot_to_item: the graph's pivot -> item `CSR` (what `items_for_pivot`
      excludes).
    last_inputs: float32 `[N, hidden]` h^{K-1} of every item.
  """

  model: Any
  vocab_file: str
  vectors: np.ndarray
  pivot_to_item: graph_lib.CSR
  last_inputs: np.ndarray


def item_set_embeddings(model, last_inputs: tf.Tensor, index: tf.Tensor, weights: tf.Tensor
                        ) -> tf.Tensor:
  """`items_for_item_set`'s query embeddings: float32 `[B, dim]`.

  Args:
    model: the trained `PinSageModel` (its last convolution and head).
    last_inputs: float32 `[N, hidden]` h^{K-1} of every item.
    index: int32 `[B, L]` the given items' rows (-1 padding).
    weights: float32 `[B, L]` their weights (0 on padding).
  """
  b, width = tf.shape(index)[0], tf.shape(index)[1]
  # The pivot's neighbors are the given items: their h^{K-1} rows and (inside
  # pivot_hidden) their neighbor transforms, computed for these rows only.
  rows = tf.gather(last_inputs, tf.reshape(tf.maximum(index, 0), [-1]))  # [B * L, hidden]
  slots = tf.reshape(tf.range(b * width), [b, width])
  return model.head(model.pivot_hidden(rows, slots, weights, training=False))


class RetrievalModule(tf.Module):
  """The retrieval signatures over an item corpus (exact or ScaNN search).

  Signatures (B = batch, k = `k`, dim = embedding width, ids are raw strings;
  every one returns `neighbor_ids` string `[B, k]` and `scores` float32
  `[B, k]`, best first):

  * `related_items` (also `serving_default`): `item_ids` `[B]`; the query
    item itself is excluded.
  * `related_items_by_embedding`: `embeddings` float32 `[B, dim]`; nothing is
    excluded.
  * With `pivots`, `items_for_pivot`: `pivot_ids` `[B]` of the exported
    graph, scored by each pivot's stored embedding; the pivot's graph items
    are excluded.
  * With `pivots`, `items_for_item_set`: `item_ids` `[B, L]` ("" padding), a
    pivot given at request time by its items, embedded like
    `PinSageModel.pivot_hidden` + head (the last convolution over the items'
    h^{K-1}, uniform weights over the row's non-padding slots, so an item given
    twice weighs twice); the given items are excluded; a row without any item
    fails the request.

  With biases item i scores `q . z_i + b_i`: the corpus holds `[z_i, b_i]`
  and each query `[q, 1]`, so every search is one inner product. Excluded
  items are masked by exact search; ScaNN searches (and re-scores)
  min(k + E_max, N) neighbors, E_max the batch's largest exclusion, and
  drops them. A row with fewer than k eligible items is padded with "" and
  score -inf. Unknown ids fail the request with
  `tf.errors.InvalidArgumentError` naming the signature and the ids.

  Args:
    item_ids: unicode `[N]` raw ids (row i = item i).
    vectors: float32 `[N, dim]` item embeddings.
    vocab_file: file with `item_ids`, one per line (becomes an asset).
    k: neighbors returned.
    scann_state: a `scann_index.build_state` result for ScaNN search (over
      `retrieval_exact.biased_corpus(vectors, bias)`), or None for exact brute force with
      stock ops.
    block_size: exact search's corpus rows per step.
    bias: optional float32 `[N]` item biases added to every score.
    pivots: the pivot signatures' tables (None: no pivot signatures).
    scann_reorder: candidates the ScaNN search re-scores (the tuned or the
      index's `reorder_num_neighbors`; None without reordering): a search
      excluding many items re-scores more.
    scann_leaves: partitions the ScaNN search visits (tree_ah: the tuned or
      the index's `num_leaves_to_search`; None: the index's default).
  """

  def __init__(self, item_ids: np.ndarray, vectors: np.ndarray, vocab_file: str, k: int,
               scann_state: Any = None, block_size: int = 32768,
               bias: np.ndarray | None = None, pivots: PivotTables | None = None,
               scann_reorder: int | None = None, scann_leaves: int | None = None):
    super().__init__(name="pinsage_retrieval")
    n, dim = vectors.shape
    self._dim = int(dim)
    self._with_bias = bias is not None
    vectors = retrieval_exact.biased_corpus(vectors, bias)
    if not 0 < k < n:
      raise ValueError(f"num_neighbors={k} must lie in [1, {n - 1}] for a corpus of {n} items "
                       "(the query itself is excluded).")
    self._k = int(k)
    self._n = int(n)
    self.items = module_parts.StringIndex(vocab_file, n, "item_ids", name="items")
    self.item_ids = module_parts.corpus_variable(
        np.char.encode(np.asarray(item_ids, dtype=str), "utf-8"), "item_ids")
    self.scann = scann_state
    self._scann_reorder = scann_reorder
    self._scann_leaves = scann_leaves
    if scann_state is None:
      # A small corpus is scored in one block of the next power of two rows:
      # the block size is part of the graph, so it stays the same while the
      # corpus grows (`graph_spec`), and padding stays below 2x.
      self.block_size = max(min(int(block_size), 1 << (n - 1).bit_length()), k + 1)
      padded = math.ceil(n / self.block_size) * self.block_size
      corpus = np.zeros((padded, vectors.shape[1]), np.float32)
      corpus[:n] = vectors
    else:
      corpus = np.asarray(vectors, np.float32)
    self.embeddings = module_parts.corpus_variable(corpus, "embeddings")

    self.related_items = tf.function(
        self._related_items, autograph=False,
        input_signature=[tf.TensorSpec([None], tf.string, name="item_ids")])
    self.related_items_by_embedding = tf.function(
        self._related_items_by_embedding, autograph=False,
        input_signature=[tf.TensorSpec([None, dim], tf.float32, name="embeddings")])
    self.items_for_pivot = self.items_for_item_set = None
    if pivots is None:
      return
    model = pivots.model
    m = int(pivots.vectors.shape[0])
    if pivots.vectors.shape != (m, dim) or pivots.pivot_to_item.num_rows != m:
      raise ValueError(f"pivot vectors {pivots.vectors.shape} and {pivots.pivot_to_item.num_rows} "
                       f"pivot item lists must be [M, {dim}] and M.")
    if pivots.last_inputs.shape != (n, model.config.hidden_dim):
      raise ValueError(f"last_inputs must be h^(K-1) [{n}, {model.config.hidden_dim}], got "
                       f"{pivots.last_inputs.shape}.")
    self.pivots = module_parts.StringIndex(pivots.vocab_file, m, "pivot_ids", name="pivots")
    self.pivot_embeddings = module_parts.corpus_variable(
        np.asarray(pivots.vectors, np.float32), "pivot_embeddings")
    self.pivot_indptr = module_parts.corpus_variable(
        np.asarray(pivots.pivot_to_item.indptr, np.int64), "pivot_indptr")
    self.pivot_items = module_parts.corpus_variable(
        np.asarray(pivots.pivot_to_item.indices, np.int32), "pivot_items")
    self.last_inputs = module_parts.corpus_variable(
        np.asarray(pivots.last_inputs, np.float32), "last_inputs")
    # Only the layers a pivot embedding runs through are saved, as plain
    # variables (the functions close over the Keras layers; see EmbedderModule).
    self.model_variables = [*model.convs[-1].variables, *model.head_hidden.variables,
                            *model.head_output.variables]
    self._model = module_parts.Untracked(model)
    self.items_for_pivot = tf.function(
        self._items_for_pivot, autograph=False,
        input_signature=[tf.TensorSpec([None], tf.string, name="pivot_ids")])
    self.items_for_item_set = tf.function(
        self._items_for_item_set, autograph=False,
        input_signature=[tf.TensorSpec([None, None], tf.string, name="item_ids")])

  def _search(self, queries: tf.Tensor, exclude: tf.Tensor | None):
    """Top-k of `queries [B, dim]`; `exclude` int32 `[B]` / `[B, L]` rows (-1 none) or None."""
    if self._with_bias:  # [q, 1] . [z_i, b_i] = q . z_i + b_i
      queries = tf.concat([queries[:, :self._dim], tf.ones_like(queries[:, :1])], axis=1)
    n = tf.shape(self.item_ids)[0]  # read at run time (module_parts)
    if self.scann is None:
      return search.exact_top_k(self.embeddings, n, queries, self._k, self.block_size,
                                exclude=exclude)
    knobs = {"pre_reorder": self._scann_reorder, "leaves": self._scann_leaves}
    if exclude is None:
      return scann_index.search(self.scann, queries, self._k, **knobs)
    if exclude.shape.rank == 1:
      scores, index = scann_index.search(self.scann, queries, self._k + 1, **knobs)
    else:
      excluded = tf.reduce_sum(tf.cast(exclude >= 0, tf.int32), axis=1)  # [B]
      count = tf.minimum(self._k + tf.reduce_max(tf.concat([excluded, [0]], axis=0)), n)
      # A reordering index returns at most its reorder size: re-score enough.
      pre_reorder = tf.maximum(count, self._scann_reorder) if self._scann_reorder else -1
      scores, index = search.scann_search(self.scann, queries, count, pre_reorder,
                                          leaves=self._scann_leaves)
    return search.drop_excluded(scores, index, exclude, self._k)

  def _outputs(self, scores, index):
    ids = tf.gather(self.item_ids, tf.maximum(index, 0))
    ids = tf.where(index >= 0, ids, tf.zeros_like(ids))  # "" where nothing was found
    return {"neighbor_ids": tf.ensure_shape(ids, [None, self._k]),
            "scores": tf.ensure_shape(scores, [None, self._k])}

  def _related_items(self, item_ids):
    index = self.items.lookup(item_ids, "related_items")
    queries = tf.gather(self.embeddings, index)
    return self._outputs(*self._search(queries, index))

  def _related_items_by_embedding(self, embeddings):
    # A NaN or infinite query would come back as -1 indices from the search;
    # name the input instead.
    finite = tf.reduce_all(tf.math.is_finite(embeddings), axis=1)  # [B]
    bad_rows = tf.where(tf.logical_not(finite))[:, 0]
    check = tf.debugging.Assert(
        tf.equal(tf.size(bad_rows), 0),
        ["related_items_by_embedding: embeddings must be finite (no NaN or Inf); rows with "
         "non-finite values:", bad_rows], summarize=20, name="finite_embeddings")
    with tf.control_dependencies([check]):
      embeddings = tf.identity(embeddings)
    return self._outputs(*self._search(embeddings, None))

  def _items_for_pivot(self, pivot_ids):
    index = self.pivots.lookup(pivot_ids, "items_for_pivot")
    starts = tf.gather(self.pivot_indptr, index)
    ends = tf.gather(self.pivot_indptr, index + 1)
    graph_items = tf.gather(self.pivot_items, tf.ragged.range(starts, ends))  # [B, (deg)]
    exclude = graph_items.to_tensor(default_value=-1)  # [B, max deg]
    return self._outputs(*self._search(tf.gather(self.pivot_embeddings, index), exclude))

  def _items_for_item_set(self, item_ids):
    model = self._model.value
    index = self.items.lookup(item_ids, "items_for_item_set", padding="")  # [B, L], -1 padding
    given = tf.cast(index >= 0, tf.float32)
    count = tf.reduce_sum(given, axis=1)  # [B]
    empty = tf.where(tf.equal(count, 0))[:, 0]
    check = tf.debugging.Assert(
        tf.equal(tf.size(empty), 0),
        ["items_for_item_set: every row of item_ids needs at least one item id (\"\" is "
         "padding); rows without one:", empty], summarize=20, name="empty_item_set")
    with tf.control_dependencies([check]):
      weights = tf.identity(given / tf.maximum(count, 1.0)[:, None])  # uniform, 0 on padding
    z = item_set_embeddings(model, self.last_inputs, index, weights)
    return self._outputs(*self._search(z, index))

  def pybind_search(self) -> dict[str, Any]:
    """The settings `retrieval_pybind` searches the same ScaNN index with (JSON).

    Raises:
      ValueError: the module searches exactly (no ScaNN index).
    """
    if self.scann is None:
      raise ValueError("pybind_search needs a ScaNN module (scann_state), not exact search.")
    functions = {"related_items": "related_items",
                 signatures_lib.DEFAULT_SIGNATURE: "related_items",
                 "related_items_by_embedding": "related_items_by_embedding"}
    if self.items_for_pivot is not None:
      functions["items_for_pivot"] = "items_for_pivot"
    return {"k": self._k, "dim": self._dim, "with_bias": self._with_bias, "num_items": self._n,
            "pre_reorder": self._scann_reorder, "leaves": self._scann_leaves,
            "signatures": functions}

  def graph_spec(self) -> dict[str, Any]:
    """Every Python value the traced signatures depend on (JSON; `pinsage_tf.export.reuse`).

    Two modules with equal specs trace to the same graph whatever their
    corpus: only their variables and vocabularies differ.
    """
    model = None if self.items_for_pivot is None else self._model.value.config.to_dict()
    return {"module": "RetrievalModule", "k": self._k, "dim": self._dim,
            "with_bias": self._with_bias,
            "search": "exact" if self.scann is None else "scann",
            "block_size": self.block_size if self.scann is None else None,
            "scann_reorder": self._scann_reorder, "scann_leaves": self._scann_leaves,
            "pivot_model": model}

  def signatures(self) -> dict[str, Any]:
    """Signature key -> concrete function, for `tf.saved_model.save`."""
    related = self.related_items.get_concrete_function()
    out = {signatures_lib.DEFAULT_SIGNATURE: related, "related_items": related,
           "related_items_by_embedding": self.related_items_by_embedding.get_concrete_function()}
    if self.items_for_pivot is not None:
      out["items_for_pivot"] = self.items_for_pivot.get_concrete_function()
      out["items_for_item_set"] = self.items_for_item_set.get_concrete_function()
    return out
