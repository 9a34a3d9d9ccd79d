"""The tf.data producer: training pairs -> `Minibatch` computation graphs.

PinSage's producer/consumer design (paper section 3.2): CPU threads build each
minibatch's computation graph (sample negatives, expand K hops of importance
neighborhoods, re-index the unique nodes of each level, gather features) while
the accelerator trains on the previous one. Here that is

    pairs -> permute (seeded, per epoch) -> shard -> shuffle -> batch(drop_remainder)
          -> enumerate -> map(build_minibatch, num_parallel_calls=AUTOTUNE) -> prefetch

A batch holds `batch_size` item pairs (query item, positive item) and
`pivot_batch_size` pivot pairs (pivot, positive item) (`pinsage_tf.positives`
decides which pairs an epoch has); with both, the two streams are zipped
(each permuted, repeated) and one epoch is as many steps as the longer one
fills. The pivot stream's items join the same computation graph and share
the batch's negatives.

Contract:
* Only TensorFlow ops run in the map (no `py_function`, `numpy_function` or
  generators: they hold the GIL and serialise the producer);
  `assert_pure_tensorflow` checks a dataset's serialised graph for them.
* Randomness is stateless and keyed by `(seed, epoch, shard, batch index)`: a
  batch's negatives do not depend on which thread built it or in which
  order, so a run is reproducible even with non-deterministic map order.
* Every epoch sees the pairs in a uniformly random order: a full permutation
  keyed by `(seed, epoch)` comes first, then the (bounded) shuffle buffer.
  Prepared pairs are stored grouped (by user, by time); a buffer alone would
  fill each batch from a narrow window of that order.
* Shapes are fixed (`Minibatch` docstring): `tf.function`s and replicas never
  retrace.
* Under `tf.distribute`, `make_distributed_dataset_fn` gives the function for
  `strategy.distribute_datasets_from_function`: each input pipeline reads its
  shard of the pairs and batches `global_batch / num_replicas` pairs; the
  `num_negatives` shared negatives are shared *within one replica's batch*.
* Items without graph edges (`content_neighbors`): their empty importance
  neighborhood is replaced by their most content-similar items with edges
  (`pinsage_tf.content_neighborhoods`); with `content_dropout` = p, each
  target of a batch is presented with probability p as such an item would be
  (content neighbors at every hop, log degree 0), so the model learns to place
  items from their look-alikes.
* Memory: the tables are held once by TensorFlow, as host variables
  (`table_tensors`, created on first use and cached on the `SamplingTables`),
  beside the numpy arrays. A dataset captures a variable as a handle, where
  it would copy a captured tensor: with constants every epoch's dataset held
  its own copy of every table, which is what limits the graph size of a
  machine (~0.5 GB of tables per million items with hard negatives).
* Leakage (`mask_pair_leakage`, on by default): a pair's positive is not in
  its query's neighbors, nor the query in the positive's, nor a pivot pair's
  positive in the pivot's neighbors (`minibatch` docstring), as for a
  held-out pair, whose edge is not in the graph. Content neighbors do not
  come from edges and are not masked.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence, Union

import numpy as np
import tensorflow as tf

from pinsage_tf import graph as graph_lib
from pinsage_tf import minibatch
from pinsage_tf import positives as positives_lib

_PURE_TF_FORBIDDEN_OPS = frozenset({
    "PyFunc", "PyFuncStateless", "EagerPyFunc", "GeneratorDataset",
})


NEGATIVE_SAMPLING = ("uniform", "degree", "edges")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """How minibatches are built.

  Attributes:
    batch_size: GLOBAL number of (query item, positive) pairs per step; each
      of R replicas gets `batch_size // R`. 0 = no item pairs.
    pivot_batch_size: GLOBAL number of (pivot, positive item) pairs per step
      (0 = no pivot pairs); split over replicas like `batch_size`.
    num_negatives: negatives shared by all queries of one replica batch.
    max_hard_negatives: H, the fixed width of the hard-negative slot per query;
      the curriculum decides how many of them are active in an epoch.
    num_layers: K, the number of convolutions (hops to expand).
    negative_sampling: "uniform" over items, "degree" (probability
      proportional to (item degree + 1) ** 0.75, word2vec style), or "edges"
      (uniform over the items with at least one graph edge: items without
      edges are never pushed away, as they are never positives either).
    shuffle_buffer: pairs held by the shuffle buffer (after the full per-epoch
      permutation; it reshuffles repeated passes).
    max_sparse_length: sparse id lists are truncated to this many ids.
    mask_pair_leakage: drop a pair's positive from its query's (or pivot's)
      neighbors and the query from the positive's (module docstring).
    content_neighbors: items without graph edges get their content neighbors
      as their neighborhood (needs item features; module docstring).
    content_dropout: probability that a batch target is presented as an item
      without edges (needs `content_neighbors`; module docstring).
    seed: base seed of shuffling and sampling.
    deterministic: keep the map output order (slower; tests and debugging).
  """

  batch_size: int = 512
  pivot_batch_size: int = 0
  num_negatives: int = 500
  max_hard_negatives: int = 0
  num_layers: int = 2
  negative_sampling: str = "uniform"
  shuffle_buffer: int = 100_000
  max_sparse_length: int = 32
  mask_pair_leakage: bool = True
  content_neighbors: bool = False
  content_dropout: float = 0.0
  seed: int = 0
  deterministic: bool = False

  def __post_init__(self):
    if self.num_layers < 1:
      raise ValueError(f"PipelineConfig.num_layers must be >= 1, got {self.num_layers}.")
    if self.batch_size < 0 or self.pivot_batch_size < 0 or not (
        self.batch_size or self.pivot_batch_size):
      raise ValueError("PipelineConfig.batch_size and pivot_batch_size must be >= 0 and not "
                       f"both 0, got {self.batch_size} and {self.pivot_batch_size}.")
    for name in ("num_negatives", "max_hard_negatives", "max_sparse_length"):
      if getattr(self, name) < 0:
        raise ValueError(f"PipelineConfig.{name} must be >= 0, got {getattr(self, name)}.")
    if not 0.0 <= self.content_dropout < 1.0:
      raise ValueError(f"PipelineConfig.content_dropout must be in [0, 1), got "
                       f"{self.content_dropout}.")
    if self.content_dropout and not self.content_neighbors:
      raise ValueError("PipelineConfig.content_dropout needs content_neighbors=True.")
    if self.negative_sampling not in NEGATIVE_SAMPLING:
      raise ValueError(f"PipelineConfig.negative_sampling must be one of {NEGATIVE_SAMPLING}, "
                       f"got {self.negative_sampling!r}.")


@dataclasses.dataclass(frozen=True)
class SamplingTables:
  """Per-item lookup tables the producer gathers from (numpy, built once).

  Attributes:
    neighbor_ids: int32 `[N, T]`; padding replaced by the item itself (with
      weight 0) so that padding never adds a node to a level.
    neighbor_weights: float32 `[N, T]`, 0 on padding.
    dense: float32 `[N, D]`.
    log_degree: float32 `[N]`.
    sparse: int32 `[N, L_f]` per sparse feature, -1 padded.
    hard_pool: int32 `[N, P]` hard-negative candidates, -1 padded (P may be 0).
    hard_counts: int32 `[N]` valid candidates per item.
    negative_logits: float32 `[N]` log-probabilities of the shared negatives
      under `negative_sampling` (-inf for items never drawn).
    negative_sampling: the `PipelineConfig.negative_sampling` the logits are for.
    pivot_neighbor_ids: int32 `[M, Tp]` importance neighbors of the pivots
      (`M = 0` without pivot pairs); padding replaced by the row's first
      neighbor (item 0 for an empty row), with weight 0.
    pivot_neighbor_weights: float32 `[M, Tp]`, 0 on padding.
    content_neighbor_ids: int32 `[N, T]` content neighbors of every item
      (`N = 0` without content dropout), padded like `neighbor_ids`.
    content_neighbor_weights: float32 `[N, T]`, 0 on padding.
  """

  neighbor_ids: np.ndarray
  neighbor_weights: np.ndarray
  dense: np.ndarray
  log_degree: np.ndarray
  sparse: tuple[np.ndarray, ...]
  hard_pool: np.ndarray
  hard_counts: np.ndarray
  negative_logits: np.ndarray
  negative_sampling: str = "degree"
  pivot_neighbor_ids: np.ndarray = dataclasses.field(
      default_factory=lambda: np.zeros((0, 1), np.int32))
  pivot_neighbor_weights: np.ndarray = dataclasses.field(
      default_factory=lambda: np.zeros((0, 1), np.float32))
  content_neighbor_ids: np.ndarray = dataclasses.field(
      default_factory=lambda: np.zeros((0, 1), np.int32))
  content_neighbor_weights: np.ndarray = dataclasses.field(
      default_factory=lambda: np.zeros((0, 1), np.float32))
  # `table_tensors`' variables, created on first use (not a field of the value).
  _tensors: dict = dataclasses.field(default_factory=dict, init=False, repr=False,
                                     compare=False)

  @property
  def num_items(self) -> int:
    return int(self.neighbor_ids.shape[0])

  @property
  def num_neighbors(self) -> int:
    return int(self.neighbor_ids.shape[1])

  @property
  def num_pivots(self) -> int:
    return int(self.pivot_neighbor_ids.shape[0])

  @property
  def num_pivot_neighbors(self) -> int:
    return int(self.pivot_neighbor_ids.shape[1])

  @classmethod
  def build(
      cls,
      graph: graph_lib.Graph,
      neighbor_ids: np.ndarray,
      neighbor_weights: np.ndarray,
      *,
      hard_pool: np.ndarray | None = None,
      max_sparse_length: int = 32,
      pivot_neighbor_ids: np.ndarray | None = None,
      pivot_neighbor_weights: np.ndarray | None = None,
      content_neighbor_ids: np.ndarray | None = None,
      content_neighbor_weights: np.ndarray | None = None,
      negative_sampling: str = "degree",
  ) -> "SamplingTables":
    """Builds the tables from a graph and its neighborhood table.

    Args:
      graph: the training graph.
      neighbor_ids: int32 `[N, T]`, -1 on padding (`Neighborhoods.ids`).
      neighbor_weights: float32 `[N, T]` (`Neighborhoods.weights`).
      hard_pool: optional int32 `[N, P]`, -1 padded (`HardNegatives.pool`).
      max_sparse_length: truncation length of sparse id lists.
      pivot_neighbor_ids, pivot_neighbor_weights: optional `[M, Tp]` pivot
        neighborhood table (`neighborhoods.compute_pivot_neighborhoods`),
        needed for pivot pairs.
      content_neighbor_ids, content_neighbor_weights: optional `[N, T]`
        content neighbors of every item (-1 padded), needed for
        `content_dropout`.
      negative_sampling: the distribution of `negative_logits`
        (`PipelineConfig.negative_sampling`).
    """
    n = graph.num_items
    neighbor_ids = np.asarray(neighbor_ids)
    if neighbor_ids.ndim != 2 or neighbor_ids.shape[0] != n:
      raise ValueError(f"neighbor_ids must have shape [{n}, T], got {neighbor_ids.shape}; "
                       "was the neighborhood table computed for another graph?")
    if neighbor_weights.shape != neighbor_ids.shape:
      raise ValueError("neighbor_weights must have the shape of neighbor_ids.")
    ids, weights = _self_padded(neighbor_ids, neighbor_weights)
    if content_neighbor_ids is None:
      content_ids = np.zeros((0, neighbor_ids.shape[1]), np.int32)
      content_weights = np.zeros((0, neighbor_ids.shape[1]), np.float32)
    else:
      if (np.shape(content_neighbor_ids) != neighbor_ids.shape
          or np.shape(content_neighbor_weights) != neighbor_ids.shape):
        raise ValueError(f"content_neighbor_ids and content_neighbor_weights must have the "
                         f"shape of neighbor_ids {neighbor_ids.shape}.")
      content_ids, content_weights = _self_padded(np.asarray(content_neighbor_ids),
                                                  np.asarray(content_neighbor_weights))
    sparse = tuple(
        s.values.to_padded(max(1, min(max_sparse_length, int(s.values.degrees().max(initial=0)))))
        for s in graph.features.sparse)
    if hard_pool is None:
      hard_pool = np.full((n, 0), -1, np.int32)
    hard_pool = np.asarray(hard_pool, np.int32)
    if hard_pool.ndim != 2 or hard_pool.shape[0] != n:
      raise ValueError(f"hard_pool must have shape [{n}, P], got {hard_pool.shape}.")
    # Candidates are stored left-aligned; count them so sampling stays in range.
    hard_counts = np.count_nonzero(hard_pool >= 0, axis=1).astype(np.int32)
    degree = graph.item_degrees().astype(np.float64)
    if negative_sampling == "degree":
      probs = (degree + 1.0) ** 0.75
    elif negative_sampling == "edges":
      if not np.any(degree > 0):
        raise ValueError(f"negative_sampling='edges' needs items with edges; graph "
                         f"{graph.name!r} has none.")
      probs = (degree > 0).astype(np.float64)
    elif negative_sampling == "uniform":
      probs = np.ones(n)
    else:
      raise ValueError(f"negative_sampling must be one of {NEGATIVE_SAMPLING}, got "
                       f"{negative_sampling!r}.")
    if pivot_neighbor_ids is None:
      pivot_ids = np.zeros((0, 1), np.int32)
      pivot_weights = np.zeros((0, 1), np.float32)
    else:
      pivot_ids, pivot_weights = _pivot_tables(graph, pivot_neighbor_ids, pivot_neighbor_weights)
    return cls(
        neighbor_ids=ids,
        neighbor_weights=weights,
        dense=np.asarray(graph.features.dense, np.float32),
        log_degree=np.asarray(graph.features.log_degree, np.float32),
        sparse=sparse,
        hard_pool=np.where(hard_pool >= 0, hard_pool, 0).astype(np.int32),
        hard_counts=hard_counts,
        negative_logits=_log(probs / probs.sum()),
        negative_sampling=negative_sampling,
        pivot_neighbor_ids=pivot_ids,
        pivot_neighbor_weights=pivot_weights,
        content_neighbor_ids=content_ids,
        content_neighbor_weights=content_weights,
    )


def _log(p: np.ndarray) -> np.ndarray:
  """float32 log with log(0) = -inf and no warning."""
  with np.errstate(divide="ignore"):
    return np.log(p).astype(np.float32)


def _self_padded(ids: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """A neighbor table with padding (-1) replaced by the row's own item, weight 0."""
  self_ids = np.arange(ids.shape[0], dtype=np.int32)[:, None]
  return (np.where(ids >= 0, ids, self_ids).astype(np.int32),
          np.where(ids >= 0, weights, 0.0).astype(np.float32))


def _pivot_tables(graph: graph_lib.Graph, ids: np.ndarray, weights: np.ndarray | None
                  ) -> tuple[np.ndarray, np.ndarray]:
  """The pivot table with padding pointed at a real neighbor (weight 0)."""
  ids = np.asarray(ids)
  if ids.ndim != 2 or ids.shape[0] != graph.num_pivots:
    raise ValueError(f"pivot_neighbor_ids must have shape [{graph.num_pivots}, Tp], got "
                     f"{ids.shape}; was the pivot table computed for another graph?")
  if weights is None or np.shape(weights) != ids.shape:
    raise ValueError("pivot_neighbor_weights must have the shape of pivot_neighbor_ids.")
  valid = ids >= 0
  # Padding repeats the row's first neighbor, so it adds no node to level K-1.
  first = np.where(valid[:, 0], ids[:, 0], 0)[:, None]
  return (np.where(valid, ids, first).astype(np.int32),
          np.where(valid, weights, 0.0).astype(np.float32))


def level_sizes(num_targets: int, num_neighbors: int, num_layers: int,
                num_items: int, pivot_slots: int = 0) -> list[int]:
  """Padded sizes `[U_0, ..., U_K]` of the levels (see `minibatch`).

  `pivot_slots` = `Bp * Tp`, the pivots' neighbor slots, which join level K-1.
  """
  sizes = [min(num_targets, num_items)]
  for k in range(num_layers):
    extra = pivot_slots if k == 0 else 0
    sizes.append(min(sizes[-1] * (num_neighbors + 1) + extra, num_items))
  return sizes[::-1]


def gather_node_inputs(tables: SamplingTables, items: tf.Tensor,
                       tensors: dict[str, tf.Variable] | None = None) -> minibatch.NodeInputs:
  """Features of `items` (int32 `[U]`) as `NodeInputs`.

  Shared by the producer (level-0 nodes) and layer-wise inference (all items).
  """
  c = tensors if tensors is not None else table_tensors(tables)
  return minibatch.NodeInputs(
      item=items,
      dense=tf.gather(c["dense"], items),
      log_degree=tf.gather(c["log_degree"], items),
      sparse=tuple(tf.gather(s, items) for s in c["sparse"]),
  )


_TABLE_NAMES = ("neighbor_ids", "neighbor_weights", "dense", "log_degree", "hard_pool",
                "hard_counts", "pivot_neighbor_ids", "pivot_neighbor_weights",
                "content_neighbor_ids", "content_neighbor_weights")


def table_tensors(tables: SamplingTables) -> dict[str, tf.Variable]:
  """The tables as non-trainable host variables, created once per `tables`.

  Every function and dataset gathering from the same `SamplingTables` shares
  these (a dataset captures a variable's handle; a captured tensor would be
  copied into it). Keys: the table fields, `sparse` (a tuple) and
  `negative_logits` (`[1, N]`, for `tf.random.stateless_categorical`).

  Raises:
    ValueError: first called inside a `tf.distribute` strategy's scope, which
      would mirror the tables to every replica: call it before the scope.
  """
  cache = tables._tensors  # pylint: disable=protected-access
  if cache:
    return cache
  if tf.distribute.has_strategy():
    raise ValueError("pipeline.table_tensors: the tables would be mirrored to every replica; "
                     "call it once before entering strategy.scope().")
  with tf.init_scope(), tf.device("/cpu:0"):
    def variable(array, name):
      return tf.Variable(array, trainable=False, name=name)
    made = {name: variable(getattr(tables, name), name) for name in _TABLE_NAMES}
    made["sparse"] = tuple(variable(s, f"sparse_{i}") for i, s in enumerate(tables.sparse))
    made["negative_logits"] = variable(tables.negative_logits[None, :], "negative_logits")
  cache.update(made)
  return cache


def _pad_to(x: tf.Tensor, size: int) -> tf.Tensor:
  """Zero-pads the first axis of `x` to the static `size`."""
  pad = [[0, size - tf.shape(x)[0]]] + [[0, 0]] * (x.shape.rank - 1)
  out = tf.pad(x, pad)
  return tf.ensure_shape(out, [size] + x.shape.as_list()[1:])


class MinibatchBuilder:
  """Builds `Minibatch`es from batches of pairs with TensorFlow ops only.

  Args:
    tables: the per-item tables.
    config: the pipeline config.
    replica_batch_size: item pairs per batch built here (per replica).
    num_hard_negatives: hard negatives active this epoch (<= H, curriculum).
    replica_pivot_batch_size: pivot pairs per batch built here (per replica).
  """

  def __init__(self, tables: SamplingTables, config: PipelineConfig,
               replica_batch_size: int, num_hard_negatives: int = 0,
               replica_pivot_batch_size: int = 0):
    if not 0 <= num_hard_negatives <= config.max_hard_negatives:
      raise ValueError(f"num_hard_negatives must be in [0, max_hard_negatives="
                       f"{config.max_hard_negatives}], got {num_hard_negatives}.")
    if num_hard_negatives and tables.hard_pool.shape[1] == 0:
      raise ValueError("hard negatives requested but the tables have no hard_pool; "
                       "pass hard_pool= to SamplingTables.build.")
    if config.content_dropout and tables.content_neighbor_ids.shape[0] != tables.num_items:
      raise ValueError("content_dropout needs the content neighbors of every item; "
                       "pass content_neighbor_ids= to SamplingTables.build.")
    if config.negative_sampling != "uniform" and (
        tables.negative_sampling != config.negative_sampling):
      raise ValueError(f"negative_sampling={config.negative_sampling!r} but the tables' "
                       f"negative_logits are for {tables.negative_sampling!r}; pass "
                       "negative_sampling= to SamplingTables.build.")
    if replica_pivot_batch_size and tables.num_pivots == 0:
      raise ValueError("pivot pairs requested but the tables have no pivot neighborhoods; "
                       "pass pivot_neighbor_ids= to SamplingTables.build.")
    self._tables = tables
    self._config = config
    self._b = replica_batch_size
    self._bp = replica_pivot_batch_size
    self._h = num_hard_negatives
    self._c = table_tensors(tables)
    num_targets = (2 * self._b + self._bp + config.num_negatives
                   + self._b * config.max_hard_negatives)
    self.level_sizes = level_sizes(num_targets, tables.num_neighbors, config.num_layers,
                                   tables.num_items,
                                   pivot_slots=self._bp * tables.num_pivot_neighbors)

  def __call__(self, seed: tf.Tensor, query: tf.Tensor, positive: tf.Tensor,
               pivot: tf.Tensor | None = None,
               pivot_positive: tf.Tensor | None = None) -> minibatch.Minibatch:
    """Builds one minibatch.

    Args:
      seed: int64 `[2]` stateless seed of this batch.
      query: int32 `[B]` query items.
      positive: int32 `[B]` positive items.
      pivot: int32 `[Bp]` pivots of the pivot pairs (None when Bp = 0).
      pivot_positive: int32 `[Bp]` their positive items.
    """
    cfg, c, b, bp = self._config, self._c, self._b, self._bp
    hmax, t = cfg.max_hard_negatives, self._tables.num_neighbors
    if pivot is None:
      pivot = tf.zeros([0], tf.int32)
      pivot_positive = tf.zeros([0], tf.int32)
    neg_seed, hard_seed = tf.unstack(
        tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2))
    n = self._tables.num_items
    if cfg.negative_sampling == "uniform":
      negative = tf.random.stateless_uniform([cfg.num_negatives], neg_seed, 0, n, tf.int32)
    else:
      negative = tf.cast(tf.random.stateless_categorical(
          c["negative_logits"], cfg.num_negatives, neg_seed)[0], tf.int32)

    # Hard negatives: sample (with replacement) H of each query's pool; only
    # the first h slots are active this epoch, and none where the pool is empty.
    counts = tf.gather(c["hard_counts"], query)  # (B,)
    if hmax:
      u = tf.random.stateless_uniform([b, hmax], hard_seed)
      slot = tf.cast(u * tf.cast(tf.maximum(counts, 1), tf.float32)[:, None], tf.int32)
      slot = tf.minimum(slot, tf.maximum(counts, 1)[:, None] - 1)
      pool = tf.gather(c["hard_pool"], query)  # (B, P)
      hard = tf.gather(pool, slot, batch_dims=1)  # (B, H)
      active = (tf.range(hmax) < self._h)[None, :] & (counts > 0)[:, None]
      hard_mask = tf.cast(active, tf.float32)
      # Inactive slots (early curriculum epochs, empty pools) point at the
      # query itself, already a target: they add no node to compute.
      hard = tf.where(active, hard, query[:, None])
    else:
      hard = tf.zeros([b, 0], tf.int32)
      hard_mask = tf.zeros([b, 0], tf.float32)

    # Pivots' neighbors, without the pair's own positive.
    if bp:
      pivot_nbr = tf.gather(c["pivot_neighbor_ids"], pivot)  # (Bp, Tp)
      pivot_w = tf.gather(c["pivot_neighbor_weights"], pivot)  # (Bp, Tp)
      if cfg.mask_pair_leakage:
        pivot_w = tf.where(tf.equal(pivot_nbr, pivot_positive[:, None]), 0.0, pivot_w)
    else:
      pivot_nbr = tf.zeros([0, max(1, self._tables.num_pivot_neighbors)], tf.int32)
      pivot_w = tf.zeros([0, max(1, self._tables.num_pivot_neighbors)], tf.float32)

    targets = tf.concat([query, positive, pivot_positive, negative, tf.reshape(hard, [-1])],
                        axis=0)
    nodes, target_pos = tf.unique(targets)  # level K
    # Targets presented as items without edges. unique() keeps each level's
    # own nodes first, so positions 0..c_K-1 are the targets at every level.
    num_targets = tf.shape(nodes)[0]
    as_cold = None
    if cfg.content_dropout:
      cold_seed = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), 1)
      as_cold = tf.random.stateless_uniform([num_targets], cold_seed) < cfg.content_dropout
    sizes = self.level_sizes
    num_nodes = [tf.shape(nodes)[0]]
    hops = []
    pivot_index = None
    for k in range(cfg.num_layers, 0, -1):
      count = tf.shape(nodes)[0]
      nbr = tf.gather(c["neighbor_ids"], nodes)  # (c_k, T)
      w = tf.gather(c["neighbor_weights"], nodes)  # (c_k, T)
      if k == cfg.num_layers and cfg.mask_pair_leakage and b:
        w = _mask_pairs(nodes, nbr, w, query, positive, n)
      if as_cold is not None:
        # Content neighbors do not come from edges, so a held-out pair can
        # meet its partner there too: they are never masked.
        cold = tf.pad(as_cold, [[0, count - num_targets]])[:, None]  # (c_k, 1)
        nbr = tf.where(cold, tf.gather(c["content_neighbor_ids"], nodes), nbr)
        w = tf.where(cold, tf.gather(c["content_neighbor_weights"], nodes), w)
      parts = [nodes, tf.reshape(nbr, [-1])]
      if k == cfg.num_layers:
        parts.append(tf.reshape(pivot_nbr, [-1]))
      # The level's own nodes come first, so unique() keeps them at positions
      # 0..c_k-1 of level k-1 and self_index is the identity.
      prev, idx = tf.unique(tf.concat(parts, axis=0))
      nbr_index = tf.reshape(idx[count:count + count * t], [count, t])
      if k == cfg.num_layers:
        pivot_index = tf.reshape(idx[count + count * t:], tf.shape(pivot_nbr))
      hops.append(minibatch.Hop(
          self_index=tf.range(sizes[k], dtype=tf.int32),
          neighbor_index=_pad_to(nbr_index, sizes[k]),
          neighbor_weight=_pad_to(w, sizes[k])))
      nodes = prev
      num_nodes.append(tf.shape(nodes)[0])
    hops.reverse()
    num_nodes.reverse()
    level0 = _pad_to(nodes, sizes[0])
    inputs = gather_node_inputs(self._tables, level0, c)
    if as_cold is not None:
      cold = tf.pad(as_cold, [[0, sizes[0] - num_targets]])
      inputs = inputs._replace(log_degree=tf.where(cold, 0.0, inputs.log_degree))
    k_pos = target_pos
    nn = cfg.num_negatives
    return minibatch.Minibatch(
        inputs=inputs,
        hops=tuple(hops),
        query=k_pos[:b],
        positive=k_pos[b:2 * b],
        negative=k_pos[2 * b + bp:2 * b + bp + nn],
        hard_negative=tf.reshape(k_pos[2 * b + bp + nn:], [b, hmax]),
        hard_mask=hard_mask,
        num_nodes=tf.stack(num_nodes),
        pivot_positive=k_pos[2 * b:2 * b + bp],
        pivot_neighbor_index=pivot_index,
        pivot_neighbor_weight=pivot_w,
    )


