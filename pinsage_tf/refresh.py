"""Incremental refresh: new edges and items into the tables and embeddings, no training.

A refresh takes a graph with its neighborhood tables and the embeddings a
trained model gave for it, plus new (pivot, item) edges, and produces what a
full rebuild with the same model would produce on the grown graph -- the
new graph, its neighborhood tables, every item's (and pivot's) embedding --
recomputing only what can differ:

1. `append_edges`: the new graph. Existing rows keep their index; new items
   and new pivots are appended in order of first appearance. Existing items
   whose pivot lists are unchanged keep their features and `log_degree`
   bit for bit; changed ones get `log1p(new degree)`.
2. `walk_affected_items` / `walk_affected_pivots`: the rows whose random
   walks (`pinsage_tf.neighborhoods`) can read a changed adjacency row.
   An item walk from s with H = `max_hops` traversals departs from items
   x_0 = s, ..., x_{H-1} (reading their pivot lists) and from pivots
   p_1..p_H (reading their item lists); x_t is within t traversals of s and
   p_t is a pivot of x_{t-1}. Let I* be the items whose pivot list changed
   (endpoints of new edges, new items included) and P* the pivots whose item
   list changed. The walk from s can change only if some x_t (t <= H-1) is
   in I* or in items(P*) (then p_{t+1} may be in P*). So the affected items
   are exactly

       A = R_{H-1}(I* + items(P*))      (R_t: items within t traversals)

   plus, with `degree_exponent` != 0 (scores divide by the visited item's
   degree), R_H(I*). R is taken on the new graph: a walk that reaches a
   changed row does so through unchanged rows first, which both graphs have,
   so this is a superset of the rows whose walks changed and never misses
   one. A pivot walk from list L (H_p traversals) reads L itself, then the
   pivot lists of x_1 in L .. x_{H_p-1} and the item lists of their pivots:
   affected are the pivots whose list changed and those with an item in
   R_{H_p-2}(I* + items(P*)) (none for H_p = 1); with a degree exponent also
   those with an item in R_{H_p-1}(I*).
3. `neighborhoods.recompute_rows`: walks are seeded per chunk of
   `chunk_size` consecutive rows, so every chunk holding an affected row is
   walked again with its own seed; the table then equals
   `compute_neighborhoods` on the new graph row for row (rows of other
   chunks read no changed adjacency row, and their chunk's seeds and
   generator are unchanged).
4. `embedding_closure`: the items whose K-layer output can change. h^0
   changes for C_0 = I* (features, log degree; new items); layer k
   (1..K) changes for C_k = C_{k-1} + rows whose neighbor table changed +
   items with a neighbor in C_{k-1}. Only C_K is embedded again, from its
   receptive field (`reembed`); every other row is copied bit for bit.
   Pivots are embedded again when their neighborhood row changed or a
   neighbor is in C_{K-1}.

Invariant (tested): the refreshed embeddings equal a full layer-wise
inference (`pinsage_tf.inference`) with the same model on the refreshed
tables within float round-off (1e-5), and rows outside the closure are the
previous rows, bit-identical.

Bounded refresh (`RefreshScope(mode="bounded")`): on a dense graph the exact
sets above are nearly everything (on Gowalla one new edge already puts every
item inside the walk bound of 3-traversal walks, and the K = 2 closure of 1 %
new edges holds 99.8 % of the items), so an exact refresh costs about a full
rebuild. The bounded mode recomputes only near the change, with a stated
staleness bound:

* neighborhood rows walked again: the items within `walk_traversals`
  item -> pivot -> item steps of I* (0: the items that got new edges, new
  items included), each walked alone (`recompute_rows(whole_chunks=False)`);
  pivot rows walked again: the pivots whose item list changed;
* items embedded again: E_0 = I* + the items whose neighbor row changed,
  grown `embed_hops` times by "has a neighbor in E_j"; pivots embedded
  again: the ones walked again.

Every row that is embedded again is computed exactly (layer-wise, on the
refreshed tables: the invariant below holds for those rows); every other row
-- table rows and embeddings -- is the previous row, bit for bit. A row kept
can miss a change only through a path longer than the bound: a walk that
reaches a changed pivot after more than `walk_traversals` steps, or a
changed input more than `embed_hops` neighbor-table steps away, whose effect
passes through that many importance-weighted poolings.

Models with a learned per-item id embedding have no trained row for a new
item: the encoder gives it a zero id embedding (`layers.encoders`), so it is
placed by its features, degree and neighbors only.

`publish_graph_version` writes the new graph and its tables as a new version
of the graph directory (`pinsage_tf.versions_on_disk`).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf

from pinsage_tf import graph as graph_lib
from pinsage_tf import neighborhoods as nb_lib
from pinsage_tf import pipeline
from pinsage_tf import retrieval_exact
from pinsage_tf import versions_on_disk


REFRESH_MODES = ("exact", "bounded")


@dataclasses.dataclass(frozen=True)
class RefreshScope:
  """What a refresh recomputes (module docstring).

  Attributes:
    mode: "exact" (equal to a full rebuild with the same model) or "bounded"
      (only near the change, with the staleness bound of the module docstring).
    walk_traversals: bounded: items within this many traversals of an item
      whose pivot list changed get their neighborhood walked again.
    embed_hops: bounded: neighbor-table steps from a changed input within
      which items are embedded again.
  """

  mode: str = "exact"
  walk_traversals: int = 0
  embed_hops: int = 1

  def __post_init__(self):
    if self.mode not in REFRESH_MODES:
      raise ValueError(f"RefreshScope.mode must be one of {REFRESH_MODES}, got {self.mode!r}.")
    for name in ("walk_traversals", "embed_hops"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"RefreshScope.{name} must be an int >= 0, got {value!r}.")

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class GraphDelta:
  """What `append_edges` changed (row indices of the NEW graph).

  Attributes:
    num_old_items, num_old_pivots: row counts before; rows at or past them are new.
    changed_items: int64 `[I]` items whose pivot list changed (new items included).
    changed_pivots: int64 `[P]` pivots whose item list changed (new pivots included).
    num_new_edges: edges added.
  """

  num_old_items: int
  num_old_pivots: int
  changed_items: np.ndarray
  changed_pivots: np.ndarray
  num_new_edges: int

  def to_json(self) -> dict[str, int]:
    return {"old_items": self.num_old_items, "old_pivots": self.num_old_pivots,
            "changed_items": int(self.changed_items.size),
            "changed_pivots": int(self.changed_pivots.size),
            "new_edges": self.num_new_edges}


def _append_ids(known: np.ndarray, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(rows of `raw` in known + appended, the appended ids in first-appearance order)."""
  index = {str(r): i for i, r in enumerate(known.tolist())}
  new: list[str] = []
  rows = np.empty(raw.shape[0], np.int64)
  for k, r in enumerate(raw.tolist()):
    row = index.get(r)
    if row is None:
      row = index[r] = len(index)
      new.append(r)
    rows[k] = row
  return rows, np.asarray(new, dtype=str)


