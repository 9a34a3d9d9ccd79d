"""The embedder model: stored embeddings of existing items, inductive ones of new items.

`EmbedderModule` serves `embed_items` and, for an inductive model (no learned
per-item id embedding, `is_inductive`), the cold-start signature
`embed_new_items`, which embeds a new item from its features and its pivots
over the `first_traversal_neighborhoods` of those pivots.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from pinsage_tf import graph as graph_lib
from pinsage_tf import inference
from pinsage_tf import minibatch
from pinsage_tf import pipeline
from pinsage_tf.export import module_parts
from pinsage_tf.export import signatures as signatures_lib


def first_traversal_neighborhoods(pivot_index: tf.Tensor, pivot_indptr: tf.Tensor,
                                  pivot_items: tf.Tensor, num_items: int | tf.Tensor,
                                  num_neighbors: int) -> tuple[tf.Tensor, tf.Tensor]:
  """Importance neighborhoods of new items from one walk traversal (TF ops).

  New item b with valid pivots p_1..p_P' (duplicates allowed) visits item i
  with probability v[b, i] = sum_j [i in items(p_j)] / (P' * deg(p_j)).

  Args:
    pivot_index: int32 `[B, P]` pivot rows, -1 on padding.
    pivot_indptr: int64 `[M + 1]` CSR row pointers of pivot -> items.
    pivot_items: int32 `[nnz]` CSR item ids.
    num_items: N (an int or an int64 scalar tensor).
    num_neighbors: T.

  Returns:
    (ids int32 `[B, T]` most visited first, ties by lower index, -1 on
    padding; weights float32 `[B, T]` L1-normalised over the kept items, 0 on
    padding).
  """
  b = tf.shape(pivot_index)[0]
  valid = pivot_index >= 0
  given = tf.reduce_sum(tf.cast(valid, tf.float64), axis=1)  # [B] = P'
  slots = tf.where(valid)  # [S, 2] (row, slot) of each valid pivot
  row_of_slot = slots[:, 0]
  pivot = tf.gather_nd(pivot_index, slots)  # [S]
  starts = tf.gather(pivot_indptr, pivot)
  degree = tf.gather(pivot_indptr, pivot + 1) - starts  # int64 [S]
  slot_weight = 1.0 / (tf.gather(given, row_of_slot) * tf.cast(degree, tf.float64))
  positions = tf.ragged.range(starts, starts + degree)  # [S, (deg)]
  slot_of_visit = positions.value_rowids()
  item = tf.cast(tf.gather(pivot_items, positions.flat_values), tf.int64)  # [V]
  row = tf.gather(row_of_slot, slot_of_visit)
  key = row * num_items + item
  unique_key, which = tf.unique(key)
  prob = tf.math.unsorted_segment_sum(tf.gather(slot_weight, slot_of_visit), which,
                                      tf.shape(unique_key)[0])
  u_row = unique_key // num_items
  u_item = unique_key % num_items
  # Order by (row asc, prob desc, item asc) with three stable sorts.
  order = tf.argsort(u_item, stable=True)
  order = tf.gather(order, tf.argsort(-tf.gather(prob, order), stable=True))
  order = tf.gather(order, tf.argsort(tf.gather(u_row, order), stable=True))
  u_row, u_item, prob = (tf.gather(x, order) for x in (u_row, u_item, prob))
  per_row = tf.math.bincount(tf.cast(u_row, tf.int32), minlength=b, maxlength=b,
                             dtype=tf.int64)
  row_start = tf.cumsum(per_row, exclusive=True)
  rank = tf.range(tf.size(u_row, out_type=tf.int64), dtype=tf.int64) - tf.gather(row_start, u_row)
  top = rank < num_neighbors
  where = tf.stack([tf.boolean_mask(u_row, top), tf.boolean_mask(rank, top)], axis=1)
  shape = tf.stack([tf.cast(b, tf.int64), tf.constant(num_neighbors, tf.int64)])
  ids = tf.tensor_scatter_nd_update(
      tf.fill(tf.cast(shape, tf.int32), tf.constant(-1, tf.int32)), where,
      tf.cast(tf.boolean_mask(u_item, top), tf.int32))
  raw = tf.scatter_nd(where, tf.boolean_mask(prob, top), shape)
  weights = tf.math.divide_no_nan(raw, tf.reduce_sum(raw, axis=1, keepdims=True))
  return ids, tf.cast(weights, tf.float32)


class EmbedderModule(tf.Module):
  """`embed_items` (lookup) and, for inductive models, `embed_new_items`.

  Signatures (B = batch, dim = embedding width, D = dense feature width):

  * `embed_items` (also `serving_default`): `item_ids` string `[B]` ->
    `embeddings` float32 `[B, dim]`, the rows of the inference job's output.
  * `embed_new_items` (with `model`): a NEW item's `dense` float32 `[B, D]`
    (omitted when D = 0), one `sparse_<feature>` int32 `[B, L]` per sparse
    feature (-1 padding, any L) and `pivot_ids` string `[B, P]` ("" padding)
    -> `embeddings` float32 `[B, dim]`, computed by the trained model without
    retraining:
      1. neighborhood: `first_traversal_neighborhoods` of the given pivots
         (an item with no pivots has an empty neighborhood, pooling gives 0);
      2. h^0 = encoder(features, log_degree = log1p(P')), P' the number of
         given pivots (duplicates count);
      3. h^{k+1} = conv_k.combine(h^k, conv_k.pool(transformed[k][neighbors],
         weights)) for k = 0..K-1, with the neighbor transforms of ALL
         existing items precomputed by `layer_tables` (the same neighborhood
         table as the `embed_items` vectors);
      4. the dense head and L2 normalisation.
    Existing items are not changed by a new item (no pivot links back to it).
    An EXISTING item embedded this way gets a vector close to, not equal to,
    its `embed_items` row: its neighborhood here is the one-hop visit
    distribution (which contains the item itself) instead of the multi-hop
    random-walk table it was inferred with.

  Unknown `item_ids` / `pivot_ids` and out-of-range sparse ids fail the
  request with `tf.errors.InvalidArgumentError` naming the input and values.

  Args:
    item_vocab_file: item ids, one per line.
    vectors: float32 `[N, dim]` the inference job's embeddings.
    model: the trained `PinSageModel` (None: no `embed_new_items`).
    transformed: K arrays `[N, neighbor_dim]`, the neighbor transform of
      layer k applied to h^k of every item (`layer_tables`).
    graph: the graph (pivot ids, pivot -> items CSR).
    pivot_vocab_file: pivot ids, one per line.
    num_neighbors: T of the cold-start neighborhoods.
  """

  def __init__(self, item_vocab_file: str, vectors: np.ndarray, *, model=None,
               transformed: Sequence[np.ndarray] = (), graph: graph_lib.Graph | None = None,
               pivot_vocab_file: str | None = None, num_neighbors: int = 0):
    super().__init__(name="pinsage_embedder")
    n, dim = vectors.shape
    self.items = module_parts.StringIndex(item_vocab_file, n, "item_ids", name="items")
    self.embeddings = module_parts.corpus_variable(np.asarray(vectors, np.float32), "embeddings")
    self._dim = int(dim)
    self.embed_items = tf.function(
        self._embed_items, autograph=False,
        input_signature=[tf.TensorSpec([None], tf.string, name="item_ids")])
    self.embed_new_items = None
    if model is None:
      return
    config = model.config
    enc = config.encoder
    if len(transformed) != config.num_layers:
      raise ValueError(f"need {config.num_layers} layer tables, got {len(transformed)}.")
    self._num_neighbors = int(num_neighbors)
    self._sparse = tuple(enc.sparse_features)
    self._dense_dim = enc.dense_dim
    self.pivots = module_parts.StringIndex(pivot_vocab_file, graph.num_pivots, "pivot_ids",
                                           name="pivots")
    self.pivot_indptr = module_parts.corpus_variable(
        np.asarray(graph.pivot_to_item.indptr, np.int64), "pivot_indptr")
    self.pivot_items = module_parts.corpus_variable(
        np.asarray(graph.pivot_to_item.indices, np.int32), "pivot_items")
    self.layer_tables = [module_parts.corpus_variable(np.asarray(t, np.float32),
                                                      f"transformed_h{k}")
                         for k, t in enumerate(transformed)]
    # The model's variables are tracked as plain variables: the functions
    # below close over the Keras layers, so no Keras object is serialised.
    self.model_variables = list(model.variables)
    self._model = module_parts.Untracked(model)
    spec = {}
    if enc.dense_dim:
      spec["dense"] = tf.TensorSpec([None, enc.dense_dim], tf.float32, name="dense")
    for name, _ in enc.sparse_features:
      spec[f"sparse_{name}"] = tf.TensorSpec([None, None], tf.int32, name=f"sparse_{name}")
    spec["pivot_ids"] = tf.TensorSpec([None, None], tf.string, name="pivot_ids")
    self.embed_new_items = tf.function(self._embed_new_items, autograph=False,
                                       input_signature=[spec])

  def _embed_items(self, item_ids):
    index = self.items.lookup(item_ids, "embed_items")
    return {"embeddings": tf.gather(self.embeddings, index)}

  def _embed_new_items(self, inputs):
    model = self._model.value
    pivot_ids = inputs["pivot_ids"]
    b = tf.shape(pivot_ids)[0]
    checks = []
    for key, value in inputs.items():
      if key != "pivot_ids":
        checks.append(tf.debugging.assert_equal(
            tf.shape(value)[0], b,
            message=f"embed_new_items: input {key!r} must have as many rows as pivot_ids"))
    if self._dense_dim:
      finite = tf.reduce_all(tf.math.is_finite(inputs["dense"]), axis=1)  # [B]
      bad_rows = tf.where(tf.logical_not(finite))[:, 0]
      checks.append(tf.debugging.Assert(
          tf.equal(tf.size(bad_rows), 0),
          ["embed_new_items: dense features must be finite (no NaN or Inf); rows with "
           "non-finite values:", bad_rows], summarize=20, name="check_dense_finite"))
    sparse = []
    for name, vocab_size in self._sparse:
      ids = inputs[f"sparse_{name}"]
      bad = tf.boolean_mask(ids, (ids >= vocab_size) | (ids < -1))
      checks.append(tf.debugging.Assert(
          tf.equal(tf.size(bad), 0),
          [f"embed_new_items: sparse_{name} ids must be in [0, vocab_size={vocab_size}) "
           "or -1 for padding, got:", bad], summarize=20, name=f"check_sparse_{name}"))
      sparse.append(ids)
    with tf.control_dependencies(checks):
      # Everything downstream waits for the checks, so a bad request fails
      # with their message rather than inside an embedding lookup.
      pivot_index = self.pivots.lookup(pivot_ids, "embed_new_items", padding="")
      sparse = [tf.identity(ids) for ids in sparse]
      dense = (tf.identity(inputs["dense"]) if self._dense_dim
               else tf.zeros([b, 0], tf.float32))
    ids, weights = first_traversal_neighborhoods(
        pivot_index, self.pivot_indptr, self.pivot_items,
        tf.shape(self.embeddings, out_type=tf.int64)[0], self._num_neighbors)
    num_pivots = tf.reduce_sum(tf.cast(pivot_index >= 0, tf.float32), axis=1)
    node_inputs = minibatch.NodeInputs(
        item=tf.zeros([b], tf.int32), dense=dense, log_degree=tf.math.log1p(num_pivots),
        sparse=tuple(sparse))
    h = model.encode_inputs(node_inputs, training=False)  # h^0 [B, hidden]
    neighbors = tf.maximum(ids, 0)  # padding has weight 0
    for k, conv in enumerate(model.convs):
      pooled = conv.pool(tf.gather(self.layer_tables[k], neighbors), weights)
      h = conv.combine(h, pooled, training=False)  # h^{k+1}
    return {"embeddings": model.head(h)}

  def graph_spec(self) -> dict[str, Any]:
    """Every Python value the traced signatures depend on (JSON; `pinsage_tf.export.reuse`)."""
    model = None if self.embed_new_items is None else self._model.value.config.to_dict()
    spec: dict[str, Any] = {"module": "EmbedderModule", "dim": self._dim,
                            "inductive_model": model}
    if model is not None:
      spec.update(num_neighbors=self._num_neighbors, dense_dim=self._dense_dim,
                  sparse=[list(f) for f in self._sparse])
    return spec

  def signatures(self) -> dict[str, Any]:
    """Signature key -> concrete function, for `tf.saved_model.save`."""
    embed = self.embed_items.get_concrete_function()
    out = {signatures_lib.DEFAULT_SIGNATURE: embed, "embed_items": embed}
    if self.embed_new_items is not None:
      out["embed_new_items"] = self.embed_new_items.get_concrete_function()
    return out


def is_inductive(model) -> bool:
  """True when h^0 depends on features only (no learned per-item id embedding)."""
  return not model.encoder.use_id_embedding


def layer_tables(model, tables: pipeline.SamplingTables, *, batch_size: int = 8192
                 ) -> tuple[list[np.ndarray], np.ndarray]:
  """Per-layer neighbor transforms of all items, for `embed_new_items`.

  Runs the layer-wise inference pass (paper section 3.3) and keeps, for each
  layer k = 0..K-1, `transformed[k] = ReLU(Q_k h^k + q_k)` `[N, neighbor_dim]`
  of every item (the only thing a new item needs from its neighbors).

  Returns:
    (transformed: K float32 arrays `[N, neighbor_dim]`, h^{K-1} `[N, hidden]`).
  """
  runner = inference.LayerwiseInference(model, tables, batch_size=batch_size)
  h = runner.input_representations()
  transformed = []
  for k in range(len(model.convs)):
    transformed.append(runner.transform_all(k, h))
    if k + 1 < len(model.convs):
      h = runner.advance(k, h, transformed=transformed[-1])
  return transformed, h


def existing_item_inputs(graph: graph_lib.Graph, tables: pipeline.SamplingTables,
                         items: np.ndarray, dense_dim: int | None = None) -> dict[str, np.ndarray]:
  """`embed_new_items` inputs describing EXISTING `items` (own features and pivots).

  Used to check the cold-start path against `embed_items`. Sparse features are
  the (truncated) ones the model was trained with; pivots are padded with "".

  Returns:
    {"dense": [B, D] (if D > 0), "sparse_<name>": int32 [B, L], "pivot_ids":
    bytes [B, P]}.
  """
  items = np.asarray(items, np.int64)
  out: dict[str, np.ndarray] = {}
  if (dense_dim if dense_dim is not None else tables.dense.shape[1]):
    out["dense"] = np.asarray(tables.dense[items], np.float32)
  for feature, values in zip(graph.features.sparse, tables.sparse):
    out[f"sparse_{feature.name}"] = np.asarray(values[items], np.int32)
  rows = [graph.pivot_ids[graph.item_to_pivot.row(int(i))] for i in items]
  width = max([1] + [len(r) for r in rows])
  pivots = np.full((len(items), width), b"", dtype=object)
  for b, r in enumerate(rows):
    pivots[b, :len(r)] = [p.encode("utf-8") for p in r.tolist()]
  out["pivot_ids"] = pivots
  return out