def _mask_pairs(nodes: tf.Tensor, nbr: tf.Tensor, w: tf.Tensor, query: tf.Tensor,
                positive: tf.Tensor, num_items: int) -> tf.Tensor:
  """`w` with slot (u, t) zeroed where (nodes[u], nbr[u, t]) is a pair of the batch
  in either direction (int64 keys `a * N + b`, membership by binary search)."""
  q = tf.cast(query, tf.int64)
  p = tf.cast(positive, tf.int64)
  keys = tf.sort(tf.concat([q * num_items + p, p * num_items + q], axis=0))
  slots = tf.reshape(tf.cast(nodes, tf.int64)[:, None] * num_items
                     + tf.cast(nbr, tf.int64), [-1])
  pos = tf.searchsorted(keys, slots)
  found = tf.gather(keys, tf.minimum(pos, tf.size(keys, out_type=pos.dtype) - 1)) == slots
  return tf.where(tf.reshape(found, tf.shape(w)), 0.0, w)


PairsLike = Union[positives_lib.EpochPairs, tuple]


def as_epoch_pairs(pairs: PairsLike) -> positives_lib.EpochPairs:
  """`EpochPairs` from itself or from a (query, positive) item-pair tuple."""
  if isinstance(pairs, positives_lib.EpochPairs):
    out = pairs
  else:
    query, positive = pairs
    empty = np.zeros(0, np.int32)
    out = positives_lib.EpochPairs(np.asarray(query, np.int32), np.asarray(positive, np.int32),
                                   empty, empty)
  for a, b, what in ((out.query, out.positive, "item"),
                     (out.pivot, out.pivot_positive, "pivot")):
    if np.shape(a) != np.shape(b) or np.ndim(a) != 1:
      raise ValueError(f"{what} pairs must be two equal-length 1-D arrays.")
  return out