def append_edges(graph: graph_lib.Graph, pivot_ids: Sequence[str] | np.ndarray,
                 item_ids: Sequence[str] | np.ndarray, *,
                 new_item_dense: np.ndarray | None = None,
                 metadata: Mapping[str, Any] | None = None
                 ) -> tuple[graph_lib.Graph, GraphDelta]:
  """The graph with the edges (pivot_ids[e], item_ids[e]) added.

  Args:
    graph: the current graph (not modified).
    pivot_ids, item_ids: str `[E]` raw ids; unknown ones become new rows.
    new_item_dense: float32 `[Q, D]` dense features of the new items in order
      of first appearance (required when the graph has dense features).
    metadata: merged into the new graph's metadata.

  Returns:
    (new graph, `GraphDelta`). Pairs and held-out data are kept (new pivots
    get empty held-out rows).

  Raises:
    ValueError: an id is used as both item and pivot (when the graph's item
      and pivot ids are disjoint), features are missing
      or malformed, or the graph has sparse features and new items arrive.
  """
  pivot_ids = np.asarray(pivot_ids, dtype=str)
  item_ids = np.asarray(item_ids, dtype=str)
  if pivot_ids.shape != item_ids.shape or pivot_ids.ndim != 1:
    raise ValueError("pivot_ids and item_ids must be 1-D and of equal length.")
  known_items, known_pivots = set(graph.item_ids.tolist()), set(graph.pivot_ids.tolist())
  if not known_items & known_pivots:  # disjoint name spaces stay disjoint
    clash = (set(item_ids.tolist()) | known_items) & (set(pivot_ids.tolist()) | known_pivots)
    if clash:
      raise ValueError(f"ids used as both item and pivot: {sorted(clash)[:5]}.")
  n, m = graph.num_items, graph.num_pivots
  items, new_items = _append_ids(graph.item_ids, item_ids)
  pivots, new_pivots = _append_ids(graph.pivot_ids, pivot_ids)
  q = new_items.shape[0]
  f = graph.features
  if q and f.sparse:
    raise ValueError(f"new items cannot join a graph with sparse features "
                     f"{[s.name for s in f.sparse]}.")
  if new_item_dense is None:
    if q and f.dense_dim:
      raise ValueError(f"{q} new items need dense features ([{q}, {f.dense_dim}]).")
    new_item_dense = np.zeros((q, f.dense_dim), np.float32)
  new_item_dense = np.asarray(new_item_dense, np.float32)
  if new_item_dense.shape != (q, f.dense_dim):
    raise ValueError(f"new_item_dense must have shape [{q}, {f.dense_dim}], got "
                     f"{new_item_dense.shape}.")
  old_items = np.repeat(np.arange(n, dtype=np.int64), graph.item_to_pivot.degrees())
  old_pivots = np.asarray(graph.item_to_pivot.indices, np.int64)
  new_n, new_m = n + q, m + new_pivots.shape[0]
  ip = graph_lib.CSR.from_pairs(np.concatenate([old_items, items]),
                                np.concatenate([old_pivots, pivots]), new_n)
  pi = ip.transpose(new_m)
  added = ip.nnz - graph.num_edges
  old_deg = np.concatenate([graph.item_to_pivot.degrees(), np.zeros(q, np.int64)])
  changed_items = np.flatnonzero(ip.degrees() != old_deg)
  changed_items = np.union1d(changed_items, np.arange(n, new_n)).astype(np.int64)
  old_pdeg = np.concatenate([graph.pivot_to_item.degrees(),
                             np.zeros(new_m - m, np.int64)])
  changed_pivots = np.union1d(np.flatnonzero(pi.degrees() != old_pdeg),
                              np.arange(m, new_m)).astype(np.int64)
  log_degree = np.concatenate([np.asarray(f.log_degree, np.float32), np.zeros(q, np.float32)])
  log_degree[changed_items] = np.log1p(ip.degrees()[changed_items]).astype(np.float32)
  features = graph_lib.ItemFeatures(
      dense=np.concatenate([np.asarray(f.dense, np.float32), new_item_dense]),
      log_degree=log_degree, dense_names=f.dense_names, sparse=f.sparse)

  def grow(csr: graph_lib.CSR) -> graph_lib.CSR:
    indptr = np.concatenate([np.asarray(csr.indptr, np.int64),
                             np.full(new_m - m, csr.nnz, np.int64)])
    return graph_lib.CSR(indptr, np.asarray(csr.indices, np.int32))

  titles = graph.item_titles
  if titles is not None:
    titles = np.concatenate([np.asarray(titles, dtype=str), new_items])
  new_graph = graph_lib.Graph(
      name=graph.name,
      item_ids=np.concatenate([np.asarray(graph.item_ids, dtype=str), new_items]),
      pivot_ids=np.concatenate([np.asarray(graph.pivot_ids, dtype=str), new_pivots]),
      item_to_pivot=ip, pivot_to_item=pi, features=features,
      pairs=graph.pairs,
      heldout=graph_lib.HeldOut(validation=grow(graph.heldout.validation),
                                test=grow(graph.heldout.test)),
      item_titles=titles,
      metadata={**dict(graph.metadata), **dict(metadata or {})})
  new_graph.validate()
  return new_graph, GraphDelta(n, m, changed_items, changed_pivots, int(added))


