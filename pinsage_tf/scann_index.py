"""ScaNN retrieval index over item embeddings, for ScaNN's TensorFlow ops and its pybind searcher.

The index is trained once with `scann_ops_pybind` and serialised in ScaNN's
own format (`build_state(..., artifacts_dir=...)`); the `scann.scann_ops`
searcher's state is read back from those files into a `tf.Module`
(`ScannState`: variables holding the serialised config, partitioner, codebooks
and datapoints), so it is saved inside a SavedModel and re-created when the
SavedModel is loaded, and `load_searcher` loads the same index as a pybind
searcher (same neighbors and scores) that can search on several threads.
Such a SavedModel contains custom "Scann>..." ops: it loads only in a process
that has done `import scann` (this module does), and must be saved with
`SAVE_OPTIONS` (the "Scann" op namespace allowed).

Configuration (`ScannConfig`, resolved for a corpus by `resolve_config`)
follows ScaNN's own rules of thumb (google-research/scann/docs/algorithms.md):

* fewer than 20k points: brute-force scoring (exact up to float round-off);
* fewer than 100k points: asymmetric hashing (AH, 2 dimensions per block),
  then exact re-scoring ("reorder") of the best candidates;
* more: a k-means tree with `num_leaves ~ sqrt(N)` partitions of which
  `num_leaves / 10` are searched per query, AH scoring inside them, then
  exact re-scoring of the best `40 k` candidates.

Every field can be set explicitly to override the choice. `update_state`
brings a serialised index up to date with a grown corpus without training:
changed rows are re-encoded and new rows appended (ScaNN's mutation API), so
row i stays item i; a refresh uses it while the rows upserted since the last
training stay within `MAX_UPDATED_SHARE` of the corpus. Scores are inner
products (`distance_measure="dot_product"`, larger is better; the cosine for
L2-normalised embeddings).

The rules of thumb for the query-time knobs (partitions searched, candidates
re-scored) often search more than a corpus needs. `tune_search` measures
them on held-out queries against exact results and picks the fastest point
that reaches `ScannConfig.target_recall` (the export does this by default);
explicit `num_leaves_to_search` / `reorder_num_neighbors` are kept as given.

Contract of `search(state, queries [B, d], k)`: float32 scores `[B, k]` sorted
in descending order and int32 row indices `[B, k]` of the corpus.
`recall_at_k` compares approximate and exact result lists.

Threads: ScaNN's TF op parallelises a batch over its own pool of
`cores - 1` threads in chunks of `ceil(B / (cores - 1))` queries, so on two
cores a batch is one chunk and runs on one thread; the TF op has no setting
for its query threads. `search(..., shards=S)` can split a batch into S
independent searches, but on two cores that was slower than one search
(bench: 4.5k vs 5.3k queries/s at batch 100 on 1M points), so the default is
`SEARCH_SHARDS = 1`. The pybind searcher of `load_searcher` takes a thread
count (`pinsage_tf.retrieval_pybind` serves with it).
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import time
from typing import Any

from absl import logging
import numpy as np
import tensorflow as tf
import scann  # noqa: F401  (registers ScaNN's TF ops)
from scann.scann_ops.py import scann_ops
from scann.scann_ops.py import scann_ops_pybind

ALGORITHMS = ("auto", "brute_force", "ah", "tree_ah")
# ScaNN's rules of thumb: brute force below 20k points, AH (no tree) below 100k.
BRUTE_FORCE_MAX_ITEMS = 20_000
AH_MAX_ITEMS = 100_000
# SavedModels holding a ScaNN searcher must allow the custom op namespace.
SAVE_OPTIONS = tf.saved_model.SaveOptions(namespace_whitelist=["Scann"])
# Concurrent ScaNN searches a batch is split into (see the module docstring).
SEARCH_SHARDS = 1
# Partitions searched that `tune_search` tries, as fractions of num_leaves
# (capped at 4x the automatic choice), and candidates re-scored, as
# multiples of k.
TUNING_LEAF_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.4)
TUNING_REORDER_MULTIPLES = (2, 5, 10, 20, 40, 80)
# `search_cost` of a re-scored candidate in AH-scored points (1M x 64, AH with
# 2 dimensions per block, one thread: ~1.7 ns per scored point, ~180 ns per
# re-scored candidate).
REORDER_COST = 100
# `update_state` re-encodes rows with the previous codebooks while the rows
# upserted since the last training stay within this share of the corpus;
# beyond it an update costs about a training (all rows upserted: 0.95 s vs
# 0.6-1.6 s for a build on Gowalla's 41k x 65) and the codebooks were trained
# on mostly other vectors.
MAX_UPDATED_SHARE = 0.5
_UPSERT_BATCH = 256
# What `scann_ops_pybind` serialises next to its files.
_ASSETS_FILE = "scann_assets.pbtxt"
# The tensors of `scann_ops.ScannState`, in its order, by their serialised file names.
_STATE_TENSORS = (("scann_config", tf.string), ("serialized_partitioner", tf.string),
                  ("datapoint_to_token", tf.int32), ("ah_codebook", tf.string),
                  ("hashed_dataset", tf.uint8), ("int8_dataset", tf.int8),
                  ("int8_multipliers", tf.float32), ("dp_norms", tf.float32),
                  ("dataset", tf.float32))


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
    target_recall: recall@k on held-out queries that `tune_search` tunes
      the None query-time knobs (`num_leaves_to_search`,
      `reorder_num_neighbors`) to; None keeps the rules of thumb.
    tuning_queries: held-out queries `tune_search` measures on.
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
  target_recall: float | None = 0.99
  tuning_queries: int = 1000

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
    if self.target_recall is not None and not 0 < self.target_recall <= 1:
      raise ValueError(f"ScannConfig.target_recall must lie in (0, 1] or be None (no tuning), "
                       f"got {self.target_recall!r}.")
    if not isinstance(self.tuning_queries, int) or self.tuning_queries < 1:
      raise ValueError(f"ScannConfig.tuning_queries must be a positive int, got "
                       f"{self.tuning_queries!r}.")
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


def build_state(vectors: np.ndarray, config: ScannConfig, k: int,
                artifacts_dir: str | os.PathLike | None = None) -> scann_ops.ScannState:
  """Trains a ScaNN searcher on `vectors` and returns its saveable state.

  The searcher is trained once with `scann_ops_pybind`, serialised to
  `artifacts_dir` (ScaNN's own format: `scann_assets.pbtxt`, `.pb` and `.npy`
  files) and the TF state is read back from those files, so the TF ops and a
  pybind searcher loaded by `load_searcher(artifacts_dir)` are one index and
  return the same neighbors.

  Args:
    vectors: float32 `[N, d]` corpus (row i = item i).
    config: a config resolved by `resolve_config` (algorithm not "auto").
    k: default neighbors per query (searches may ask for another k).
    artifacts_dir: an empty or missing directory that keeps the serialised
      searcher; None = a temporary one, deleted once the state is read.

  Returns:
    The searcher's `ScannState` (a `tf.Module` of variables); attach it to the
    module being saved and query it with `search`.
  """
  if config.algorithm == "auto":
    raise ValueError("resolve the ScannConfig with resolve_config(...) before building.")
  vectors = np.ascontiguousarray(vectors, dtype=np.float32)
  if vectors.ndim != 2 or vectors.shape[0] < 1:
    raise ValueError(f"vectors must be a non-empty [N, d] array, got {vectors.shape}.")
  builder = scann_ops_pybind.builder(vectors, k, "dot_product")
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
  searcher = builder.build()
  if artifacts_dir is not None:
    artifacts_dir = os.fspath(artifacts_dir)
    os.makedirs(artifacts_dir, exist_ok=True)
    if os.listdir(artifacts_dir):
      raise ValueError(f"artifacts_dir {artifacts_dir} is not empty.")
    searcher.serialize(artifacts_dir, relative_path=True)
    return state_from_artifacts(artifacts_dir)
  with tempfile.TemporaryDirectory(prefix="scann-") as tmp:
    searcher.serialize(tmp, relative_path=True)
    return state_from_artifacts(tmp)


def update_state(previous_dir: str | os.PathLike, vectors: np.ndarray,
                 artifacts_dir: str | os.PathLike, *, upserted_before: int = 0,
                 max_changed_share: float = MAX_UPDATED_SHARE
                 ) -> tuple[scann_ops.ScannState, dict[str, Any]] | None:
  """The index of `previous_dir` with the rows of `vectors` that differ upserted; no training.

  A corpus that grew by appended rows and changed in a few others keeps the
  previous index's partitions and codebooks: changed rows are re-encoded in
  place, new rows appended in order (ScaNN's mutation API), so row i of the
  index stays item i. The recall of such an index is what the export measures.

  Args:
    previous_dir: a directory `build_state` (or this function) serialised to,
      over the first rows of `vectors`.
    vectors: float32 `[N, d]` the new corpus; its first rows are the
      previous corpus, changed or not.
    artifacts_dir: an empty or missing directory the updated index is
      serialised to.
    upserted_before: rows upserted into the previous index since it was
      trained (its codebooks drift away from the corpus with every update).
    max_changed_share: the caller should train anew (None is returned) when
      `upserted_before` plus the changed and new rows exceed this share of
      the previous rows.

  Returns:
    (the updated `ScannState`, {"previous_rows", "changed_rows", "new_rows",
    "upserted_since_training"}), or None when the index cannot be updated:
    the previous corpus is not stored with it (no `dataset.npy`), it is not a
    prefix of `vectors`' shape, or too many rows changed since training.
  """
  previous_dir, artifacts_dir = os.fspath(previous_dir), os.fspath(artifacts_dir)
  _check_artifacts(previous_dir)
  stored = os.path.join(previous_dir, "dataset.npy")
  vectors = np.ascontiguousarray(vectors, dtype=np.float32)
  if not os.path.isfile(stored):
    return None
  previous = np.load(stored, allow_pickle=False)
  old = previous.shape[0]
  if previous.ndim != 2 or previous.shape[1] != vectors.shape[1] or old > vectors.shape[0]:
    return None
  changed = np.flatnonzero(np.any(previous != vectors[:old], axis=1))
  upserted = int(upserted_before) + int(changed.size) + int(vectors.shape[0] - old)
  if upserted > max_changed_share * old:
    return None
  searcher = load_searcher(previous_dir)
  if changed.size:
    searcher.searcher.upsert(changed.tolist(), vectors[changed], _UPSERT_BATCH)
  if vectors.shape[0] > old:
    rows = searcher.searcher.upsert([None] * (vectors.shape[0] - old), vectors[old:],
                                    _UPSERT_BATCH)
    if list(rows) != list(range(old, vectors.shape[0])):
      raise RuntimeError(f"ScaNN appended the new rows at {list(rows)[:5]}..., not at "
                         f"{old}..{vectors.shape[0] - 1}.")
  os.makedirs(artifacts_dir, exist_ok=True)
  if os.listdir(artifacts_dir):
    raise ValueError(f"artifacts_dir {artifacts_dir} is not empty.")
  searcher.searcher.serialize(artifacts_dir, True)
  return state_from_artifacts(artifacts_dir), {
      "previous_rows": int(old), "changed_rows": int(changed.size),
      "new_rows": int(vectors.shape[0] - old), "upserted_since_training": upserted}


def state_from_artifacts(artifacts_dir: str | os.PathLike) -> scann_ops.ScannState:
  """The TF `ScannState` of a searcher serialised by `scann_ops_pybind` (see `build_state`).

  Raises:
    ValueError: `artifacts_dir` holds no `scann_assets.pbtxt` / `scann_config.pb`.
  """
  artifacts_dir = os.fspath(artifacts_dir)
  _check_artifacts(artifacts_dir)
  tensors = []
  for name, dtype in _STATE_TENSORS:
    npy = os.path.join(artifacts_dir, name + ".npy")
    pb = os.path.join(artifacts_dir, name + ".pb")
    if os.path.exists(npy):
      tensors.append(tf.constant(np.load(npy, allow_pickle=False), dtype))
    elif os.path.exists(pb):
      with open(pb, "rb") as f:
        tensors.append(tf.constant([f.read()], tf.string))
    else:  # a part the algorithm does not use: ScaNN's ops take an empty scalar
      tensors.append(tf.zeros([], dtype))
  state = scann_ops.ScannState(tensors)
  # ScannState's variables are saved with the shapes of this index; declared
  # without a shape, a saved graph can load the state of a grown index
  # (`pinsage_tf.export.reuse`).
  for (name, _), tensor in zip(_STATE_TENSORS, tensors):
    setattr(state, name, tf.Variable(tensor, trainable=False, shape=tf.TensorShape(None)))
  return state


def load_searcher(artifacts_dir: str | os.PathLike, num_threads: int = 1) -> Any:
  """A `scann_ops_pybind` searcher of a serialised index, searching on `num_threads` threads.

  Unlike `scann_ops_pybind.load_searcher` it never reads a pickled docid file
  (the index rows are the item rows).

  Args:
    artifacts_dir: a directory `build_state` serialised to.
    num_threads: threads of `search_batched_parallel`.

  Returns:
    A `scann_ops_pybind.ScannSearcher` (row indices, no docids).
  """
  artifacts_dir = os.fspath(artifacts_dir)
  _check_artifacts(artifacts_dir)
  if num_threads < 1:
    raise ValueError(f"num_threads must be >= 1, got {num_threads}.")
  with open(os.path.join(artifacts_dir, _ASSETS_FILE), encoding="utf-8") as f:
    assets = f.read()
  searcher = scann_ops_pybind.ScannSearcher(
      scann_ops_pybind.scann_pybind.ScannNumpy(artifacts_dir, assets))
  searcher.set_num_threads(num_threads)
  return searcher


def _check_artifacts(artifacts_dir: str) -> None:
  for name in (_ASSETS_FILE, "scann_config.pb"):
    if not os.path.isfile(os.path.join(artifacts_dir, name)):
      raise ValueError(f"{artifacts_dir} is not a serialised ScaNN searcher: {name} is "
                       "missing (build it with scann_index.build_state(..., artifacts_dir=...)).")


def search(state: scann_ops.ScannState, queries: tf.Tensor, k: int | tf.Tensor, *,
           pre_reorder: int | tf.Tensor | None = None, leaves: int | None = None,
           shards: int = SEARCH_SHARDS) -> tuple[tf.Tensor, tf.Tensor]:
  """Top-k inner-product search of `queries` float32 `[B, d]` in the index.

  Usable eagerly or inside a `tf.function` (the searcher resource is created
  from `state` by the function's first run and then reused).

  Args:
    state: a `build_state` result.
    queries: float32 `[B, d]`.
    k: results per query (int, or an int32 scalar tensor).
    pre_reorder: candidates re-scored exactly (reordering indices); None =
      the index's `reorder_num_neighbors`. A reordering index returns at most
      this many results.
    leaves: partitions searched (tree_ah); None = the index's
      `num_leaves_to_search`.
    shards: the batch is split into this many searches run concurrently.

  Returns:
    (scores float32 `[B, k]` descending, indices int32 `[B, k]`); a query
    the index answers with fewer than k results gets -inf / -1 after them.
  """
  if shards < 1:
    raise ValueError(f"shards must be >= 1, got {shards}.")
  searcher = scann_ops.searcher_from_module(state)
  width = k if isinstance(k, int) else None
  size = (tf.shape(queries)[0] + shards - 1) // shards
  parts = []
  for shard in range(shards):
    # An empty part (a batch smaller than `shards`) is answered with [0, 0],
    # which the padding makes [0, k]; no control flow in the graph.
    result = searcher.search_batched_parallel(queries[shard * size:(shard + 1) * size],
                                              final_num_neighbors=k,
                                              pre_reorder_num_neighbors=pre_reorder,
                                              leaves_to_search=leaves)
    distances, indices = _mark_missing(result.distances, result.indices)
    # Equal widths for the concatenation (the custom op has no shape function).
    pad = [[0, 0], [0, k - tf.shape(indices)[1]]]
    parts.append((tf.pad(distances, pad, constant_values=-np.inf),
                  tf.pad(indices, pad, constant_values=-1)))
  scores = tf.concat([p[0] for p in parts], axis=0) if shards > 1 else parts[0][0]
  index = tf.concat([p[1] for p in parts], axis=0) if shards > 1 else parts[0][1]
  return tf.ensure_shape(scores, [None, width]), tf.ensure_shape(index, [None, width])


def _mark_missing(distances: tf.Tensor, indices: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """-inf / -1 where ScaNN padded a short answer (it pads with index 0, score NaN)."""
  missing = tf.math.is_nan(distances)
  return (tf.where(missing, tf.constant(-np.inf, distances.dtype), distances),
          tf.where(missing, tf.constant(-1, indices.dtype), indices))


@dataclasses.dataclass(frozen=True)
class SearchPoint:
  """One setting of the query-time knobs, measured on the tuning queries.

  Attributes:
    leaves_to_search: partitions searched (None: not a tree).
    reorder_num_neighbors: candidates re-scored (None: no reordering).
    recall: recall@k against the exact results.
    cost: `search_cost` of the setting (what the tuning minimises).
    queries_per_second: batched search on one thread, best of the timed
      passes (None: not timed; comparable between points of one run).
    short_queries: tuning queries answered with fewer than k results (the
      searched leaves held fewer candidates); such a point is never chosen
      when one without short answers reaches the target, since a served
      list would end in empty ids.
  """

  leaves_to_search: int | None
  reorder_num_neighbors: int | None
  recall: float
  cost: float
  queries_per_second: float | None = None
  short_queries: int = 0

  def to_json(self) -> dict[str, Any]:
    qps = self.queries_per_second
    return {"leaves_to_search": self.leaves_to_search,
            "reorder_num_neighbors": self.reorder_num_neighbors,
            "recall": round(self.recall, 4), "cost": round(self.cost, 1),
            "queries_per_second": None if qps is None else round(qps, 1),
            "short_queries": self.short_queries}


@dataclasses.dataclass(frozen=True)
class Tuning:
  """What `tune_search` chose and measured.

  Attributes:
    config: the input config with the chosen knobs filled in.
    target_recall: the recall asked for.
    queries: tuning queries measured on.
    chosen: the point `config` holds (timed).
    automatic: the rules-of-thumb point (`resolve_config`), timed alike.
    target_met: whether `chosen` reaches the target (if not, it is the
      highest-recall point tried).
    points: every point whose recall was measured, in the order tried.
  """

  config: ScannConfig
  target_recall: float
  queries: int
  chosen: SearchPoint
  automatic: SearchPoint
  target_met: bool
  points: tuple[SearchPoint, ...]

  def to_json(self) -> dict[str, Any]:
    return {"target_recall": self.target_recall, "queries": self.queries,
            "target_met": self.target_met, "chosen": self.chosen.to_json(),
            "automatic": self.automatic.to_json(),
            "speedup_over_automatic": (
                round(self.chosen.queries_per_second / self.automatic.queries_per_second, 2)
                if self.chosen.queries_per_second and self.automatic.queries_per_second
                else None),
            "points": [p.to_json() for p in self.points]}


def search_cost(config: ScannConfig, num_items: int, leaves: int | None,
                reorder: int | None) -> float:
  """Work of one query in AH-scored points: points in the searched leaves + re-scoring.

  A re-scored candidate counts `REORDER_COST` points (an exact inner product
  on a cache-missing row vs a table lookup per block).
  """
  scanned = float(num_items)
  if config.algorithm == "tree_ah" and leaves is not None:
    scanned = num_items * min(leaves, config.num_leaves) / config.num_leaves
  return scanned + REORDER_COST * (reorder or 0)


def tune_search(state: scann_ops.ScannState, config: ScannConfig, requested: ScannConfig,
                queries: np.ndarray, exact: np.ndarray, k: int,
                exclude: np.ndarray | None = None, batch_size: int = 100,
                timing_passes: int = 3) -> Tuning:
  """Picks the cheapest query-time knobs whose recall@k reaches the target.

  The knobs `requested` leaves None (`num_leaves_to_search` for tree_ah,
  `reorder_num_neighbors` for ah / tree_ah) are tried on a grid
  (`TUNING_LEAF_FRACTIONS` of num_leaves and the cap, 4x the automatic value;
  `TUNING_REORDER_MULTIPLES` of the searched count, plus the automatic
  values): for each leaves value, ascending, the smallest reorder reaching
  `requested.target_recall` with every query answered by k results; the
  point of least `search_cost` wins (a deterministic choice on a shared
  machine; the chosen and the automatic points are then timed for the
  report). Explicit knobs are kept as given. Warns when no point reaches the
  target and then keeps the highest-recall one (fewest short answers first).

  Args:
    state: the index, built with `config`.
    config: `resolve_config(N, k, requested)` (the automatic point).
    requested: the user's config; its `target_recall` must not be None.
    queries: float32 `[Q, d]` held-out queries (not the queries a quality
      check will measure).
    exact: int `[Q, k]` their exact top-k rows (excluded rows left out).
    k: results compared per query.
    exclude: optional int `[Q]`, a row each query must not return (e.g.
      the query item itself); k + 1 results are searched and it is dropped.
    batch_size: queries per search call.
    timing_passes: timed passes of the chosen and automatic points (best kept).

  Returns:
    A `Tuning`; `Tuning.config` is `config` with the chosen knobs.
  """
  target = requested.target_recall
  if target is None:
    raise ValueError("requested.target_recall is None: nothing to tune.")
  if config.algorithm in ("brute_force", "auto"):
    raise ValueError(f"tune_search needs a resolved ah / tree_ah config, got "
                     f"{config.algorithm!r} (brute force is exact).")
  queries = np.ascontiguousarray(queries, np.float32)
  exact = np.asarray(exact)
  if queries.ndim != 2 or exact.shape != (queries.shape[0], k) or queries.shape[0] < 1:
    raise ValueError(f"need queries [Q, d] and exact [Q, {k}] with Q >= 1, got {queries.shape} "
                     f"and {exact.shape}.")
  num_items = int(tf.shape(state.hashed_dataset)[0])  # ah / tree_ah: one code row per item
  searcher = scann_ops.searcher_from_module(state)
  extra = 0 if exclude is None else 1
  batches = [tf.constant(queries[s:s + batch_size]) for s in range(0, len(queries), batch_size)]

  def run(leaves, reorder):
    found = []
    for batch in batches:
      result = searcher.search_batched(batch, final_num_neighbors=k + extra,
                                       pre_reorder_num_neighbors=reorder, leaves_to_search=leaves)
      index = _mark_missing(result.distances, result.indices)[1].numpy()
      found.append(np.pad(index, ((0, 0), (0, k + extra - index.shape[1])), constant_values=-1))
    return found

  measured: dict[tuple[int | None, int | None], SearchPoint] = {}

  def measure(leaves, reorder) -> SearchPoint:
    if (leaves, reorder) not in measured:
      ids = _drop_rows(np.concatenate(run(leaves, reorder)), exclude, k)
      measured[leaves, reorder] = SearchPoint(
          leaves, reorder, recall_at_k(ids, exact),
          search_cost(config, num_items, leaves, reorder),
          short_queries=int(np.sum(np.any(ids < 0, axis=1))))
    return measured[leaves, reorder]

  def timed(point: SearchPoint) -> SearchPoint:
    seconds = []
    for _ in range(timing_passes):
      start = time.perf_counter()
      run(point.leaves_to_search, point.reorder_num_neighbors)
      seconds.append(time.perf_counter() - start)
    return dataclasses.replace(point, queries_per_second=len(queries) / max(min(seconds), 1e-9))

  if config.algorithm == "tree_ah" and requested.num_leaves_to_search is None:
    cap = min(config.num_leaves, 4 * config.num_leaves_to_search)
    leaves_grid = sorted({min(cap, max(1, round(f * config.num_leaves)))
                          for f in TUNING_LEAF_FRACTIONS} | {config.num_leaves_to_search, cap})
  else:
    leaves_grid = [config.num_leaves_to_search]
  if requested.reorder_num_neighbors is None:
    reorder_grid = sorted({m * (k + extra) for m in TUNING_REORDER_MULTIPLES}
                          | {config.reorder_num_neighbors})
  else:
    reorder_grid = [config.reorder_num_neighbors]

  automatic = measure(config.num_leaves_to_search, config.reorder_num_neighbors)
  best: SearchPoint | None = None
  for leaves in leaves_grid:
    if best is not None and search_cost(config, num_items, leaves, reorder_grid[0]) >= best.cost:
      break  # more leaves cannot be cheaper than the best point found
    for reorder in reorder_grid:  # recall grows with reorder: the first that meets
      point = measure(leaves, reorder)
      if point.recall >= target and not point.short_queries:
        if best is None or point.cost < best.cost:
          best = point
        break
  points = tuple(measured.values())
  target_met = best is not None
  if best is None:
    best = max(points, key=lambda p: (-p.short_queries, p.recall, -p.cost))
    logging.warning(
        "ScaNN tuning: no setting tried reaches recall@%d %.4f on %d held-out queries (best "
        "%.4f with leaves_to_search=%s, reorder_num_neighbors=%s); using it. Lower "
        "target_recall, or build a finer index (more num_leaves, smaller dimensions_per_block).",
        k, target, len(queries), best.recall, best.leaves_to_search, best.reorder_num_neighbors)
  tuned = dataclasses.replace(config, num_leaves_to_search=best.leaves_to_search,
                              reorder_num_neighbors=best.reorder_num_neighbors)
  return Tuning(config=tuned, target_recall=target, queries=len(queries), chosen=timed(best),
                automatic=timed(automatic), target_met=target_met, points=points)


def _drop_rows(ids: np.ndarray, exclude: np.ndarray | None, k: int) -> np.ndarray:
  """The first k ids of each row that are not `exclude[row]` (-1 padding)."""
  if exclude is None:
    return ids[:, :k]
  out = np.full((ids.shape[0], k), -1, ids.dtype)
  for row, (found, drop) in enumerate(zip(ids, np.asarray(exclude))):
    kept = found[found != drop][:k]
    out[row, :len(kept)] = kept
  return out


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