def steps_per_epoch(pairs: PairsLike, config: PipelineConfig) -> int:
  """Global steps of one epoch: as many as the longer pair stream fills."""
  pairs = as_epoch_pairs(pairs)
  steps = 0
  if config.batch_size:
    steps = max(steps, pairs.query.shape[0] // config.batch_size)
  if config.pivot_batch_size:
    steps = max(steps, pairs.pivot.shape[0] // config.pivot_batch_size)
  return steps


def make_dataset(
    tables: SamplingTables,
    pairs: PairsLike,
    config: PipelineConfig,
    *,
    epoch: int = 1,
    num_hard_negatives: int = 0,
    input_context: tf.distribute.InputContext | None = None,
    repeat: bool = False,
    skip_batches: int = 0,
) -> tf.data.Dataset:
  """The training dataset of one epoch (or an endless one with `repeat`).

  Args:
    tables: per-item tables (`SamplingTables.build`).
    pairs: the epoch's `EpochPairs` (`positives.epoch_pairs`), or a
      (query int `[P]`, positive int `[P]`) tuple of item pairs.
    config: pipeline config; `config.batch_size` and
      `config.pivot_batch_size` are global batch sizes.
    epoch: 1-based epoch; it keys the permutation, the shuffle order and the
      sampling seeds.
    num_hard_negatives: active hard negatives per query this epoch.
    input_context: from `distribute_datasets_from_function`; selects this
      pipeline's shard and the per-replica batch size.
    repeat: repeat the shuffled pairs forever (each pass reshuffled).
    skip_batches: batches to skip (resuming mid-epoch). They are skipped
      before the map, so they cost no sampling, and the batches after them
      keep their order and seeds.

  Returns:
    A dataset of `Minibatch` with fixed shapes; without `repeat`, one epoch
    of `steps_per_epoch(pairs, config)` (per pipeline) batches.
  """
  pairs = as_epoch_pairs(pairs)
  num_pipelines, pipeline_id = 1, 0
  replica_batch, replica_pivot_batch = config.batch_size, config.pivot_batch_size
  if input_context is not None:
    num_pipelines = input_context.num_input_pipelines
    pipeline_id = input_context.input_pipeline_id
    replica_batch = input_context.get_per_replica_batch_size(config.batch_size)
    replica_pivot_batch = input_context.get_per_replica_batch_size(config.pivot_batch_size)
  streams = []
  num_batches = 0
  for size, (first, second), tag, what in (
      (replica_batch, (pairs.query, pairs.positive), 0x5EED, "item"),
      (replica_pivot_batch, (pairs.pivot, pairs.pivot_positive), 0x9170, "pivot")):
    if not size:
      continue
    count = first.shape[0]
    if count // num_pipelines < size:
      raise ValueError(f"{count} {what} pairs cannot fill one batch of {size} per replica; "
                       f"lower the {what} batch size.")
    num_batches = max(num_batches, count // num_pipelines // size)
    # The same permutation in every input pipeline, so their shards stay disjoint.
    order = np.random.default_rng([config.seed, epoch, tag]).permutation(count)
    ds = tf.data.Dataset.from_tensor_slices((first[order], second[order]))
    if num_pipelines > 1:
      ds = ds.shard(num_pipelines, pipeline_id)
    ds = ds.shuffle(min(config.shuffle_buffer, count),
                    seed=config.seed * 1_000_003 + epoch * 7919 + pipeline_id + tag,
                    reshuffle_each_iteration=True)
    streams.append(ds.repeat().batch(size, drop_remainder=True))
  builder = MinibatchBuilder(tables, config, replica_batch, num_hard_negatives,
                             replica_pivot_batch)
  ds = streams[0] if len(streams) == 1 else tf.data.Dataset.zip(tuple(streams))
  if not repeat:
    ds = ds.take(num_batches)
  ds = ds.enumerate()
  if skip_batches:
    ds = ds.skip(skip_batches)
  base = tf.constant([config.seed, epoch * 65_536 + pipeline_id], tf.int64)
  empty = tf.zeros([0], tf.int32)

  def build(index, batch):
    seed = tf.stack([base[0] * 1_000_003 + index, base[1]])
    if len(streams) == 2:
      (query, positive), (pivot, pivot_positive) = batch
    elif replica_batch:
      (query, positive), pivot, pivot_positive = batch, empty, empty
    else:
      query = positive = empty
      pivot, pivot_positive = batch
    return builder(seed, query, positive, pivot, pivot_positive)

  ds = ds.map(build, num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=config.deterministic)
  return ds.prefetch(tf.data.AUTOTUNE)


def make_distributed_dataset_fn(
    tables: SamplingTables, pairs: PairsLike, config: PipelineConfig,
    *, epoch: int = 1, num_hard_negatives: int = 0, repeat: bool = False,
    skip_batches: int = 0,
) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
  """The `dataset_fn` for `strategy.distribute_datasets_from_function`."""

  def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
    return make_dataset(tables, pairs, config, epoch=epoch,
                        num_hard_negatives=num_hard_negatives,
                        input_context=input_context, repeat=repeat,
                        skip_batches=skip_batches)

  return dataset_fn


def forbidden_ops(dataset: tf.data.Dataset) -> list[str]:
  """Names of Python-calling ops in `dataset`'s graph (including functions)."""
  graph_def = tf.compat.v1.GraphDef()
  graph_def.ParseFromString(dataset._as_serialized_graph().numpy())  # pylint: disable=protected-access
  nodes: Sequence = list(graph_def.node)
  for fn in graph_def.library.function:
    nodes += list(fn.node_def)
  return sorted({node.op for node in nodes if node.op in _PURE_TF_FORBIDDEN_OPS})


def assert_pure_tensorflow(dataset: tf.data.Dataset) -> None:
  """Raises ValueError if the dataset calls back into Python (GIL-bound)."""
  bad = forbidden_ops(dataset)
  if bad:
    raise ValueError(f"dataset uses Python-calling ops {bad}; the producer must use "
                     "TensorFlow ops only (no py_function/numpy_function/generators).")