def _reach(graph: graph_lib.Graph, items: np.ndarray, traversals: int) -> np.ndarray:
  """bool `[N]`: items within `traversals` item -> pivot -> item steps of `items`."""
  ip, pi = graph.item_to_pivot, graph.pivot_to_item
  mask = np.zeros(graph.num_items, bool)
  mask[np.asarray(items, np.int64)] = True
  for _ in range(max(0, traversals)):
    pivots = np.zeros(graph.num_pivots, bool)
    pivots[ip.indices[np.repeat(mask, ip.degrees())]] = True
    grown = mask.copy()
    grown[pi.indices[np.repeat(pivots, pi.degrees())]] = True
    if np.array_equal(grown, mask):
      break
    mask = grown
  return mask


def _sources(graph: graph_lib.Graph, delta: GraphDelta) -> np.ndarray:
  """I* + items(P*): the items a walk must depart from to read a changed row."""
  pi = graph.pivot_to_item
  pivots = np.zeros(graph.num_pivots, bool)
  pivots[delta.changed_pivots] = True
  return np.union1d(delta.changed_items, pi.indices[np.repeat(pivots, pi.degrees())])


def walk_affected_items(graph: graph_lib.Graph, delta: GraphDelta,
                        config: nb_lib.NeighborhoodConfig) -> np.ndarray:
  """bool `[N]`: items whose importance-neighborhood walks can change (module docstring)."""
  mask = _reach(graph, _sources(graph, delta), config.max_hops - 1)
  if float(config.degree_exponent):
    mask |= _reach(graph, delta.changed_items, config.max_hops)
  mask[delta.num_old_items:] = True
  return mask


