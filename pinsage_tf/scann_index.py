"""ScaNN retrieval index over item embeddings, built with ScaNN's TensorFlow ops.

The index is a `scann.scann_ops` searcher: its state lives in a `tf.Module`
(`ScannState`: variables holding the serialised config, partitioner, codebooks
and datapoints), so it is saved inside a SavedModel and re-created when the
SavedModel is loaded. Such a SavedModel contains custom "Scann>..." ops: it
loads only in a process that has done `import scann` (this module does), and
must be saved with `SAVE_OPTIONS` (the "Scann" op namespace allowed).

Configuration (`ScannConfig`, resolved for a corpus by `resolve_config`)
follows ScaNN's own rules of thumb (google-research/scann/docs/algorithms.md):

* fewer than 20k points: brute-force scoring (exact up to float round-off);
* fewer than 100k points: asymmetric hashing (AH, 2 dimensions per block),
  then exact re-scoring ("reorder") of the best candidates;
* more: a k-means tree with `num_leaves ~ sqrt(N)` partitions of which
  `num_leaves / 10` are searched per query, AH scoring inside them, then
  exact re-scoring of the best `40 k` candidates.

Every field can be set explicitly to override the choice. Scores are inner
products (`distance_measure="dot_product"`, larger is better; the cosine for
L2-normalised embeddings).

Contract of `search(state, queries [B, d], k)`: float32 scores `[B, k]` sorted
in descending order and int32 row indices `[B, k]` of the corpus.
`recall_at_k` compares approximate and exact result lists.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import tensorflow as tf
import scann  # noqa: F401  (registers ScaNN's TF ops)
from scann.scann_ops.py import scann_ops

ALGORITHMS = ("auto", "brute_force", "ah", "tree_ah")
# ScaNN's rules of thumb: brute force below 20k points, AH (no tree) below 100k.
BRUTE_FORCE_MAX_ITEMS = 20_000
AH_MAX_ITEMS = 100_000
# SavedModels holding a ScaNN searcher must allow the custom op namespace.
SAVE_OPTIONS = tf.saved_model.SaveOptions(namespace_whitelist=["Scann"])


@dataclasses.dataclass(frozen=True)
class ScannConfig:
  """How the ScaNN index is built; None fields are chosen by `resolve_config`.

  Attributes:
    algorithm: "auto" (by corpus size, see the module docstring),
      "brute_force", "ah" (asymmetric hashing + reorder, no partitioning) or
      "tree_ah" (partitioning + AH + reorder).
    num_leaves: tree partitions (tree_ah); default round(sqrt(N)).
    num_leaves_to_search: partitions searched per query (tree_ah); default
      ceil(num_leaves / 10).
    dimensions_per_block: AH block width; ScaNN recommends 2.
    anisotropic_quantization_threshold: AH's anisotropic loss threshold for
      inner products (ScaNN's README uses 0.2); NaN disables it.
    reorder_num_neighbors: candidates re-scored exactly (ah, tree_ah);
      default max(100, 40 * k). (bench/bench_scann.py, 1M x 64 clustered:
      recall@10 0.970 with 100 candidates, 0.9999 with 400, at ~80% of the
      queries/s.)
    training_sample_size: points sampled to train the tree and codebooks.
    training_iterations: k-means iterations of the tree.
    training_threads: threads for training (0 = all cores).
  """

  algorithm: str = "auto"
  num_leaves: int | None = None
  num_leaves_to_search: int | None = None
  dimensions_per_block: int = 2
  anisotropic_quantization_threshold: float = 0.2
  reorder_num_neighbors: int | None = None
  training_sample_size: int = 100_000
  training_iterations: int = 12
  training_threads: int = 0

  def __post_init__(self):
    if self.algorithm not in ALGORITHMS:
      raise ValueError(f"ScannConfig.algorithm must be one of {ALGORITHMS}, got "
                       f"{self.algorithm!r}.")
    for name in ("num_leaves", "num_leaves_to_search", "reorder_num_neighbors"):
      value = getattr(self, name)
      if value is not None and (not isinstance(value, int) or value < 1):
        raise ValueError(f"ScannConfig.{name} must be a positive int or None (automatic), "
                         f"got {value!r}.")
    for name in ("dimensions_per_block", "training_sample_size", "training_iterations"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"ScannConfig.{name} must be a positive int, got {value!r}.")
    if self.training_threads < 0:
      raise ValueError(f"ScannConfig.training_threads must be >= 0 (0 = all cores), got "
                       f"{self.training_threads!r}.")
    if (self.num_leaves is not None and self.num_leaves_to_search is not None
        and self.num_leaves_to_search > self.num_leaves):
      raise ValueError(f"ScannConfig.num_leaves_to_search={self.num_leaves_to_search} exceeds "
                       f"num_leaves={self.num_leaves}.")

  def to_json(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    if math.isnan(out["anisotropic_quantization_threshold"]):
      out["anisotropic_quantization_threshold"] = None
    return out


def resolve_config(num_items: int, k: int, config: ScannConfig = ScannConfig()) -> ScannConfig:
  """Fills the automatic choices of `config` for a corpus of `num_items` rows.

  Args:
    num_items: N, rows of the corpus.
    k: neighbors a query asks for (the reorder default depends on it).
    config: explicit settings; None fields and algorithm "auto" are resolved.

  Returns:
    A `ScannConfig` with a concrete algorithm; `num_leaves`,
    `num_leaves_to_search` set for tree_ah and `reorder_num_neighbors` for
    ah / tree_ah (fields the algorithm does not use are None).
  """
  if num_items < 1 or k < 1:
    raise ValueError(f"need num_items >= 1 and k >= 1, got {num_items} and {k}.")
  algorithm = config.algorithm
  if algorithm == "auto":
    if num_items < BRUTE_FORCE_MAX_ITEMS:
      algorithm = "brute_force"
    elif num_items < AH_MAX_ITEMS:
      algorithm = "ah"
    else:
      algorithm = "tree_ah"
  num_leaves = num_leaves_to_search = reorder = None
  if algorithm == "tree_ah":
    num_leaves = config.num_leaves or max(1, int(round(math.sqrt(num_items))))
    if num_leaves > num_items:
      raise ValueError(f"ScannConfig.num_leaves={num_leaves} exceeds the corpus size "
                       f"{num_items}.")
    num_leaves_to_search = config.num_leaves_to_search or max(1, math.ceil(num_leaves / 10))
    num_leaves_to_search = min(num_leaves_to_search, num_leaves)
  if algorithm in ("ah", "tree_ah"):
    reorder = config.reorder_num_neighbors or max(100, 40 * k)
    reorder = max(reorder, k)
  return dataclasses.replace(config, algorithm=algorithm, num_leaves=num_leaves,
                             num_leaves_to_search=num_leaves_to_search,
                             reorder_num_neighbors=reorder)


def build_state(vectors: np.ndarray, config: ScannConfig, k: int) -> scann_ops.ScannState:
  """Trains a ScaNN searcher on `vectors` and returns its saveable state.

  Args:
    vectors: float32 `[N, d]` corpus (row i = item i).
    config: a config resolved by `resolve_config` (algorithm not "auto").
    k: default neighbors per query (searches may ask for another k).

  Returns:
    The searcher's `ScannState` (a `tf.Module` of variables); attach it to the
    module being saved and query it with `search`.
  """
  if config.algorithm == "auto":
    raise ValueError("resolve the ScannConfig with resolve_config(...) before building.")
  vectors = np.ascontiguousarray(vectors, dtype=np.float32)
  if vectors.ndim != 2 or vectors.shape[0] < 1:
    raise ValueError(f"vectors must be a non-empty [N, d] array, got {vectors.shape}.")
  builder = scann_ops.builder(vectors, k, "dot_product")
  if config.algorithm == "tree_ah":
    builder = builder.tree(
        num_leaves=config.num_leaves, num_leaves_to_search=config.num_leaves_to_search,
        training_sample_size=min(config.training_sample_size, vectors.shape[0]),
        training_iterations=config.training_iterations)
  if config.algorithm == "brute_force":
    builder = builder.score_brute_force()
  else:
    builder = builder.score_ah(
        config.dimensions_per_block,
        anisotropic_quantization_threshold=config.anisotropic_quantization_threshold,
        training_sample_size=min(config.training_sample_size, vectors.shape[0]))
    builder = builder.reorder(config.reorder_num_neighbors)
  builder = builder.set_n_training_threads(config.training_threads)
  return builder.build().serialize_to_module()


def search(state: scann_ops.ScannState, queries: tf.Tensor, k: int | tf.Tensor
           ) -> tuple[tf.Tensor, tf.Tensor]:
  """Top-k inner-product search of `queries` float32 `[B, d]` in the index.

  Usable eagerly or inside a `tf.function` (the searcher resource is created
  from `state` by the function's first run and then reused).

  Returns:
    (scores float32 `[B, k]` descending, indices int32 `[B, k]`).
  """
  width = k if isinstance(k, int) else None

  def run():
    searcher = scann_ops.searcher_from_module(state)
    result = searcher.search_batched_parallel(queries, final_num_neighbors=k)
    # The custom op has no shape function: restore the rank for callers.
    return (tf.ensure_shape(result.distances, [None, width]),
            tf.ensure_shape(result.indices, [None, width]))

  def empty():
    # ScaNN answers an empty batch with a [0, 0] result.
    return tf.zeros([0, k], tf.float32), tf.zeros([0, k], tf.int32)

  return tf.cond(tf.shape(queries)[0] > 0, run, empty)


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
  """Mean over queries of |approx_q ∩ exact_q| / |exact_q| (ids, any order).

  Args:
    approx: `[Q, k]` ids returned by the approximate index.
    exact: `[Q, k]` ids of the exact top-k (padding < 0 is ignored).
  """
  approx = np.asarray(approx)
  exact = np.asarray(exact)
  if approx.shape[0] != exact.shape[0]:
    raise ValueError(f"approx has {approx.shape[0]} queries, exact {exact.shape[0]}.")
  if exact.shape[0] == 0:
    return float("nan")
  total = hits = 0
  for a, e in zip(approx, exact):
    e = e[e >= 0] if e.dtype.kind in "iu" else e
    hits += len(set(a.tolist()) & set(e.tolist()))
    total += len(e)
  return hits / total if total else float("nan")
