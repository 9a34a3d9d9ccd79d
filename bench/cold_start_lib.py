"""Cold-start study: hold items out of training, then embed them inductively.

PinSage is inductive (paper Sec. 3): an item's embedding is computed from its
features and its importance neighborhood, so an item that was absent from
training can still be embedded from its features and the pivots it is
attached to, without retraining. This module sets up and runs that
experiment.

`hold_out_items(graph, fraction=, seed=)` -> `ColdStartSplit`:

* Eligible items have >= 1 training edge AND are the query of >= 1
  validation or test item pair with a different positive (so they can be
  evaluated under the item protocol; the evaluator skips self-pairs).
  `max(1, round(fraction * eligible))` of them are drawn without replacement
  by `np.random.default_rng(seed)`; `cold_items` int32 `[C]` ascending.
* The reduced `graph` keeps every item and pivot row, the features, the
  held-out user data and the validation/test pairs unchanged; the cold
  items lose all their edges (both CSR directions), `log_degree` is
  recomputed as `log1p(degree)` (0 for cold items), and every TRAIN pair
  whose query or positive is cold is dropped. A pivot may end with no items.
* `pivot_lists` (`CSR`, C rows, row c = the removed pivots of
  `cold_items[c]`, ascending): what the cold items are attached to at
  embedding time ("edges removed from training", not from the world).

`embed_inductively(model, graph, tables, items, pivot_lists)` -> float32
`[B, embedding_dim]` unit rows: the embedding a trained inductive model gives
item `items[b]` (its features from `tables`) attached to pivots
`pivot_lists[b]` of `graph`, computed exactly like the exported
`embed_new_items` signature (`pinsage_tf.export`):

1. neighborhood: the deterministic first-traversal visit distribution of
   `export.first_traversal_neighborhoods` (pick one of the P' given pivots
   uniformly, then one of its items in `graph` uniformly), top-T (T = the
   training table's width), weights L1-normalised; an item with no pivots
   (or only pivots without items) has an empty neighborhood. This path was
   chosen over the sampled `neighborhoods.neighborhoods_for_new_items` walks
   because it is what the served model computes and it is exact and
   seed-free; the quality difference is within noise (export: synthetic;
   bench/cold_start.py's MovieLens validation run, seed 0: cold-query
   hit-rate@10/50/100 0.063/0.190/0.277 this way vs 0.070/0.181/0.275 with
   the sampled walks).
2. `h^0 = encoder(features, log_degree = log1p(P'))`, as at serving time
   (duplicate pivots count in P').
3. `h^{k+1} = conv_k.combine(h^k, conv_k.pool(transformed_k[neighbors]))`,
   where `transformed_k = ReLU(Q_k h^k + q_k)` of every item of `graph`
   comes from the layer-wise inference pass (`export.layer_tables`); items
   of `graph` are not changed by the embedded ones (no pivot links back).
4. the dense head and L2 normalisation.

An item with an empty pivot list and no edges in `graph` gets exactly its
layer-wise embedding (both sides: empty neighborhood, log_degree 0). An
existing item embedded with its own pivots gets a vector close to, not equal
to, its layer-wise one (one-hop neighborhood that includes the item itself
vs the multi-hop random-walk table): mean cosine 0.98 for the random model
of the tests, but only 0.83 (median 0.90) for the MovieLens model of
bench/cold_start.py (0.88 with sampled walks instead), whose outputs are
sensitive to which popular movies fill the top-T.

`cold_query_pairs(graph, cold_items, split)` restricts a graph's pairs to the
split's pairs whose query is cold, so `pinsage_tf.evaluation` scores exactly
the cold-start queries with its own masking and tie policy.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from pinsage_tf import export
from pinsage_tf import graph as graph_lib
from pinsage_tf import minibatch
from pinsage_tf import pipeline
from pinsage_tf import retrieval_exact

_EVAL_SPLITS = (int(graph_lib.Split.VALIDATION), int(graph_lib.Split.TEST))
_SPLIT_NAMES = {"validation": graph_lib.Split.VALIDATION, "test": graph_lib.Split.TEST}


@dataclasses.dataclass(frozen=True)
class ColdStartSplit:
  """A graph with some items held out of training (see the module docstring).

  Attributes:
    graph: the reduced training graph (same item and pivot rows).
    cold_items: int32 `[C]` held-out item rows, ascending.
    pivot_lists: `CSR` with C rows: the pivots each cold item lost.
    num_eligible: items that could have been drawn.
    dropped_train_pairs: TRAIN pairs removed because they touch a cold item.
  """

  graph: graph_lib.Graph
  cold_items: np.ndarray
  pivot_lists: graph_lib.CSR
  num_eligible: int
  dropped_train_pairs: int

  def summary(self) -> dict[str, Any]:
    """Counts, JSON-serialisable."""
    return {"cold_items": int(self.cold_items.shape[0]), "eligible_items": self.num_eligible,
            "removed_edges": self.pivot_lists.nnz,
            "dropped_train_pairs": self.dropped_train_pairs,
            "remaining_edges": self.graph.num_edges,
            "remaining_train_pairs": self.graph.pairs.count(graph_lib.Split.TRAIN)}


def eligible_items(graph: graph_lib.Graph) -> np.ndarray:
  """int64 ascending rows with >= 1 edge that query a validation/test pair (q != p)."""
  pairs = graph.pairs
  query = np.asarray(pairs.query, np.int64)
  evaluable = np.isin(pairs.split, _EVAL_SPLITS) & (query != np.asarray(pairs.positive))
  is_query = np.zeros(graph.num_items, bool)
  is_query[query[evaluable]] = True
  return np.flatnonzero(is_query & (graph.item_degrees() > 0))


def hold_out_items(graph: graph_lib.Graph, *, fraction: float = 0.1,
                   seed: int = 0) -> ColdStartSplit:
  """Removes the edges and train pairs of a random set of evaluable items.

  Args:
    graph: the full training graph.
    fraction: share of the eligible items to hold out, in (0, 1).
    seed: seed of the draw (non-negative int).

  Returns:
    A `ColdStartSplit` (see the module docstring for every invariant).

  Raises:
    ValueError: bad `fraction` or `seed`, or no eligible item (the graph
      needs edges and validation or test pairs).
  """
  if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not (
      0.0 < float(fraction) < 1.0):
    raise ValueError(f"fraction must be a float in (0, 1), got {fraction!r}; e.g. 0.1 holds "
                     "out 10% of the evaluable items.")
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
  eligible = eligible_items(graph)
  if eligible.size == 0:
    raise ValueError(
        f"graph {graph.name!r} has no item with training edges that is the query of a "
        "validation or test pair; a cold-start study needs both (prepare the graph with a "
        "validation/test split of item pairs).")
  count = max(1, int(round(float(fraction) * eligible.size)))
  rng = np.random.default_rng(int(seed))
  cold = np.sort(rng.choice(eligible, size=count, replace=False)).astype(np.int32)
  is_cold = np.zeros(graph.num_items, bool)
  is_cold[cold] = True

  ip = graph.item_to_pivot
  edge_item = np.repeat(np.arange(graph.num_items, dtype=np.int64), ip.degrees())
  keep = ~is_cold[edge_item]
  item_to_pivot = graph_lib.CSR.from_pairs(edge_item[keep], np.asarray(ip.indices)[keep],
                                           graph.num_items)
  pivot_lists = retrieval_exact.take_rows(ip, cold)

  pairs = graph.pairs
  query, positive = np.asarray(pairs.query), np.asarray(pairs.positive)
  split = np.asarray(pairs.split)
  touches = is_cold[query] | is_cold[positive]
  keep_pair = (split != int(graph_lib.Split.TRAIN)) | ~touches
  dropped = int(np.count_nonzero(~keep_pair))
  reduced = dataclasses.replace(
      graph,
      name=f"{graph.name}_cold",
      item_to_pivot=item_to_pivot,
      pivot_to_item=item_to_pivot.transpose(graph.num_pivots),
      features=dataclasses.replace(
          graph.features,
          log_degree=np.log1p(item_to_pivot.degrees()).astype(np.float32)),
      pairs=pairs.subset(keep_pair),
      metadata={**dict(graph.metadata), "cold_start": {
          "source_graph": graph.name, "fraction": float(fraction), "seed": int(seed),
          "cold_items": int(count), "eligible_items": int(eligible.size),
          "removed_edges": pivot_lists.nnz,
          "dropped_train_pairs": dropped}})
  reduced.validate()
  return ColdStartSplit(graph=reduced, cold_items=cold, pivot_lists=pivot_lists,
                        num_eligible=int(eligible.size),
                        dropped_train_pairs=dropped)


def cold_query_pairs(graph: graph_lib.Graph, cold_items: np.ndarray,
                     split: str) -> graph_lib.Graph:
  """`graph` whose pairs are only `split`'s pairs with a query in `cold_items`.

  Args:
    graph: a graph (the reduced one: evaluation ranks its items).
    cold_items: int item rows.
    split: "validation" or "test".
  """
  if split not in _SPLIT_NAMES:
    raise ValueError(f"split must be one of {tuple(_SPLIT_NAMES)}, got {split!r}.")
  pairs = graph.pairs
  keep = (np.asarray(pairs.split) == int(_SPLIT_NAMES[split])) & np.isin(
      pairs.query, np.asarray(cold_items))
  return dataclasses.replace(graph, pairs=pairs.subset(keep))


def _padded(pivot_lists: graph_lib.CSR) -> np.ndarray:
  width = max(1, int(pivot_lists.degrees().max(initial=0)))
  return pivot_lists.to_padded(width, pad=-1)


def embed_inductively(
    model,
    graph: graph_lib.Graph,
    tables: pipeline.SamplingTables,
    items: np.ndarray,
    pivot_lists: graph_lib.CSR,
    *,
    transformed: Sequence[np.ndarray] | None = None,
    batch_size: int = 256,
) -> np.ndarray:
  """Embeds `items` from their features and the given pivots (module docstring).

  Args:
    model: a trained inductive `PinSageModel` (no per-item id embedding).
    graph: the graph the items attach to (its pivot -> item lists give the
      neighborhoods); the graph `tables` were built from.
    tables: `SamplingTables` of `graph` (features, truncated sparse lists and
      the neighborhood table of the layer-wise pass).
    items: int `[B]` rows of `graph` whose features are used.
    pivot_lists: `CSR` with B rows of pivot indices of `graph` (an empty row:
      features only).
    transformed: `export.layer_tables(model, tables)[0]`, to reuse across
      calls; computed here when None.
    batch_size: items per step (a step gathers every item of the pivots).

  Returns:
    float32 `[B, embedding_dim]`, rows of unit L2 norm.

  Raises:
    ValueError: a non-inductive model, mismatched shapes, or out-of-range
      item or pivot indices.
  """
  if not export.is_inductive(model):
    raise ValueError("the model learns a per-item id embedding, so an item held out of "
                     "training has no input representation; train with item features and "
                     "--set=model.encoder.use_id_embedding=false (or none) for a cold-start "
                     "study.")
  n = graph.num_items
  if tables.num_items != n:
    raise ValueError(f"tables hold {tables.num_items} items but the graph has {n}; build "
                     "them from the same graph.")
  items = np.asarray(items, np.int64).reshape(-1)
  if items.size and (items.min() < 0 or items.max() >= n):
    raise ValueError(f"items must be rows in [0, {n}), got values in "
                     f"[{items.min()}, {items.max()}].")
  if pivot_lists.num_rows != items.shape[0]:
    raise ValueError(f"pivot_lists has {pivot_lists.num_rows} rows for {items.shape[0]} items; "
                     "pass one (possibly empty) pivot list per item.")
  try:
    pivot_lists.validate("pivot_lists", items.shape[0], graph.num_pivots)
  except graph_lib.GraphFormatError as e:
    raise ValueError(str(e)) from e
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  if transformed is None:
    transformed, _ = export.layer_tables(model, tables)
  if len(transformed) != model.config.num_layers:
    raise ValueError(f"transformed holds {len(transformed)} layer tables, the model has "
                     f"{model.config.num_layers} layers.")
  layer_tables = [tf.constant(np.asarray(t, np.float32)) for t in transformed]
  pivot_indptr = tf.constant(np.asarray(graph.pivot_to_item.indptr, np.int64))
  pivot_items = tf.constant(np.asarray(graph.pivot_to_item.indices, np.int32))
  constants = pipeline.table_tensors(tables)
  num_neighbors = tables.num_neighbors

  # One trace per call: any batch size and pivot-list width.
  @tf.function(autograph=False, input_signature=[
      tf.TensorSpec([None], tf.int32), tf.TensorSpec([None, None], tf.int32)])
  def step(rows, pivot_index):
    ids, weights = export.first_traversal_neighborhoods(
        pivot_index, pivot_indptr, pivot_items, n, num_neighbors)
    num_pivots = tf.reduce_sum(tf.cast(pivot_index >= 0, tf.float32), axis=1)
    inputs = pipeline.gather_node_inputs(tables, rows, constants)
    inputs = minibatch.NodeInputs(item=tf.zeros_like(rows), dense=inputs.dense,
                                  log_degree=tf.math.log1p(num_pivots), sparse=inputs.sparse)
    h = model.encode_inputs(inputs, training=False)  # [B, hidden]
    neighbors = tf.maximum(ids, 0)  # padding has weight 0
    for k, conv in enumerate(model.convs):
      pooled = conv.pool(tf.gather(layer_tables[k], neighbors), weights)
      h = conv.combine(h, pooled, training=False)
    return model.head(h)

  out = np.zeros((items.shape[0], model.config.embedding_dim), np.float32)
  for start in range(0, items.shape[0], batch_size):
    stop = min(start + batch_size, items.shape[0])
    rows = np.arange(start, stop)
    block = retrieval_exact.take_rows(pivot_lists, rows)
    out[start:stop] = step(tf.constant(items[start:stop], tf.int32),
                           tf.constant(_padded(block), tf.int32)).numpy()
  return out


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """float64 `[B]` row-wise cosine of `a, b [B, d]` (0 for a zero row)."""
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
  return np.sum(a * b, axis=1) / np.maximum(norms, 1e-12)