def walk_affected_pivots(graph: graph_lib.Graph, delta: GraphDelta,
                         config: nb_lib.NeighborhoodConfig, lists: graph_lib.CSR,
                         changed_lists: np.ndarray) -> np.ndarray:
  """bool `[K]`: rows of the pivot table over `lists` whose walks can change.

  Args:
    graph: the new graph.
    delta: what changed.
    config: the pivot walk parameters.
    lists: the K item lists walked (the graph's pivots, or extended lists).
    changed_lists: bool `[K]`, lists that differ from the previous ones.
  """
  mask = np.asarray(changed_lists, bool).copy()
  touched = np.zeros(graph.num_items, bool)
  if config.max_hops >= 2:
    touched |= _reach(graph, _sources(graph, delta), config.max_hops - 2)
  if float(config.degree_exponent):
    touched |= _reach(graph, delta.changed_items, config.max_hops - 1)
  if touched.any():
    rows = np.repeat(np.arange(lists.num_rows), np.diff(lists.indptr))
    mask[rows[touched[lists.indices]]] = True
  return mask


def bounded_walk_items(graph: graph_lib.Graph, delta: GraphDelta,
                       scope: RefreshScope) -> np.ndarray:
  """bool `[N]`: the item rows a bounded refresh walks again (module docstring)."""
  mask = _reach(graph, delta.changed_items, scope.walk_traversals)
  mask[delta.num_old_items:] = True
  return mask


def refresh_neighborhoods(graph: graph_lib.Graph, delta: GraphDelta,
                          table: nb_lib.Neighborhoods, *, num_threads: int | None = None,
                          scope: RefreshScope = RefreshScope()
                          ) -> tuple[nb_lib.Neighborhoods, dict[str, int]]:
  """The item table of the new graph and counts.

  Exact scope: equal to a full recompute. Bounded: the rows of
  `bounded_walk_items` walked again, the others kept.
  """
  exact = scope.mode == "exact"
  affected = (walk_affected_items(graph, delta, table.config) if exact
              else bounded_walk_items(graph, delta, scope))
  new, recomputed = nb_lib.recompute_rows(graph, table, np.flatnonzero(affected),
                                          num_threads=num_threads, whole_chunks=exact)
  return new, {"walk_affected": int(affected.sum()), "walked": int(recomputed.size)}


def refresh_pivot_neighborhoods(graph: graph_lib.Graph, delta: GraphDelta,
                                table: nb_lib.Neighborhoods, lists: graph_lib.CSR,
                                changed_lists: np.ndarray, *, num_threads: int | None = None,
                                scope: RefreshScope = RefreshScope()
                                ) -> tuple[nb_lib.Neighborhoods, dict[str, int]]:
  """The pivot table over `lists` for the new graph and counts.

  Exact scope: equal to a full recompute. Bounded: the changed lists walked
  again, the other rows kept.
  """
  exact = scope.mode == "exact"
  affected = (walk_affected_pivots(graph, delta, table.config, lists, changed_lists) if exact
              else np.asarray(changed_lists, bool))
  new, recomputed = nb_lib.recompute_rows(graph, table, np.flatnonzero(affected),
                                          kind=nb_lib.PIVOT_KIND, item_lists=lists,
                                          num_threads=num_threads, whole_chunks=exact)
  return new, {"walk_affected": int(affected.sum()), "walked": int(recomputed.size)}


def bounded_embedding_set(neighbor_ids: np.ndarray, changed_inputs: np.ndarray,
                          changed_neighbors: np.ndarray, embed_hops: int) -> np.ndarray:
  """bool `[N]`: E_{embed_hops}, the items a bounded refresh embeds again.

  Args:
    neighbor_ids: int32 `[N, T]` the new table, self-padded (`SamplingTables`).
    changed_inputs: bool `[N]`, items whose h^0 changed.
    changed_neighbors: bool `[N]`, rows whose neighbor ids or weights changed.
    embed_hops: how often E grows by the items with a neighbor in it.
  """
  grown = np.asarray(changed_inputs, bool) | np.asarray(changed_neighbors, bool)
  for _ in range(embed_hops):
    grown = grown | grown[neighbor_ids].any(axis=1)
  return grown


def changed_rows(old_ids: np.ndarray, old_weights: np.ndarray, new_ids: np.ndarray,
                 new_weights: np.ndarray) -> np.ndarray:
  """bool `[N_new]`: rows whose (ids, weights) differ; rows past the old table count."""
  n_old = old_ids.shape[0]
  out = np.ones(new_ids.shape[0], bool)
  out[:n_old] = (np.any(np.asarray(old_ids) != np.asarray(new_ids[:n_old]), axis=1)
                 | np.any(np.asarray(old_weights) != np.asarray(new_weights[:n_old]), axis=1))
  return out


def embedding_closure(neighbor_ids: np.ndarray, changed_inputs: np.ndarray,
                      changed_neighbors: np.ndarray, num_layers: int) -> list[np.ndarray]:
  """C_0..C_K (bool `[N]` each): items whose h^k can change (module docstring).

  Args:
    neighbor_ids: int32 `[N, T]` the new table, self-padded (`SamplingTables`).
    changed_inputs: bool `[N]`, C_0.
    changed_neighbors: bool `[N]`, rows whose neighbor ids or weights changed.
    num_layers: K.
  """
  closure = [np.asarray(changed_inputs, bool)]
  for _ in range(num_layers):
    prev = closure[-1]
    closure.append(prev | changed_neighbors | prev[neighbor_ids].any(axis=1))
  return closure


