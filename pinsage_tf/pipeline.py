"""The tf.data producer: training pairs -> `Minibatch` computation graphs.

PinSage's producer/consumer design (paper section 3.2): CPU threads build each
minibatch's computation graph (sample negatives, expand K hops of importance
neighborhoods, re-index the unique nodes of each level, gather features) while
the accelerator trains on the previous one. Here that is

    pairs -> permute (seeded, per epoch) -> shard -> shuffle -> batch(drop_remainder)
          -> enumerate -> map(build_minibatch, num_parallel_calls=AUTOTUNE) -> prefetch

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
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from pinsage_tf import graph as graph_lib
from pinsage_tf import minibatch

_PURE_TF_FORBIDDEN_OPS = frozenset({
    "PyFunc", "PyFuncStateless", "EagerPyFunc", "GeneratorDataset",
})


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """How minibatches are built.

  Attributes:
    batch_size: GLOBAL number of (query, positive) pairs per step; each of
      R replicas gets `batch_size // R`.
    num_negatives: negatives shared by all queries of one replica batch.
    max_hard_negatives: H, the fixed width of the hard-negative slot per query;
      the curriculum decides how many of them are active in an epoch.
    num_layers: K, the number of convolutions (hops to expand).
    negative_sampling: "uniform" over items, or "degree" (probability
      proportional to (item degree + 1) ** 0.75, word2vec style).
    shuffle_buffer: pairs held by the shuffle buffer (after the full per-epoch
      permutation; it reshuffles repeated passes).
    max_sparse_length: sparse id lists are truncated to this many ids.
    seed: base seed of shuffling and sampling.
    deterministic: keep the map output order (slower; tests and debugging).
  """

  batch_size: int = 512
  num_negatives: int = 500
  max_hard_negatives: int = 0
  num_layers: int = 2
  negative_sampling: str = "uniform"
  shuffle_buffer: int = 100_000
  max_sparse_length: int = 32
  seed: int = 0
  deterministic: bool = False

  def __post_init__(self):
    for name in ("batch_size", "num_layers"):
      if getattr(self, name) < 1:
        raise ValueError(f"PipelineConfig.{name} must be >= 1, got {getattr(self, name)}.")
    for name in ("num_negatives", "max_hard_negatives", "max_sparse_length"):
      if getattr(self, name) < 0:
        raise ValueError(f"PipelineConfig.{name} must be >= 0, got {getattr(self, name)}.")
    if self.negative_sampling not in ("uniform", "degree"):
      raise ValueError("PipelineConfig.negative_sampling must be 'uniform' or 'degree', "
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
    negative_logits: float32 `[N]` log-probabilities for "degree" sampling.
  """

  neighbor_ids: np.ndarray
  neighbor_weights: np.ndarray
  dense: np.ndarray
  log_degree: np.ndarray
  sparse: tuple[np.ndarray, ...]
  hard_pool: np.ndarray
  hard_counts: np.ndarray
  negative_logits: np.ndarray

  @property
  def num_items(self) -> int:
    return int(self.neighbor_ids.shape[0])

  @property
  def num_neighbors(self) -> int:
    return int(self.neighbor_ids.shape[1])

  @classmethod
  def build(
      cls,
      graph: graph_lib.Graph,
      neighbor_ids: np.ndarray,
      neighbor_weights: np.ndarray,
      *,
      hard_pool: np.ndarray | None = None,
      max_sparse_length: int = 32,
  ) -> "SamplingTables":
    """Builds the tables from a graph and its neighborhood table.

    Args:
      graph: the training graph.
      neighbor_ids: int32 `[N, T]`, -1 on padding (`Neighborhoods.ids`).
      neighbor_weights: float32 `[N, T]` (`Neighborhoods.weights`).
      hard_pool: optional int32 `[N, P]`, -1 padded (`HardNegatives.pool`).
      max_sparse_length: truncation length of sparse id lists.
    """
    n = graph.num_items
    neighbor_ids = np.asarray(neighbor_ids)
    if neighbor_ids.ndim != 2 or neighbor_ids.shape[0] != n:
      raise ValueError(f"neighbor_ids must have shape [{n}, T], got {neighbor_ids.shape}; "
                       "was the neighborhood table computed for another graph?")
    if neighbor_weights.shape != neighbor_ids.shape:
      raise ValueError("neighbor_weights must have the shape of neighbor_ids.")
    self_ids = np.arange(n, dtype=np.int32)[:, None]
    ids = np.where(neighbor_ids >= 0, neighbor_ids, self_ids).astype(np.int32)
    weights = np.where(neighbor_ids >= 0, neighbor_weights, 0.0).astype(np.float32)
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
    probs = (degree + 1.0) ** 0.75
    return cls(
        neighbor_ids=ids,
        neighbor_weights=weights,
        dense=np.asarray(graph.features.dense, np.float32),
        log_degree=np.asarray(graph.features.log_degree, np.float32),
        sparse=sparse,
        hard_pool=np.where(hard_pool >= 0, hard_pool, 0).astype(np.int32),
        hard_counts=hard_counts,
        negative_logits=np.log(probs / probs.sum()).astype(np.float32),
    )


