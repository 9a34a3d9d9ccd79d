"""Hard negatives: items in a middle window of a query's Personalized PageRank.

PinSage (Ying et al., KDD'18, Sec. 3.3 "Sampling negative items") adds *hard*
negatives per query item q: items that are related to q, but less than its
positives, taken from ranks ~2000-5000 of q's Personalized PageRank (PPR)
ranking over billions of items. This module precomputes, for every query, a
pool of P such candidates; the producer samples from the pool each epoch, and
`num_hard_negatives_for_epoch` gives the paper's curriculum.

PPR. A walk from q moves item -> pivot -> item (`P = D_item^-1 A D_pivot^-1
A^T`, both steps uniform) and stops with probability `alpha` before each step;
the PPR score of item i is the probability that the walk stops at i,
`alpha * sum_t (1 - alpha)^t e_q P^t`. The scores of a block of B queries are
computed exactly (not sampled) by power iteration of
`R <- alpha E + (1 - alpha) R P` from `R = alpha E`, with the two sparse
products of P applied as `tf.raw_ops.SparseMatrixMatMul` (CSR; ~6x faster than
`tf.sparse.sparse_dense_matmul` on Gowalla, see bench/bench_neighborhoods.py).
After `num_iterations` iterations the missing probability mass is
`(1 - alpha) ** (num_iterations + 1)` per query; items not reachable within
that many item steps score 0.

Ranking and window. Candidates of q are all items except q and q's train-pair
positives (pairs in either direction: a pair says the two items are related).
They are ranked by PPR score, descending, ties by lower item index; ranks are
0-based. The pool is drawn uniformly without replacement from ranks
`[start, end)`. When q reaches only R < end candidates (score > 0), the window
keeps its relative position and becomes `[floor(start * R / end), R)`: the
lower part of what is reachable, never unrelated zero-score items. A query
with no reachable candidate (e.g. an isolated item) gets an empty pool
(count 0); the producer then uses its random negatives only.

Default window. The paper's absolute ranks (top 0.0001% of billions) do not
transfer to catalogues of 10^4-10^5 items, so the window scales with N:
`start = max(10, ceil(0.02 N))`, `end = max(start + 10, ceil(0.10 N))`, i.e.
ranks 820..4099 for Gowalla's 40,981 items. Measured on Gowalla's training
graph: a random item's 1-step reach (items sharing a pivot with it) has median
718 (1.75% of N; quartiles 395 / 1240), so the window starts just past the
typical set of directly co-occurring items -- where positives come from --
and holds mostly 2-step items: related, but less than positives.

Default alpha = 0.5, the restart probability of the importance-neighborhood
walks, so "related" means the same thing for neighbors and hard negatives.
Measured on 64 random Gowalla queries: with alpha 0.5 the windows overlap the
global degree-ranked window 25% (0.15: 39%), i.e. they are more specific to
the query, and 10 iterations reproduce 99.9% of the converged window (alpha
0.15 needs ~30 iterations for 99.7%).

Sampling the pool uses a counter-based hash of (seed, query, item) as the
random key, so the pool does not depend on the block size or evaluation order.

Estimators. `estimator="exact"` is the power iteration above: O(edges) per
query, so O(queries x edges) for the table -- quadratic in the graph.
`estimator="walks"` estimates the same truncated PPR from `num_walks` random
walks with restart per query (visit counts, as Pixie does for PinSage): each
walk starts at q, stops with probability `alpha` before each item -> pivot ->
item step and takes at most `num_iterations` steps; every item it reaches
after a step counts one visit. The expected visit count of item i is
`num_walks / alpha` times the score of the exact path (the same truncated
sum), so the two rankings agree up to sampling noise, at a cost of about
`num_walks (1 - alpha) / alpha` steps per query, independent of the graph
size. Candidates are the visited items (minus q and its positives), so the
reachable count R of the window rule is the number of distinct visited
candidates: a query whose walks visit fewer than `end` candidates takes the
lower `1 - start / end` of its visited candidates by count, never an item no
walk reached. Visit counts tie often (many items are visited once), so ties
are broken by a second hash of (seed, query, item), not by index (which would
favour low ids). The walks draw their steps from a counter-based hash of
(seed, query, walk, step), so the table does not depend on the block size.
`estimator="auto"` (the default) picks exact up to `auto_exact_max_items`
items and walks above; `resolve(num_items)` makes the choice explicit, and
the stored table records the resolved config.

Storage: `<graph_dir>/hard_negatives/<config.key()>/`, a derived table
(`pinsage_tf.derived_tables`: atomic, checksummed, tied to the graph
fingerprint); the query set is stored with the pools.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
from typing import Any, Callable, Sequence

from absl import logging
import numpy as np
import tensorflow as tf

from pinsage_tf import derived_tables
from pinsage_tf import graph as graph_lib

ALGORITHM_VERSION = 1
KIND = "hard_negatives"
_PPM = 1_000_000

ESTIMATORS = ("auto", "exact", "walks")

ProgressFn = Callable[[int, int], None]


def _ceil_fraction(fraction: float, n: int) -> int:
  # Integer arithmetic on parts per million: 0.1 * 30 in floats is 3.0000000000000004.
  return -(-round(fraction * _PPM) * n // _PPM)


@dataclasses.dataclass(frozen=True)
class HardNegativeConfig:
  """Parameters of the hard-negative pools (see the module docstring).

  Attributes:
    window_start, window_end: explicit rank window `[start, end)`; None uses
      the fractions below (both None or both set).
    window_start_fraction, window_end_fraction: the default window as
      fractions of the number of items N.
    alpha: PPR restart probability per item -> pivot -> item step.
    num_iterations: power iterations.
    pool_size: P, candidates stored per query.
    seed: seed of the pool sampling (and of the walks).
    estimator: "exact" (power iteration), "walks" (random walks with
      restart) or "auto" (exact up to `auto_exact_max_items` items).
    num_walks: walks per query of the walk estimator.
    auto_exact_max_items: the largest graph "auto" computes exactly.
  """

  window_start: int | None = None
  window_end: int | None = None
  window_start_fraction: float = 0.02
  window_end_fraction: float = 0.10
  alpha: float = 0.5
  num_iterations: int = 10
  pool_size: int = 64
  seed: int = 0
  estimator: str = "auto"
  num_walks: int = 2000
  auto_exact_max_items: int = 50_000

  def __post_init__(self):
    if (self.window_start is None) != (self.window_end is None):
      raise ValueError("HardNegativeConfig: set both window_start and window_end, or neither "
                       "(to use the fractions).")
    if self.window_start is not None and not 0 <= self.window_start < self.window_end:
      raise ValueError(f"HardNegativeConfig: need 0 <= window_start < window_end, got "
                       f"[{self.window_start}, {self.window_end}).")
    if not 0 <= self.window_start_fraction < self.window_end_fraction <= 1:
      raise ValueError("HardNegativeConfig: need 0 <= window_start_fraction < "
                       "window_end_fraction <= 1.")
    if not 0 < self.alpha < 1:
      raise ValueError(f"HardNegativeConfig.alpha must be in (0, 1), got {self.alpha!r}.")
    if self.estimator not in ESTIMATORS:
      raise ValueError(f"HardNegativeConfig.estimator must be one of {ESTIMATORS}, got "
                       f"{self.estimator!r}.")
    for name in ("num_iterations", "pool_size", "num_walks"):
      if getattr(self, name) < 1:
        raise ValueError(f"HardNegativeConfig.{name} must be >= 1, got {getattr(self, name)!r}.")
    if self.seed < 0:
      raise ValueError(f"HardNegativeConfig.seed must be >= 0, got {self.seed!r}.")

  def window(self, num_items: int) -> tuple[int, int]:
    """The rank window `(start, end)` for a graph of `num_items` items."""
    if self.window_start is not None:
      return int(self.window_start), int(self.window_end)
    start = max(10, _ceil_fraction(self.window_start_fraction, num_items))
    end = max(start + 10, _ceil_fraction(self.window_end_fraction, num_items))
    return start, end

  def resolve(self, num_items: int) -> "HardNegativeConfig":
    """This config with "auto" replaced by the estimator used for `num_items` items."""
    if self.estimator != "auto":
      return self
    exact = num_items <= self.auto_exact_max_items
    return dataclasses.replace(self, estimator="exact" if exact else "walks")

  def key(self) -> str:
    """A short, stable, file-name-safe id of the parameters (for storage).

    Only a resolved config has a key (`resolve`): "auto" names no table.
    """
    if self.estimator == "auto":
      raise ValueError("HardNegativeConfig.key(): resolve(num_items) the 'auto' estimator first.")
    if self.window_start is not None:
      window = f"{self.window_start}-{self.window_end}"
    else:
      window = f"f{self.window_start_fraction!r}-{self.window_end_fraction!r}"
    return (f"v{ALGORITHM_VERSION}-win{window}-a{float(self.alpha)!r}-it{self.num_iterations}"
            f"-P{self.pool_size}-s{self.seed}"
            + (f"-walks{self.num_walks}" if self.estimator == "walks" else ""))

  def to_json(self) -> dict[str, Any]:
    def plain(v):
      if v is None or isinstance(v, str):
        return v
      return float(v) if isinstance(v, float) else int(v)
    return {k: plain(v) for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass(frozen=True)
class HardNegatives:
  """Hard-negative pools of the query items of a graph.

  Attributes:
    pool: int32 `[N, P]` candidates of each query in random order, -1 on
      padding; rows of non-queries are all -1.
    counts: int32 `[N]` valid candidates per row (<= P).
    queries: int32 `[Q]` sorted query items the pools were computed for.
    config: the `HardNegativeConfig` that produced them.
  """

  pool: np.ndarray
  counts: np.ndarray
  queries: np.ndarray
  config: HardNegativeConfig

  def validate(self, num_items: int) -> None:
    p = self.config.pool_size
    if self.pool.shape != (num_items, p) or self.counts.shape != (num_items,):
      raise derived_tables.DerivedTableError(
          f"pool must be [{num_items}, {p}] and counts [{num_items}], got {self.pool.shape} "
          f"and {self.counts.shape}.")
    if {self.pool.dtype, self.counts.dtype, self.queries.dtype} != {np.dtype(np.int32)}:
      raise derived_tables.DerivedTableError("pool, counts and queries must be int32.")
    valid = np.arange(p)[None, :] < np.asarray(self.counts)[:, None]
    if np.any((np.asarray(self.pool) >= 0) != valid) or np.any(self.pool >= num_items):
      raise derived_tables.DerivedTableError(
          "pool must hold item ids exactly on the first counts[i] slots.")


def num_hard_negatives_for_epoch(epoch: int, max_hard: int) -> int:
  """Curriculum of the paper: epoch n (1-based) uses n - 1 hard negatives, up to `max_hard`."""
  if epoch < 1:
    raise ValueError(f"epoch is 1-based, got {epoch}.")
  if max_hard < 0:
    raise ValueError(f"max_hard must be >= 0, got {max_hard}.")
  return min(epoch - 1, max_hard)


def _mix64(x: np.ndarray) -> np.ndarray:
  """splitmix64 finaliser: a bijective, well-mixing hash of uint64."""
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def _random_keys(seed: int, queries: np.ndarray, items: np.ndarray) -> np.ndarray:
  """uint64 `[B, K]` pseudo-random keys of (seed, query [B], item [B, K])."""
  golden = np.uint64(0x9E3779B97F4A7C15)
  with np.errstate(over="ignore"):
    base = _mix64(np.uint64(seed) * golden + np.uint64(1))
    per_query = _mix64(base ^ (queries.astype(np.uint64) * golden))
    return _mix64(per_query[:, None] ^ (items.astype(np.uint64) + golden))


def train_positives(graph: graph_lib.Graph) -> graph_lib.CSR:
  """CSR `[N]` of the items paired with each item by a train pair (both directions)."""
  query, positive = graph.pairs.of(graph_lib.Split.TRAIN)
  rows = np.concatenate([query, positive]).astype(np.int64)
  cols = np.concatenate([positive, query]).astype(np.int64)
  return graph_lib.CSR.from_pairs(rows, cols, graph.num_items)


def _csr_operands(indptr: np.ndarray, indices: np.ndarray, values: np.ndarray,
                  shape: tuple[int, int]) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Row-major COO (indices, values, dense_shape) of a CSR, for a TF CSR matrix."""
  rows = np.repeat(np.arange(shape[0], dtype=np.int64), np.diff(indptr))
  coo = np.stack([rows, np.asarray(indices, dtype=np.int64)], axis=1)
  return (tf.constant(coo, tf.int64), tf.constant(values, tf.float32),
          tf.constant(shape, tf.int64))