@dataclasses.dataclass(frozen=True)
class Reembedded:
  """Output of `reembed`.

  Attributes:
    vectors: float32 `[N, E]` all items (copied rows outside the closure).
    bias: float32 `[N]` or None.
    rows: int64 rows embedded again (C_K).
    last_rows, last_h: int64 `[R]` items and float32 `[R, d]` their h^{K-1}
      (the closure's receptive field at layer K-1 and `extra_last`).
    computed: items whose representation was computed at any layer.
  """

  vectors: np.ndarray
  bias: np.ndarray | None
  rows: np.ndarray
  last_rows: np.ndarray
  last_h: np.ndarray
  computed: int


def reembed(model, tables: pipeline.SamplingTables, old_vectors: np.ndarray,
            old_bias: np.ndarray | None, closure: Sequence[np.ndarray],
            extra_last: np.ndarray | None = None, *, batch_size: int = 8192) -> Reembedded:
  """Embeds the items of C_K again from their receptive field; copies the rest.

  Needs h^k on S_k, with S_K = C_K and S_{k-1} = S_k + neighbors(S_k); rows of
  h^k outside C_k are recomputed from S_{k-1} too (they are not stored), so
  the result is exactly the layer-wise computation on those rows.

  Args:
    model: the trained `PinSageModel`.
    tables: the refreshed `SamplingTables`.
    old_vectors: float32 `[N_old, E]` previous embeddings (rows = items).
    old_bias: float32 `[N_old]` previous biases, or None.
    closure: `embedding_closure` output (K + 1 masks of length N).
    extra_last: bool `[N]` items whose h^{K-1} the caller needs as well
      (neighbors of pivots to embed again).
    batch_size: rows per step.
  """
  k_layers = model.config.num_layers
  n = tables.num_items
  nbr = tables.neighbor_ids
  need = [None] * (k_layers + 1)
  need[k_layers] = np.asarray(closure[k_layers], bool).copy()
  for k in range(k_layers, 0, -1):
    below = need[k].copy()
    if k == k_layers and extra_last is not None:
      below |= extra_last  # the caller needs h^{K-1} of these rows itself
    below[nbr[need[k]].reshape(-1)] = True
    need[k - 1] = below
  constants = pipeline.table_tensors(tables)

  def encode(items):
    # Eager: a refresh encodes a few blocks once, less than tracing costs.
    return model.encode_inputs(pipeline.gather_node_inputs(tables, items, constants),
                               training=False)

  def blocks(count):
    for start in range(0, count, batch_size):
      yield start, min(start + batch_size, count)

  rows0 = np.flatnonzero(need[0]).astype(np.int32)
  if not rows0.size:  # nothing changed: every row is copied
    vectors = np.zeros((n, old_vectors.shape[1]), np.float32)
    vectors[:old_vectors.shape[0]] = old_vectors
    out_bias = None if old_bias is None else np.asarray(old_bias, np.float32).copy()
    return Reembedded(vectors=vectors, bias=out_bias, rows=np.zeros(0, np.int64),
                      last_rows=np.zeros(0, np.int64),
                      last_h=np.zeros((0, 0), np.float32), computed=0)
  h = np.concatenate([encode(tf.constant(rows0[a:b])).numpy() for a, b in blocks(rows0.size)])
  rows, computed = rows0, int(rows0.size)
  position = np.full(n, -1, np.int64)
  last_rows, last_h = rows0.astype(np.int64), h
  for k, conv in enumerate(model.convs):
    position[:] = -1
    position[rows] = np.arange(rows.size)
    transformed = tf.constant(np.concatenate(
        [conv.transform_neighbors(h[a:b]).numpy() for a, b in blocks(rows.size)]))
    out_rows = np.flatnonzero(need[k + 1]).astype(np.int32)
    local_self = position[out_rows]
    local_nbr = position[nbr[out_rows]]
    assert (local_self >= 0).all() and (local_nbr >= 0).all()
    parts = []
    for a, b in blocks(out_rows.size):
      parts.append(conv.combine(
          h[local_self[a:b]], conv.pool(tf.gather(transformed, local_nbr[a:b]),
                                        tables.neighbor_weights[out_rows[a:b]])).numpy())
    if k == k_layers - 1:
      last_rows, last_h = rows.astype(np.int64), h
    h = (np.concatenate(parts) if parts
         else np.zeros((0, int(conv.combine_dense.units)), np.float32))
    rows = out_rows
    computed += int(out_rows.size)
  final = np.flatnonzero(closure[k_layers]).astype(np.int64)
  position[:] = -1
  position[rows] = np.arange(rows.size)
  h_final = h[position[final]] if final.size else h[:0]
  with_bias = old_bias is not None
  vec_parts, bias_parts = [], []
  for a, b in blocks(final.size):
    z, bias = model.head_and_bias(tf.constant(h_final[a:b]))
    vec_parts.append(z.numpy())
    if with_bias:
      bias_parts.append(bias.numpy())
  dim = old_vectors.shape[1]
  vectors = np.zeros((n, dim), np.float32)
  vectors[:old_vectors.shape[0]] = old_vectors
  if final.size:
    vectors[final] = np.concatenate(vec_parts)
  out_bias = None
  if with_bias:
    out_bias = np.zeros(n, np.float32)
    out_bias[:old_bias.shape[0]] = old_bias
    if final.size:
      out_bias[final] = np.concatenate(bias_parts)
  return Reembedded(vectors=vectors, bias=out_bias, rows=final, last_rows=last_rows,
                    last_h=last_h, computed=computed)