def level_sizes(num_targets: int, num_neighbors: int, num_layers: int,
                num_items: int) -> list[int]:
  """Padded sizes `[U_0, ..., U_K]` of the levels (see `minibatch`)."""
  sizes = [min(num_targets, num_items)]
  for _ in range(num_layers):
    sizes.append(min(sizes[-1] * (num_neighbors + 1), num_items))
  return sizes[::-1]


def gather_node_inputs(tables: SamplingTables, items: tf.Tensor,
                       constants: dict[str, tf.Tensor] | None = None) -> minibatch.NodeInputs:
  """Features of `items` (int32 `[U]`) as `NodeInputs`.

  Shared by the producer (level-0 nodes) and layer-wise inference (all items).
  """
  c = constants if constants is not None else table_constants(tables)
  return minibatch.NodeInputs(
      item=items,
      dense=tf.gather(c["dense"], items),
      log_degree=tf.gather(c["log_degree"], items),
      sparse=tuple(tf.gather(s, items) for s in c["sparse"]),
  )


def table_constants(tables: SamplingTables) -> dict[str, tf.Tensor]:
  """The tables as tensors, created once and shared by the functions using them."""
  return {
      "neighbor_ids": tf.constant(tables.neighbor_ids),
      "neighbor_weights": tf.constant(tables.neighbor_weights),
      "dense": tf.constant(tables.dense),
      "log_degree": tf.constant(tables.log_degree),
      "sparse": tuple(tf.constant(s) for s in tables.sparse),
      "hard_pool": tf.constant(tables.hard_pool),
      "hard_counts": tf.constant(tables.hard_counts),
      "negative_logits": tf.constant(tables.negative_logits[None, :]),
  }


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
    replica_batch_size: pairs per batch built here (per replica).
    num_hard_negatives: hard negatives active this epoch (<= H, curriculum).
  """

  def __init__(self, tables: SamplingTables, config: PipelineConfig,
               replica_batch_size: int, num_hard_negatives: int = 0):
    if not 0 <= num_hard_negatives <= config.max_hard_negatives:
      raise ValueError(f"num_hard_negatives must be in [0, max_hard_negatives="
                       f"{config.max_hard_negatives}], got {num_hard_negatives}.")
    if num_hard_negatives and tables.hard_pool.shape[1] == 0:
      raise ValueError("hard negatives requested but the tables have no hard_pool; "
                       "pass hard_pool= to SamplingTables.build.")
    self._tables = tables
    self._config = config
    self._b = replica_batch_size
    self._h = num_hard_negatives
    self._c = table_constants(tables)
    num_targets = 2 * self._b + config.num_negatives + self._b * config.max_hard_negatives
    self.level_sizes = level_sizes(num_targets, tables.num_neighbors, config.num_layers,
                                   tables.num_items)

  def __call__(self, seed: tf.Tensor, query: tf.Tensor, positive: tf.Tensor) -> minibatch.Minibatch:
    """Builds one minibatch.

    Args:
      seed: int64 `[2]` stateless seed of this batch.
      query: int32 `[B]` query items.
      positive: int32 `[B]` positive items.
    """
    cfg, c, b = self._config, self._c, self._b
    hmax, t = cfg.max_hard_negatives, self._tables.num_neighbors
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

    targets = tf.concat([query, positive, negative, tf.reshape(hard, [-1])], axis=0)
    nodes, target_pos = tf.unique(targets)  # level K
    sizes = self.level_sizes
    num_nodes = [tf.shape(nodes)[0]]
    hops = []
    for k in range(cfg.num_layers, 0, -1):
      count = tf.shape(nodes)[0]
      nbr = tf.gather(c["neighbor_ids"], nodes)  # (c_k, T)
      w = tf.gather(c["neighbor_weights"], nodes)  # (c_k, T)
      # The level's own nodes come first, so unique() keeps them at positions
      # 0..c_k-1 of level k-1 and self_index is the identity.
      prev, idx = tf.unique(tf.concat([nodes, tf.reshape(nbr, [-1])], axis=0))
      nbr_index = tf.reshape(idx[count:], [count, t])
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
    k_pos = target_pos
    return minibatch.Minibatch(
        inputs=inputs,
        hops=tuple(hops),
        query=k_pos[:b],
        positive=k_pos[b:2 * b],
        negative=k_pos[2 * b:2 * b + cfg.num_negatives],
        hard_negative=tf.reshape(k_pos[2 * b + cfg.num_negatives:], [b, hmax]),
        hard_mask=hard_mask,
        num_nodes=tf.stack(num_nodes),
    )


def make_dataset(
    tables: SamplingTables,
    pairs: tuple[np.ndarray, np.ndarray],
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
    pairs: (query int `[P]`, positive int `[P]`) training pairs.
    config: pipeline config; `config.batch_size` is the global batch.
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
    A dataset of `Minibatch` with fixed shapes.
  """
  query, positive = (np.asarray(a, np.int32) for a in pairs)
  if query.shape != positive.shape or query.ndim != 1:
    raise ValueError("pairs must be two equal-length 1-D arrays (query, positive).")
  num_pipelines, pipeline_id, replica_batch = 1, 0, config.batch_size
  if input_context is not None:
    num_pipelines = input_context.num_input_pipelines
    pipeline_id = input_context.input_pipeline_id
    replica_batch = input_context.get_per_replica_batch_size(config.batch_size)
  if query.shape[0] // num_pipelines < replica_batch:
    raise ValueError(f"{query.shape[0]} pairs cannot fill one batch of {replica_batch} "
                     f"per replica; lower batch_size.")
  builder = MinibatchBuilder(tables, config, replica_batch, num_hard_negatives)
  # The same permutation in every input pipeline, so their shards stay disjoint.
  order = np.random.default_rng([config.seed, epoch, 0x5EED]).permutation(query.shape[0])
  ds = tf.data.Dataset.from_tensor_slices((query[order], positive[order]))
  if num_pipelines > 1:
    ds = ds.shard(num_pipelines, pipeline_id)
  ds = ds.shuffle(min(config.shuffle_buffer, query.shape[0]),
                  seed=config.seed * 1_000_003 + epoch * 7919 + pipeline_id,
                  reshuffle_each_iteration=True)
  if repeat:
    ds = ds.repeat()
  ds = ds.batch(replica_batch, drop_remainder=True).enumerate()
  if skip_batches:
    ds = ds.skip(skip_batches)
  base = tf.constant([config.seed, epoch * 65_536 + pipeline_id], tf.int64)

  def build(index, batch):
    seed = tf.stack([base[0] * 1_000_003 + index, base[1]])
    return builder(seed, batch[0], batch[1])

  ds = ds.map(build, num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=config.deterministic)
  return ds.prefetch(tf.data.AUTOTUNE)


def make_distributed_dataset_fn(
    tables: SamplingTables, pairs: tuple[np.ndarray, np.ndarray], config: PipelineConfig,
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