class _PprRanker:
  """Top-`k` PPR candidates of query blocks, as one traced TF function."""

  def __init__(self, graph: graph_lib.Graph, alpha: float, num_iterations: int, k: int):
    item_deg = graph.item_degrees().astype(np.float64)
    pivot_deg = graph.pivot_degrees().astype(np.float64)
    n, m = graph.num_items, graph.num_pivots
    p2i, i2p = graph.pivot_to_item, graph.item_to_pivot
    # [M, N]: item -> pivot step (1 / item degree); [N, M]: pivot -> item step.
    to_pivot = _csr_operands(p2i.indptr, p2i.indices, 1.0 / item_deg[p2i.indices], (m, n))
    to_item = _csr_operands(i2p.indptr, i2p.indices, 1.0 / pivot_deg[i2p.indices], (n, m))
    alpha = tf.constant(alpha, tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32),
                                  tf.TensorSpec([None, 2], tf.int32)])
    def rank(queries, excluded):
      """queries [B], excluded (row, item) [X, 2] -> top-k (scores, items) [B, k]."""
      # CSR handles are built inside the function so shape inference sees them.
      a_pivot = tf.raw_ops.SparseTensorToCSRSparseMatrix(
          indices=to_pivot[0], values=to_pivot[1], dense_shape=to_pivot[2])
      a_item = tf.raw_ops.SparseTensorToCSRSparseMatrix(
          indices=to_item[0], values=to_item[1], dense_shape=to_item[2])
      restart = alpha * tf.one_hot(queries, n, axis=0, dtype=tf.float32)     # [N, B]
      scores = restart
      for _ in tf.range(num_iterations):
        at_pivots = tf.raw_ops.SparseMatrixMatMul(a=a_pivot, b=scores)       # [M, B]
        scores = restart + (1.0 - alpha) * tf.raw_ops.SparseMatrixMatMul(a=a_item, b=at_pivots)
      scores = tf.transpose(scores)                                          # [B, N]
      scores = tf.tensor_scatter_nd_update(
          scores, excluded, -tf.ones(tf.shape(excluded)[:1], tf.float32))
      return tf.math.top_k(scores, k=k)  # equal scores: lower index first

    self._rank = rank

  def __call__(self, queries: np.ndarray, excluded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values, items = self._rank(tf.constant(queries, tf.int32), tf.constant(excluded, tf.int32))
    return values.numpy(), items.numpy()


def _sample_pools(config: HardNegativeConfig, start: int, end: int, queries: np.ndarray,
                  scores: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Pools `[B, P]` and counts `[B]` from the top-k ranking `[B, k]` of each query."""
  b, k = items.shape
  p = config.pool_size
  reachable = np.count_nonzero(scores > 0, axis=1)              # exact when < k (= end)
  full = reachable >= end
  lo = np.where(full, start, (start * reachable) // end)
  hi = np.where(full, end, reachable)
  rank = np.arange(k)[None, :]
  in_window = (rank >= lo[:, None]) & (rank < hi[:, None])
  keys = np.where(in_window, _random_keys(config.seed, queries, items), np.uint64(2**64 - 1))
  if k > p:
    chosen = np.argpartition(keys, p - 1, axis=1)[:, :p]
  else:
    chosen = np.broadcast_to(np.arange(k), (b, k))
  order = np.argsort(np.take_along_axis(keys, chosen, axis=1), axis=1, kind="stable")
  chosen = np.take_along_axis(chosen, order, axis=1)
  counts = np.minimum(hi - lo, p).astype(np.int32)
  pool = np.full((b, p), -1, dtype=np.int32)
  width = chosen.shape[1]
  taken = np.take_along_axis(items, chosen, axis=1).astype(np.int32)
  pool[:, :width] = np.where(np.arange(width)[None, :] < counts[:, None], taken, -1)
  return pool, counts


def _hash_stream(seed: int, salt: int, queries: np.ndarray) -> np.ndarray:
  """uint64 `[B]` per-query keys of a hash stream (seed, salt), for counter-based draws."""
  golden = np.uint64(0x9E3779B97F4A7C15)
  with np.errstate(over="ignore"):
    base = _mix64(np.uint64(seed) * golden + np.uint64(salt))
    return _mix64(base ^ (queries.astype(np.uint64) * golden))


_WALK_SALT = 3
_TIE_SALT = 5


class _Walker:
  """Visit counts of walks with restart from query blocks (the "walks" estimator)."""

  def __init__(self, graph: graph_lib.Graph, config: HardNegativeConfig):
    i2p, p2i = graph.item_to_pivot, graph.pivot_to_item
    # Read into RAM once (random gathers on a memory map pay page faults); indices keep
    # their stored int32, half the cache footprint of int64.
    self._ip_ptr = np.asarray(i2p.indptr, np.int64)
    self._ip_idx = np.array(i2p.indices)
    self._pi_ptr = np.asarray(p2i.indptr, np.int64)
    self._pi_idx = np.array(p2i.indices)
    self.num_items = graph.num_items
    self._config = config

  def __call__(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Visits of `num_walks` walks from each of `queries [B]`.

    Returns:
      Sorted unique (row, item) visits as `rows [U]` (index into `queries`),
      `items [U]` and `counts [U]` (int64); rows ascend, items ascend per row.
    """
    config, n, w = self._config, self.num_items, self._config.num_walks
    ip_ptr, ip_idx, pi_ptr, pi_idx = self._ip_ptr, self._ip_idx, self._pi_ptr, self._pi_idx
    stop_below = np.uint64(min(int(config.alpha * 2.0**64), 2**64 - 1))
    low32, shift = np.uint64(0xFFFFFFFF), np.uint64(32)
    golden = np.uint64(0x9E3779B97F4A7C15)
    query_keys = _hash_stream(config.seed, _WALK_SALT, queries)
    # One walker per (row, walk); its draws at step t hash (row key, walk, t).
    row = np.repeat(np.arange(queries.size, dtype=np.int64), w)
    walk = np.tile(np.arange(w, dtype=np.uint64), queries.size)
    at = np.repeat(queries.astype(np.int64), w)
    visits = []
    with np.errstate(over="ignore"):
      for t in range(config.num_iterations):
        counter = walk * np.uint64(config.num_iterations) + np.uint64(t)
        h = _mix64(query_keys[row] ^ (counter * golden + golden))
        deg = ip_ptr[at + 1] - ip_ptr[at]
        # Stop with probability alpha before the step (and at items without pivots).
        alive = (_mix64(h ^ golden) >= stop_below) & (deg > 0)
        row, walk, at, h, deg = row[alive], walk[alive], at[alive], h[alive], deg[alive]
        if not row.size:
          break
        # A uniform neighbor by multiply-high of 32 random bits: item -> pivot -> item.
        pick = ((h & low32) * deg.astype(np.uint64)) >> shift
        pivot = ip_idx[ip_ptr[at] + pick.astype(np.int64)]
        pdeg = pi_ptr[pivot + 1] - pi_ptr[pivot]
        pick = ((h >> shift) * pdeg.astype(np.uint64)) >> shift
        at = pi_idx[pi_ptr[pivot] + pick.astype(np.int64)].astype(np.int64)
        visits.append(row * n + at)
    if not visits:
      empty = np.zeros(0, np.int64)
      return empty, empty, empty
    keys, counts = np.unique(np.concatenate(visits), return_counts=True)
    return keys // n, keys % n, counts.astype(np.int64)


def _walk_pools(walker: _Walker, config: HardNegativeConfig, start: int, end: int,
                queries: np.ndarray, excluded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Pools `[B, P]` and counts `[B]` of a query block from walk visit counts.

  `excluded` holds the (row, item) pairs `[X, 2]` that are not candidates.
  """
  rows, items, counts = walker(queries)
  return pools_from_visits(config, start, end, queries, excluded, rows, items, counts,
                           walker.num_items)


def pools_from_visits(config: HardNegativeConfig, start: int, end: int, queries: np.ndarray,
                      excluded: np.ndarray, rows: np.ndarray, items: np.ndarray,
                      counts: np.ndarray, num_items: int) -> tuple[np.ndarray, np.ndarray]:
  """Pools `[B, P]` and counts `[B]` from the walks' visit counts of a query block.

  Args:
    config: a resolved "walks" config.
    start, end: `config.window(num_items)`.
    queries: int `[B]` query items.
    excluded: int `[X, 2]` (row, item) pairs that are not candidates (each
      query itself and its positives).
    rows, items, counts: the distinct visits `[U]`: row into `queries`, the
      visited item, its visit count, in any order (the result does not
      depend on it, so visits may come from a distributed count).
    num_items: N.
  """
  b, p, n = queries.size, config.pool_size, num_items
  keep = ~np.isin(rows * n + items, excluded[:, 0].astype(np.int64) * n + excluded[:, 1])
  rows, items, counts = rows[keep], items[keep], counts[keep]
  # Rank per row: count descending, ties by a hash (not by index).
  tie = _mix64(_hash_stream(config.seed, _TIE_SALT, queries)[rows]
               ^ (items.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)))
  order = np.lexsort((tie, -counts, rows))
  rows, items = rows[order], items[order]
  reachable = np.bincount(rows, minlength=b)
  first = np.cumsum(reachable) - reachable
  rank = np.arange(rows.size) - first[rows]
  full = reachable >= end
  lo = np.where(full, start, (start * reachable) // end)
  hi = np.where(full, end, reachable)
  in_window = (rank >= lo[rows]) & (rank < hi[rows])
  rows, items = rows[in_window], items[in_window]
  # Uniform sample of P per row: the P smallest keys, as in the exact path.
  keys = _random_keys(config.seed, queries[rows], items[:, None])[:, 0] if rows.size else (
      np.zeros(0, np.uint64))
  order = np.lexsort((keys, rows))
  rows, items = rows[order], items[order]
  width = np.bincount(rows, minlength=b)
  slot = np.arange(rows.size) - (np.cumsum(width) - width)[rows]
  taken = slot < p
  pool = np.full((b, p), -1, dtype=np.int32)
  pool[rows[taken], slot[taken]] = items[taken]
  return pool, np.minimum(width, p).astype(np.int32)


def compute_hard_negatives(
    graph: graph_lib.Graph,
    query_items: Sequence[int] | np.ndarray | None = None,
    config: HardNegativeConfig = HardNegativeConfig(),
    *,
    block_size: int = 128,
    num_threads: int | None = None,
    progress: ProgressFn | None = None,
) -> HardNegatives:
  """Computes the hard-negative pool of every query item.

  Args:
    graph: the training graph; its train pairs define the excluded positives.
    query_items: item indices to compute pools for (duplicates ignored);
      None means every query of a train pair.
    config: window, PPR and pool parameters; "auto" is resolved for the graph
      (the returned table carries the resolved config).
    block_size: queries per block; exact: memory ~ `4 N block_size` bytes per
      dense iterate; walks: ~ `40 num_walks block_size` bytes. The result does
      not depend on it.
    num_threads: blocks of the walks estimator computed at once (numpy
      releases the GIL in its inner loops; the exact path's TensorFlow ops
      use every core by themselves); None: `os.cpu_count()`. The result does
      not depend on it.
    progress: optional `progress(queries_done, num_queries)`.

  Returns:
    `HardNegatives` with `pool [N, P]`, `counts [N]`, `queries [Q]`.
  """
  n = graph.num_items
  if query_items is None:
    query_items = graph.pairs.of(graph_lib.Split.TRAIN)[0]
  queries = np.unique(np.asarray(query_items, dtype=np.int64).reshape(-1))
  if queries.size and (queries[0] < 0 or queries[-1] >= n):
    raise ValueError(f"query_items must lie in [0, {n}), got "
                     f"{int(queries[0])}..{int(queries[-1])}.")
  if block_size < 1:
    raise ValueError(f"block_size must be >= 1, got {block_size}.")
  config = config.resolve(n)
  start, end = config.window(n)
  pool = np.full((n, config.pool_size), -1, dtype=np.int32)
  counts = np.zeros(n, dtype=np.int32)
  positives = train_positives(graph)
  walks = config.estimator == "walks"
  if walks:
    walker = _Walker(graph, config)
  else:
    ranker = _PprRanker(graph, config.alpha, config.num_iterations, k=min(end, n))
  if num_threads is None:
    num_threads = os.cpu_count() or 1
  if num_threads < 1:
    raise ValueError(f"num_threads must be >= 1, got {num_threads}.")
  total = int(queries.size)

  def compute_block(lo: int) -> int:
    # Each block owns its rows of `pool` and `counts`, so blocks run in any order.
    block = queries[lo:lo + block_size]
    # Excluded (row, item): the query itself and its positives.
    lengths = positives.indptr[block + 1] - positives.indptr[block]
    rows = np.repeat(np.arange(block.size), lengths)
    starts = np.repeat(positives.indptr[block], lengths)
    offsets = np.arange(rows.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    excluded = np.concatenate([
        np.stack([np.arange(block.size), block], 1),
        np.stack([rows, positives.indices[starts + offsets]], 1)]).astype(np.int32)
    if walks:
      pool[block], counts[block] = _walk_pools(walker, config, start, end, block, excluded)
    else:
      scores, items = ranker(block.astype(np.int32), excluded)
      pool[block], counts[block] = _sample_pools(config, start, end, block, scores, items)
    return min(lo + block_size, total)

  if progress is not None:
    progress(0, total)
  # The exact path's TensorFlow ops already use every core: blocks run one at a time.
  threads = num_threads if walks else 1
  with concurrent.futures.ThreadPoolExecutor(threads) as executor:
    # map() yields in submission order, so progress counts a finished prefix.
    for done in executor.map(compute_block, range(0, total, block_size)):
      if progress is not None:
        progress(done, total)
  return HardNegatives(pool=pool, counts=counts, queries=queries.astype(np.int32), config=config)


def save_hard_negatives(graph_dir: str | os.PathLike, hard_negatives: HardNegatives) -> str:
  """Writes the pools to `<graph_dir>/hard_negatives/<config.key()>/` atomically."""
  num_items = int(graph_lib.read_manifest(graph_dir)["counts"]["items"])
  hard_negatives.validate(num_items)
  config = hard_negatives.config.resolve(num_items)
  return derived_tables.save(
      graph_dir, KIND, config.key(),
      {"pool": hard_negatives.pool, "counts": hard_negatives.counts,
       "queries": hard_negatives.queries},
      config.to_json(),
      extra={"algorithm_version": ALGORITHM_VERSION, "window": list(config.window(num_items))})


def load_hard_negatives(graph_dir: str | os.PathLike,
                        config: HardNegativeConfig = HardNegativeConfig(), *,
                        mmap: bool = True, verify: bool = True) -> HardNegatives:
  """Loads the pools of `config` for the graph in `graph_dir`.

  Raises:
    FileNotFoundError: not computed yet.
    derived_tables.StaleTableError: stored for another graph or config.
    derived_tables.DerivedTableError: corrupt or malformed files (named).
  """
  num_items = int(graph_lib.read_manifest(graph_dir)["counts"]["items"])
  config = config.resolve(num_items)
  arrays, _ = derived_tables.load(graph_dir, KIND, config.key(), config.to_json(),
                                  ("pool", "counts", "queries"), mmap=mmap, verify=verify)
  table = HardNegatives(pool=arrays["pool"], counts=arrays["counts"], queries=arrays["queries"],
                        config=config)
  try:
    table.validate(num_items)
  except derived_tables.DerivedTableError as e:
    raise derived_tables.DerivedTableError(
        f"{derived_tables.directory(graph_dir, KIND, config.key())}: {e}") from e
  return table


def load_or_compute_hard_negatives(
    graph_dir: str | os.PathLike,
    graph: graph_lib.Graph | None = None,
    config: HardNegativeConfig = HardNegativeConfig(),
    *,
    query_items: Sequence[int] | np.ndarray | None = None,
    block_size: int = 128,
    num_threads: int | None = None,
    progress: ProgressFn | None = None,
) -> HardNegatives:
  """Returns the cached pools, computing and saving them when absent or stale.

  Stale means: stored for another graph, or for another query set than
  `query_items` (None: the train-pair queries of the graph).
  """
  if graph is None:
    graph = graph_lib.load_graph(graph_dir)
  if query_items is None:
    query_items = graph.pairs.of(graph_lib.Split.TRAIN)[0]
  wanted = np.unique(np.asarray(query_items, dtype=np.int64).reshape(-1))
  try:
    table = load_hard_negatives(graph_dir, config)
    if np.array_equal(np.asarray(table.queries, dtype=np.int64), wanted):
      return table
    logging.info("Recomputing hard negatives: the stored query set differs.")
  except FileNotFoundError:
    pass
  except derived_tables.StaleTableError as e:
    logging.info("Recomputing hard negatives: %s", e)
  table = compute_hard_negatives(graph, wanted, config, block_size=block_size,
                                 num_threads=num_threads, progress=progress)
  save_hard_negatives(graph_dir, table)
  return load_hard_negatives(graph_dir, config)