def last_transformed(model, last_h: np.ndarray, *, batch_size: int = 8192) -> tf.Tensor:
  """The last convolution's neighbor transform of `last_h [R, hidden]`: `[R, neighbor_dim]`."""
  return tf.constant(np.concatenate(
      [model.convs[-1].transform_neighbors(last_h[a:a + batch_size]).numpy()
       for a in range(0, last_h.shape[0], batch_size)]))


def reembed_pivots(model, old_vectors: np.ndarray, rows: np.ndarray, table_ids: np.ndarray,
                   table_weights: np.ndarray, last_rows: np.ndarray, last_h: np.ndarray,
                   *, batch_size: int = 8192, transformed: tf.Tensor | None = None
                   ) -> np.ndarray:
  """Pivot embeddings with `rows` embedded again from h^{K-1} of their neighbors.

  Args:
    model: the trained `PinSageModel`.
    old_vectors: float32 `[M_old, E]` previous pivot embeddings.
    rows: int64 pivot rows to embed again (new pivots included).
    table_ids, table_weights: `[M, Tp]` the refreshed pivot table (-1 padding).
    last_rows, last_h: items with their h^{K-1} (`Reembedded.last_rows/last_h`);
      must cover every neighbor of `rows`.
    transformed: `last_transformed(model, last_h)` when the caller has it
      (one pass for every history); computed here otherwise.
  """
  m = table_ids.shape[0]
  out = np.zeros((m, old_vectors.shape[1]), np.float32)
  out[:old_vectors.shape[0]] = old_vectors
  if not rows.size:
    return out
  ids = np.asarray(table_ids)[rows]
  weights = np.where(ids >= 0, np.asarray(table_weights)[rows], 0.0).astype(np.float32)
  position = np.full(int(max(last_rows.max(initial=0), ids.max(initial=0))) + 1, -1, np.int64)
  position[last_rows] = np.arange(last_rows.size)
  local = np.where(ids >= 0, position[np.maximum(ids, 0)], 0)
  assert (local[ids >= 0] >= 0).all()
  local = np.maximum(local, 0).astype(np.int32)
  h_table = tf.constant(last_h)
  if transformed is None:
    transformed = last_transformed(model, last_h, batch_size=batch_size)
  parts = []
  for a in range(0, rows.size, batch_size):
    parts.append(model.head(model.pivot_hidden(h_table, local[a:a + batch_size],
                                               weights[a:a + batch_size],
                                               transformed=transformed)).numpy())
  out[rows] = np.concatenate(parts)
  return out


def pivot_lists(graph: graph_lib.Graph) -> dict[str, graph_lib.CSR]:
  """The item lists pivots are embedded from, by history (as `trainer.infer` uses):
  "graph", and "graph+validation" when the graph holds a validation hold-out."""
  lists = {"graph": graph.pivot_to_item}
  if graph.heldout.validation.nnz:
    lists["graph+validation"] = retrieval_exact.concat_rows(graph.pivot_to_item,
                                                            graph.heldout.validation)
  return lists


def publish_graph_version(base: str | os.PathLike, graph: graph_lib.Graph,
                          item_table: nb_lib.Neighborhoods,
                          pivot_table: nb_lib.Neighborhoods | None = None,
                          version: int | None = None) -> str:
  """Writes `graph` and its tables as a new version of the graph lineage `base`.

  The directory is written under a hidden temporary name and renamed when
  complete (graph, checksums, derived tables); earlier versions are not touched.

  Args:
    base: the lineage (version 1 = the directory `data.prepare` wrote).
    graph: the new graph; `item_table` / `pivot_table` its neighborhood
      tables, stored as the derived tables `trainer.infer` and
      `trainer.export` look up.
    version: the version to write (default `versions_on_disk.next_version`);
      it must not exist.

  Returns:
    The new version's directory (not yet pointed at: the caller publishes
    it with `versions_on_disk.publish` once everything else is written).
  """
  if version is None:
    version = versions_on_disk.next_version(base)
  dest = versions_on_disk.version_path(base, version)
  tmp = os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}.partial")
  if os.path.exists(dest):
    raise FileExistsError(f"{dest} already exists; graph versions are immutable.")
  shutil.rmtree(tmp, ignore_errors=True)
  try:
    graph_lib.save_graph(graph, tmp)
    nb_lib.save_neighborhoods(tmp, item_table)
    if pivot_table is not None:
      nb_lib.save_neighborhoods(tmp, pivot_table, kind=nb_lib.PIVOT_KIND)
    os.rename(tmp, dest)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return dest


@dataclasses.dataclass(frozen=True)
class RefreshResult:
  """Everything a refresh computed (nothing is written).

  Attributes:
    graph: the new graph; `delta` what changed.
    neighborhoods: the item table of the new graph.
    pivot_neighborhoods: the table of the graph's pivots, or None (no pivot model).
    tables: the new `SamplingTables`.
    vectors, bias: float32 `[N, E]` / `[N]` (or None) all items.
    pivot_vectors: {history: float32 `[M, E]`} (empty without a pivot model).
    stats: counts of what was recomputed (JSON).
    fresh_items, fresh_pivots: bounded scope: int64 item rows and "graph"
      pivot rows embedded on the refreshed tables (the rest are kept from
      before); None in the exact scope (every row is).
  """

  graph: graph_lib.Graph
  delta: GraphDelta
  neighborhoods: nb_lib.Neighborhoods
  pivot_neighborhoods: nb_lib.Neighborhoods | None
  tables: pipeline.SamplingTables
  vectors: np.ndarray
  bias: np.ndarray | None
  pivot_vectors: dict[str, np.ndarray]
  stats: dict[str, Any]
  fresh_items: np.ndarray | None = None
  fresh_pivots: np.ndarray | None = None


def refresh(
    model,
    graph: graph_lib.Graph,
    neighborhoods: nb_lib.Neighborhoods,
    vectors: np.ndarray,
    *,
    pivot_ids: Sequence[str] | np.ndarray,
    item_ids: Sequence[str] | np.ndarray,
    new_item_dense: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    pivot_neighborhoods: nb_lib.Neighborhoods | None = None,
    pivot_vectors: Mapping[str, np.ndarray] | None = None,
    max_sparse_length: int = 32,
    negative_sampling: str = "degree",
    metadata: Mapping[str, Any] | None = None,
    num_threads: int | None = None,
    batch_size: int = 8192,
    scope: RefreshScope = RefreshScope(),
) -> RefreshResult:
  """Adds the edges and brings tables and embeddings up to date (module docstring).

  Args:
    model: the trained `PinSageModel` whose embeddings `vectors` are.
    graph: the current graph; `neighborhoods` its item table (the model's
      `ExperimentConfig.neighborhoods`).
    vectors: float32 `[N, E]` current item embeddings; `bias` `[N]` their
      biases (a model with `item_bias`), else None.
    pivot_ids, item_ids: str `[E]` the new edges (raw ids).
    new_item_dense: float32 `[Q, D]` features of the new items (first
      appearance order), when the graph has dense features.
    pivot_neighborhoods: the graph's pivot table (a pivot model), else None.
    pivot_vectors: {history: `[M, E]`} current pivot embeddings
      (`pivot_lists` histories), with `pivot_neighborhoods`.
    max_sparse_length, negative_sampling: as the model's `PipelineConfig`.
    metadata: merged into the new graph's metadata.
    num_threads: walk threads (None: one per core); results do not depend on it.
    batch_size: rows per inference step.
    scope: exact (default) or bounded (module docstring).

  Returns:
    `RefreshResult`.
  """
  k_layers = model.config.num_layers
  new_graph, delta = append_edges(graph, pivot_ids, item_ids, new_item_dense=new_item_dense,
                                  metadata=metadata)
  n = new_graph.num_items
  exact = scope.mode == "exact"
  table, item_stats = refresh_neighborhoods(new_graph, delta, neighborhoods,
                                            num_threads=num_threads, scope=scope)
  new_pivot_table = None
  pivot_tables: dict[str, tuple[nb_lib.Neighborhoods, np.ndarray]] = {}
  pivot_stats: dict[str, Any] = {}
  if pivot_neighborhoods is not None:
    changed_lists = np.zeros(new_graph.num_pivots, bool)
    changed_lists[delta.changed_pivots] = True
    for history, lists in pivot_lists(new_graph).items():
      if history == "graph":
        new_table, stats = refresh_pivot_neighborhoods(
            new_graph, delta, pivot_neighborhoods, lists, changed_lists,
            num_threads=num_threads, scope=scope)
        new_pivot_table = new_table
        affected = changed_rows(pivot_neighborhoods.ids, pivot_neighborhoods.weights,
                                new_table.ids, new_table.weights)
      elif not exact:
        # Not stored: only the rows embedded again (the changed lists) are walked.
        config = pivot_neighborhoods.config
        width = config.num_neighbors
        blank = nb_lib.Neighborhoods(
            ids=np.full((lists.num_rows, width), -1, np.int32),
            weights=np.zeros((lists.num_rows, width), np.float32),
            counts=np.zeros(lists.num_rows, np.int32), config=config)
        affected = np.asarray(changed_lists, bool)
        new_table, recomputed = nb_lib.recompute_rows(
            new_graph, blank, np.flatnonzero(affected), kind=nb_lib.PIVOT_KIND,
            item_lists=lists, num_threads=num_threads, whole_chunks=False)
        stats = {"walk_affected": int(affected.sum()), "walked": int(recomputed.size)}
      else:
        # Not stored: walked in full (as trainer.infer does); the bound says
        # which rows can differ from the previous table.
        new_table = nb_lib.compute_pivot_neighborhoods(
            new_graph, pivot_neighborhoods.config, lists, num_threads=num_threads)
        affected = walk_affected_pivots(new_graph, delta, pivot_neighborhoods.config, lists,
                                        changed_lists)
        stats = {"walk_affected": int(affected.sum()), "walked": int(lists.num_rows)}
      pivot_tables[history] = (new_table, affected)
      pivot_stats[history] = stats
  tables = pipeline.SamplingTables.build(
      new_graph, np.asarray(table.ids), np.asarray(table.weights),
      max_sparse_length=max_sparse_length,
      pivot_neighbor_ids=None if new_pivot_table is None else np.asarray(new_pivot_table.ids),
      pivot_neighbor_weights=(None if new_pivot_table is None
                              else np.asarray(new_pivot_table.weights)),
      negative_sampling=negative_sampling)
  changed_inputs = np.zeros(n, bool)
  changed_inputs[delta.changed_items] = True
  changed_nb = changed_rows(neighborhoods.ids, neighborhoods.weights, table.ids, table.weights)
  if exact:
    closure = embedding_closure(tables.neighbor_ids, changed_inputs, changed_nb, k_layers)
    last_changed = closure[k_layers - 1]
  else:
    # `reembed` embeds closure[K] from its receptive field; the other masks are unused.
    final = bounded_embedding_set(tables.neighbor_ids, changed_inputs, changed_nb,
                                  scope.embed_hops)
    closure = [final] * (k_layers + 1)
    last_changed = np.zeros(n, bool)  # pivots: only the lists walked again
  pivot_rows: dict[str, np.ndarray] = {}
  extra_last = np.zeros(n, bool)
  for history, (new_table, affected) in pivot_tables.items():
    ids = np.asarray(new_table.ids)
    touches = np.where(ids >= 0, last_changed[np.maximum(ids, 0)], False).any(axis=1)
    rows = np.flatnonzero(affected | touches)
    pivot_rows[history] = rows
    used = ids[rows]
    extra_last[used[used >= 0]] = True
  out = reembed(model, tables, vectors, bias, closure,
                extra_last if pivot_tables else None, batch_size=batch_size)
  new_pivot_vectors = {}
  transformed = None  # of out.last_h, the same for every history
  for history, (new_table, _) in pivot_tables.items():
    if transformed is None and pivot_rows[history].size:
      transformed = last_transformed(model, out.last_h, batch_size=batch_size)
    new_pivot_vectors[history] = reembed_pivots(
        model, np.asarray(pivot_vectors[history]), pivot_rows[history],
        np.asarray(new_table.ids), np.asarray(new_table.weights), out.last_rows, out.last_h,
        batch_size=batch_size, transformed=transformed)
    pivot_stats[history]["embedded"] = int(pivot_rows[history].size)
  stats = {
      "scope": scope.to_json(),
      "graph": delta.to_json(),
      "items": {"total": n, "walk_affected": item_stats["walk_affected"],
                "walked": item_stats["walked"],
                "neighborhood_rows_changed": int(changed_nb.sum()),
                "inputs_changed": int(changed_inputs.sum()),
                "embedded": int(out.rows.size), "computed_at_any_layer": out.computed},
      "pivots": pivot_stats,
  }
  return RefreshResult(graph=new_graph, delta=delta, neighborhoods=table,
                       pivot_neighborhoods=new_pivot_table, tables=tables,
                       vectors=out.vectors, bias=out.bias, pivot_vectors=new_pivot_vectors,
                       stats=stats,
                       fresh_items=None if exact else out.rows,
                       fresh_pivots=None if exact else pivot_rows.get("graph"))
