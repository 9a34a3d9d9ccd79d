"""Importance neighborhoods: the top-T items visited by short random walks.

PinSage (Ying et al., KDD'18, Sec. 3.1 "Importance-based neighborhoods")
defines the neighborhood of an item u as the T items with the highest visit
counts of random walks that start at u on the bipartite item/pivot graph, and
uses the L1-normalised visit counts as importance weights in the aggregator.

The walk process (`NeighborhoodConfig` fixes its parameters):

* A walk from start item s makes exactly `max_hops` *traversals*. A traversal
  moves from the current item x to a pivot p drawn uniformly from x's pivots,
  then to an item y drawn uniformly from p's items (y may be x or s again).
* Every traversal ends in one *visit* to y. Visits to s itself are dropped:
  an item is never its own neighbor.
* After a traversal the walk jumps back to s with probability `restart_prob`,
  otherwise it continues from y. (After the last traversal the walk ends.)
* `num_walks` walks start at each item. Writing `P` for the item -> item
  transition matrix `D_item^-1 A D_pivot^-1 A^T` and `e_s` for the indicator
  of s, the expected visit vector of one walk is
  `sum_{t=1..H} y_t` with `y_1 = e_s P`, `y_{t+1} = (r e_s + (1 - r) y_t) P`.
  (`neighborhoods_test.py` checks the sampler against this formula.)

Importance. An item y visited c times from s scores `c / deg(y) ** beta`
(`degree_exponent` beta, default 0: the paper's plain visit counts). Walks
reach hubs (items with many pivots) from almost anywhere, so with beta = 0 a
neighborhood is mostly the same popular items with near-uniform weights;
beta = 0.5 ranks like a cosine of co-occurrence and makes the weights carry
how specific a neighbor is to s (measured in bench/neighborhood_stats.py).

Output contract (`Neighborhoods`): `ids int32 [N, T]` holds the T other
items of each item with the highest importance, highest first, ties broken by
the lower item index, -1 on padding; `weights float32 [N, T]` the importance
scores normalised over the kept slots (each row with a neighbor sums to 1,
padding is 0);
`counts int32 [N]` the number of valid slots. An item with fewer than T
reachable items is padded; an isolated item (no pivots) has count 0 and an
all-padding row.

Pivot neighborhoods (`compute_pivot_neighborhoods`): the same walks started at
a pivot (board, user) instead of an item: the first traversal picks one of
the pivot's items uniformly, restarts return to the pivot. The T_p most
important items are what PinSage's convolution pools to embed the pivot in
the item space (`PinSageModel.pivot_embeddings`). A pivot is given by its
item list, so the same function embeds graph pivots (their rows of
`pivot_to_item`) and pivots that are not in the graph (any item lists, e.g. a
user's training plus validation items, or a request's items): each list
becomes a new pivot that no item links back to, so the walks of one list do
not depend on the other lists or on the stored graph pivots.

Computation is vectorised over all walks of a chunk of `chunk_size` start items
(no per-walk Python loop), and chunks run on a thread pool: the heavy numpy
operations (random number generation, fancy indexing, sorting) release the
GIL. The randomness of chunk c comes from `np.random.default_rng([seed, 0, c])`
(`[seed, 1, c]` for new items, `[seed, 2, c]` for pivots), so the table is
identical for any number of threads.

Storage: `save_neighborhoods` / `load_neighborhoods` keep a table next to its
graph as a derived table (`pinsage_tf.derived_tables`) of kind
"neighborhoods", or "pivot_neighborhoods" for the graph's pivots, keyed by
`NeighborhoodConfig.key()`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
from typing import Any, Callable, Sequence

from absl import logging
import numpy as np

from pinsage_tf import derived_tables
from pinsage_tf import graph as graph_lib

# Bumped when the walk or counting algorithm changes its output for a config,
# so old cached tables are not reused.
ALGORITHM_VERSION = 1
KIND = "neighborhoods"
PIVOT_KIND = "pivot_neighborhoods"
# Composite sort keys (seed row, count, item) must stay below this to fit int64.
_COMPOSITE_KEY_LIMIT = 2**62

ProgressFn = Callable[[int, int], None]


@dataclasses.dataclass(frozen=True)
class NeighborhoodConfig:
  """Parameters of the importance-neighborhood walks (see the module docstring).

  Attributes:
    num_neighbors: T, neighbors kept per item.
    num_walks: walks started at each item.
    max_hops: item -> pivot -> item traversals per walk (= visits per walk).
    restart_prob: probability of jumping back to the start item after each
      traversal, in [0, 1].
    seed: seed of the walks.
    degree_exponent: beta >= 0 of the importance `visits / degree ** beta`
      (0 = the paper's visit counts; see the module docstring).
    chunk_size: start items sampled together. It defines the random streams
      (chunk c draws from `default_rng([seed, 0, c])`), so it is part of the
      config and of `key()`; it also bounds memory
      (`chunk_size * num_walks * max_hops` int64 visits).
  """

  num_neighbors: int = 10
  num_walks: int = 100
  max_hops: int = 3
  restart_prob: float = 0.5
  seed: int = 0
  chunk_size: int = 1024
  degree_exponent: float = 0.0

  def __post_init__(self):
    for name in ("num_neighbors", "num_walks", "max_hops", "chunk_size"):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"NeighborhoodConfig.{name} must be a positive int, got {value!r}.")
    if not 0.0 <= float(self.restart_prob) <= 1.0:
      raise ValueError(
          f"NeighborhoodConfig.restart_prob must be in [0, 1], got {self.restart_prob!r}.")
    if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
      raise ValueError(f"NeighborhoodConfig.seed must be a non-negative int, got {self.seed!r}.")
    if not 0.0 <= float(self.degree_exponent) <= 4.0:
      raise ValueError("NeighborhoodConfig.degree_exponent must lie in [0, 4], got "
                       f"{self.degree_exponent!r}.")

  def key(self) -> str:
    """A short, stable, file-name-safe id of every parameter that shapes the table.

    E.g. `v1-T10-w100-h3-r0.5-s0-c1024` (a non-zero degree exponent adds
    `-b0.5`). `repr` of the float round-trips, so two different restart
    probabilities never share a key.
    """
    key = (f"v{ALGORITHM_VERSION}-T{self.num_neighbors}-w{self.num_walks}-h{self.max_hops}"
           f"-r{float(self.restart_prob)!r}-s{self.seed}-c{self.chunk_size}")
    if float(self.degree_exponent):
      key += f"-b{float(self.degree_exponent)!r}"
    return key

  def to_json(self) -> dict[str, Any]:
    return {"num_neighbors": int(self.num_neighbors), "num_walks": int(self.num_walks),
            "max_hops": int(self.max_hops), "restart_prob": float(self.restart_prob),
            "seed": int(self.seed), "chunk_size": int(self.chunk_size),
            "degree_exponent": float(self.degree_exponent)}


@dataclasses.dataclass(frozen=True)
class Neighborhoods:
  """The importance-neighborhood table of N items.

  Attributes:
    ids: int32 `[N, T]` neighbor item indices, most visited first, -1 on padding.
    weights: float32 `[N, T]` L1-normalised visit counts, 0 on padding.
    counts: int32 `[N]` valid slots per row (0 for an isolated item).
    config: the `NeighborhoodConfig` that produced the table.
  """

  ids: np.ndarray
  weights: np.ndarray
  counts: np.ndarray
  config: NeighborhoodConfig

  @property
  def num_items(self) -> int:
    return int(self.ids.shape[0])

  @property
  def num_neighbors(self) -> int:
    return int(self.ids.shape[1])

  def validate(self, num_items: int | None = None) -> None:
    """Raises `derived_tables.DerivedTableError` when the arrays break the contract above."""
    n, t = self.ids.shape if self.ids.ndim == 2 else (-1, -1)
    if t != self.config.num_neighbors or (num_items is not None and n != num_items):
      raise derived_tables.DerivedTableError(
          f"ids must be [{num_items if num_items is not None else 'N'}, "
          f"{self.config.num_neighbors}], got {self.ids.shape}.")
    if self.weights.shape != (n, t) or self.counts.shape != (n,):
      raise derived_tables.DerivedTableError(
          f"weights {self.weights.shape} / counts {self.counts.shape} do not match "
          f"ids {self.ids.shape}.")
    dtypes = (self.ids.dtype, self.weights.dtype, self.counts.dtype)
    if dtypes != (np.int32, np.float32, np.int32):
      raise derived_tables.DerivedTableError("ids and counts must be int32, weights float32.")
    valid = np.arange(t)[None, :] < np.asarray(self.counts)[:, None]
    if np.any((np.asarray(self.ids) >= 0) != valid):
      raise derived_tables.DerivedTableError(
          "ids must be >= 0 exactly on the first counts[i] slots of each row.")
    if np.any(np.where(valid, self.weights, 0) != self.weights) or not np.all(
        np.isfinite(self.weights)):
      raise derived_tables.DerivedTableError("weights must be finite and 0 on padding.")


class _Adjacency:
  """The two CSR directions as plain in-memory arrays plus degrees."""

  def __init__(self, ip_indptr, ip_indices, pi_indptr, pi_indices):
    self.ip_indptr = np.ascontiguousarray(ip_indptr, dtype=np.int64)
    self.ip_indices = np.ascontiguousarray(ip_indices, dtype=np.int32)
    self.pi_indptr = np.ascontiguousarray(pi_indptr, dtype=np.int64)
    self.pi_indices = np.ascontiguousarray(pi_indices, dtype=np.int32)
    self.item_degree = np.diff(self.ip_indptr)
    self.pivot_degree = np.diff(self.pi_indptr)

  @classmethod
  def of(cls, graph: graph_lib.Graph) -> "_Adjacency":
    return cls(graph.item_to_pivot.indptr, graph.item_to_pivot.indices,
               graph.pivot_to_item.indptr, graph.pivot_to_item.indices)


def _uniform_pick(indptr: np.ndarray, indices: np.ndarray, degree: np.ndarray,
                  rows: np.ndarray, u: np.ndarray) -> np.ndarray:
  """For each row r (degree > 0) picks `indices[indptr[r] + floor(u * deg)]`."""
  deg = degree[rows]
  # u * deg can round up to deg when u is within an ulp of 1.
  offset = np.minimum((u * deg).astype(np.int64), deg - 1)
  return indices[indptr[rows] + offset]


def _walk_chunk(adj: _Adjacency, seeds: np.ndarray, config: NeighborhoodConfig,
                rng: np.random.Generator, num_items: int) -> tuple[np.ndarray, ...]:
  """Walks from `seeds` (all with pivots) and keeps their top-T visited items.

  Args:
    adj: adjacency; `seeds` index its item rows (which may extend past
      `num_items` for new items that no pivot links back to).
    seeds: int64 `[B]` start items, each with at least one pivot.
    config: walk parameters.
    rng: the chunk's generator.
    num_items: items that can be visited (ids are < num_items).

  Returns:
    (ids int32 [B, T], weights float32 [B, T], counts int32 [B]).
  """
  b, w, h, t = seeds.shape[0], config.num_walks, config.max_hops, config.num_neighbors
  starts = np.repeat(seeds, w)                                     # [B*W]
  current = starts
  visits = np.empty((b, h, w), dtype=np.int64)                     # one row per seed
  for hop in range(h):
    u = rng.random((3 if hop + 1 < h else 2, b * w))
    pivot = _uniform_pick(adj.ip_indptr, adj.ip_indices, adj.item_degree, current, u[0])
    item = _uniform_pick(adj.pi_indptr, adj.pi_indices, adj.pivot_degree, pivot, u[1])
    visits[:, hop, :] = item.reshape(b, w)
    if hop + 1 < h:
      current = np.where(u[2] < config.restart_prob, starts, item)

  # Visit counts per (seed, item): sort each seed's H*W visits, then run lengths.
  per_seed = visits.reshape(b, h * w)
  per_seed.sort(axis=1)
  flat = per_seed.reshape(-1)
  row = np.repeat(np.arange(b, dtype=np.int64), h * w)
  run_start = np.ones(flat.shape[0], dtype=bool)
  run_start[1:] = (flat[1:] != flat[:-1]) | (row[1:] != row[:-1])
  first = np.flatnonzero(run_start)
  count = np.diff(np.append(first, flat.shape[0]))
  item, row = flat[first], row[first]
  keep = item != seeds[row]
  item, row, count = item[keep], row[keep], count[keep]

  beta = float(config.degree_exponent)
  if beta:
    # Importance = visits / degree ** beta; order by (seed, importance desc, item asc).
    score = count / np.power(np.maximum(adj.item_degree[item], 1).astype(np.float64), beta)
    order = np.lexsort((item, -score, row))
    item, row, score = item[order], row[order], score[order]
    return _top_rows(b, t, row, item, score)
  # Order by (seed, count desc, item asc) with one sort of a composite key.
  max_count = h * w
  if b * (max_count + 1) * num_items < _COMPOSITE_KEY_LIMIT:
    composite = (row * (max_count + 1) + (max_count - count)) * num_items + item
    composite.sort()  # keys are unique, so any sort algorithm gives the same order
    item = composite % num_items
    rest = composite // num_items
    count = max_count - rest % (max_count + 1)
    row = rest // (max_count + 1)
  else:
    order = np.lexsort((item, -count, row))
    item, row, count = item[order], row[order], count[order]
  return _top_rows(b, t, row, item, count)


def _top_rows(b: int, t: int, row: np.ndarray, item: np.ndarray, score: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The first `t` entries of each row of (row, item, score), sorted by row and
  then by rank: `(ids [b, t], weights [b, t], counts [b])` as in `_walk_chunk`."""
  per_row = np.bincount(row, minlength=b)
  rank = np.arange(row.shape[0]) - np.repeat(np.cumsum(per_row) - per_row, per_row)
  top = rank < t
  ids = np.full((b, t), -1, dtype=np.int32)
  raw = np.zeros((b, t), dtype=np.float64)
  ids[row[top], rank[top]] = item[top]
  raw[row[top], rank[top]] = score[top]
  total = raw.sum(axis=1, keepdims=True)
  weights = np.divide(raw, total, out=np.zeros_like(raw), where=total > 0).astype(np.float32)
  counts = np.count_nonzero(ids >= 0, axis=1).astype(np.int32)
  return ids, weights, counts


def _run_chunks(adj: _Adjacency, seeds: np.ndarray, config: NeighborhoodConfig,
                num_items: int, stream: int, num_threads: int | None,
                progress: ProgressFn | None) -> Neighborhoods:
  """Computes the table for `seeds` in chunks on a thread pool."""
  total = int(seeds.shape[0])
  t = config.num_neighbors
  ids = np.full((total, t), -1, dtype=np.int32)
  weights = np.zeros((total, t), dtype=np.float32)
  counts = np.zeros(total, dtype=np.int32)
  bounds = [(lo, min(lo + config.chunk_size, total))
            for lo in range(0, total, config.chunk_size)]

  def run(chunk: int) -> int:
    lo, hi = bounds[chunk]
    rng = np.random.default_rng([config.seed, stream, chunk])
    chunk_seeds = seeds[lo:hi]
    walkable = np.flatnonzero(adj.item_degree[chunk_seeds] > 0)   # isolated rows stay padding
    if walkable.size:
      i, w, c = _walk_chunk(adj, chunk_seeds[walkable], config, rng, num_items)
      ids[lo + walkable], weights[lo + walkable], counts[lo + walkable] = i, w, c
    return hi - lo

  if num_threads is None:
    num_threads = os.cpu_count() or 1
  if num_threads < 1:
    raise ValueError(f"num_threads must be >= 1 or None (all cores), got {num_threads}.")
  done = 0
  if progress is not None:
    progress(0, total)
  if num_threads == 1 or len(bounds) <= 1:
    results = map(run, range(len(bounds)))
    for n in results:
      done += n
      if progress is not None:
        progress(done, total)
  else:
    with concurrent.futures.ThreadPoolExecutor(min(num_threads, len(bounds))) as pool:
      for n in pool.map(run, range(len(bounds))):
        done += n
        if progress is not None:
          progress(done, total)
  return Neighborhoods(ids=ids, weights=weights, counts=counts, config=config)


def compute_neighborhoods(
    graph: graph_lib.Graph,
    config: NeighborhoodConfig = NeighborhoodConfig(),
    *,
    num_threads: int | None = None,
    progress: ProgressFn | None = None,
) -> Neighborhoods:
  """Computes the importance neighborhood of every item of `graph`.

  Args:
    graph: the (training) graph; walks use `item_to_pivot` and `pivot_to_item`.
    config: walk parameters.
    num_threads: worker threads (None: one per CPU core). The result does not
      depend on it.
    progress: optional `progress(items_done, num_items)`, called from the
      calling thread after every chunk.

  Returns:
    `Neighborhoods` with `ids`/`weights` `[N, T]` and `counts` `[N]`.
  """
  adj = _Adjacency.of(graph)
  seeds = np.arange(graph.num_items, dtype=np.int64)
  return _run_chunks(adj, seeds, config, graph.num_items, stream=0,
                     num_threads=num_threads, progress=progress)


def _as_csr(pivot_lists: graph_lib.CSR | Sequence[Sequence[int]], num_pivots: int) -> graph_lib.CSR:
  if isinstance(pivot_lists, graph_lib.CSR):
    csr = pivot_lists
  else:
    rows = [np.asarray(p, dtype=np.int64).reshape(-1) for p in pivot_lists]
    lengths = np.array([r.shape[0] for r in rows], dtype=np.int64)
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    indices = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= num_pivots):
      bad = int(np.flatnonzero((indices < 0) | (indices >= num_pivots))[0])
      new_item = int(np.searchsorted(indptr, bad, side="right") - 1)
      raise ValueError(f"pivot_lists[{new_item}] holds pivot {int(indices[bad])}; pivot "
                       f"indices must lie in [0, {num_pivots}).")
    csr = graph_lib.CSR(indptr=indptr, indices=indices.astype(np.int32))
  csr.validate("pivot_lists", csr.num_rows, num_pivots)
  return csr


def neighborhoods_for_new_items(
    graph: graph_lib.Graph,
    pivot_lists: graph_lib.CSR | Sequence[Sequence[int]],
    config: NeighborhoodConfig = NeighborhoodConfig(),
    *,
    num_threads: int | None = None,
) -> Neighborhoods:
  """Neighborhoods of K new items that are not in `graph` (cold start).

  A new item k is attached to the pivots `pivot_lists[k]` (pivot row indices
  of `graph`); no pivot links back to it, so walks of other items never visit
  it. Its walks follow the same process as `compute_neighborhoods`, starting
  (and restarting) by picking one of its pivots uniformly, so a new item
  attached to exactly the pivots of an existing item x gets x's neighborhood
  with x itself included (x is a regular visitable item here).

  Args:
    graph: the graph the new items attach to.
    pivot_lists: a `CSR` with K rows or K sequences of pivot indices
      (duplicates weight a pivot; an empty list, or one whose pivots have no
      items in `graph`, gives an all-padding row; item-less pivots are
      ignored).
    config: walk parameters (the random stream differs from the stored table's).
    num_threads: worker threads (None: one per CPU core).

  Returns:
    `Neighborhoods` with K rows; ids are item indices of `graph`.
  """
  pivots = _as_csr(pivot_lists, graph.num_pivots)
  # A pivot without items (possible when items were removed from the graph)
  # leads nowhere: drop it, so a walk never picks it and reads a neighbor's row.
  alive = graph.pivot_to_item.degrees()[pivots.indices] > 0
  if not np.all(alive):
    row_of = np.repeat(np.arange(pivots.num_rows), np.diff(pivots.indptr))
    row_lengths = np.bincount(row_of[alive], minlength=pivots.num_rows)
    indptr = np.zeros(pivots.num_rows + 1, dtype=np.int64)
    np.cumsum(row_lengths, out=indptr[1:])
    pivots = graph_lib.CSR(indptr=indptr, indices=pivots.indices[alive])
  n = graph.num_items
  # New items become extra item rows N..N+K-1 of item_to_pivot only.
  ip_indptr = np.concatenate([graph.item_to_pivot.indptr,
                              graph.item_to_pivot.nnz + pivots.indptr[1:]])
  ip_indices = np.concatenate([graph.item_to_pivot.indices, pivots.indices])
  adj = _Adjacency(ip_indptr, ip_indices, graph.pivot_to_item.indptr, graph.pivot_to_item.indices)
  seeds = np.arange(n, n + pivots.num_rows, dtype=np.int64)
  return _run_chunks(adj, seeds, config, n, stream=1, num_threads=num_threads, progress=None)


def _pivot_walk_adjacency(graph: graph_lib.Graph, lists: graph_lib.CSR
                          ) -> tuple[_Adjacency, np.ndarray]:
  """The graph plus one virtual pivot and start item per item list, and the starts.

  New pivots m..m+k-1 hold the k lists; one virtual start item n+j per list
  links to pivot m+j only (and only when the list is not empty), so a walk
  from item n+j is a walk from pivot j's item list.
  """
  n, m, k = graph.num_items, graph.num_pivots, lists.num_rows
  pi_indptr = np.concatenate([graph.pivot_to_item.indptr,
                              graph.pivot_to_item.nnz + lists.indptr[1:]])
  pi_indices = np.concatenate([graph.pivot_to_item.indices, lists.indices])
  walkable = np.diff(lists.indptr) > 0
  ip_indptr = np.concatenate([graph.item_to_pivot.indptr,
                              graph.item_to_pivot.nnz + np.cumsum(walkable)])
  ip_indices = np.concatenate([graph.item_to_pivot.indices,
                               (m + np.flatnonzero(walkable)).astype(np.int32)])
  return (_Adjacency(ip_indptr, ip_indices, pi_indptr, pi_indices),
          np.arange(n, n + k, dtype=np.int64))


def _as_item_lists(item_lists: graph_lib.CSR | Sequence[Sequence[int]], num_items: int
                   ) -> graph_lib.CSR:
  """A CSR of item lists, checked against `num_items` (errors name the list)."""
  if isinstance(item_lists, graph_lib.CSR):
    csr = item_lists
  else:
    rows = [np.asarray(r, dtype=np.int64).reshape(-1) for r in item_lists]
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([r.shape[0] for r in rows], out=indptr[1:])
    indices = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    csr = graph_lib.CSR(indptr=indptr, indices=indices)
  indices = np.asarray(csr.indices)
  if indices.size and (indices.min() < 0 or indices.max() >= num_items):
    bad = int(np.flatnonzero((indices < 0) | (indices >= num_items))[0])
    row = int(np.searchsorted(csr.indptr, bad, side="right") - 1)
    raise ValueError(f"item_lists[{row}] holds item {int(indices[bad])}; item indices must "
                     f"lie in [0, {num_items}).")
  return graph_lib.CSR(indptr=np.asarray(csr.indptr, np.int64),
                       indices=indices.astype(np.int32))


def compute_pivot_neighborhoods(
    graph: graph_lib.Graph,
    config: NeighborhoodConfig = NeighborhoodConfig(),
    item_lists: graph_lib.CSR | Sequence[Sequence[int]] | None = None,
    *,
    num_threads: int | None = None,
    progress: ProgressFn | None = None,
) -> Neighborhoods:
  """Importance neighborhoods of pivots: walks that start at a pivot.

  Each row k of `item_lists` is a pivot with those items (duplicates weight an
  item). It becomes a new pivot that only its own walks can reach: a walk
  starts (and restarts) there, picks one of its items uniformly, and from
  then on follows the graph like an item walk (`compute_neighborhoods`). The
  table ranks the visited items by importance. Rows are independent of each
  other and of the graph's own pivots.

  Args:
    graph: the graph whose items are walked.
    config: walk parameters (T = `config.num_neighbors` items per pivot).
    item_lists: K item lists (a `CSR` or sequences of item indices); None =
      the graph's pivots, i.e. `graph.pivot_to_item`. An empty list gives an
      all-padding row.
    num_threads: worker threads (None: one per core); the table does not
      depend on it.
    progress: optional `progress(pivots_done, num_pivots)`.

  Returns:
    `Neighborhoods` with K rows; ids are item indices of `graph`.
  """
  n = graph.num_items
  lists = _as_item_lists(graph.pivot_to_item if item_lists is None else item_lists, n)
  adj, seeds = _pivot_walk_adjacency(graph, lists)
  return _run_chunks(adj, seeds, config, n, stream=2, num_threads=num_threads,
                     progress=progress)


# --- Storage ------------------------------------------------------------------


def _rows_of(graph_dir: str | os.PathLike, kind: str) -> int:
  """Rows a table of `kind` has: the graph's items, or its pivots."""
  counts = graph_lib.read_manifest(graph_dir)["counts"]
  if kind not in (KIND, PIVOT_KIND):
    raise ValueError(f"kind must be {KIND!r} or {PIVOT_KIND!r}, got {kind!r}.")
  return int(counts["items" if kind == KIND else "pivots"])


def save_neighborhoods(graph_dir: str | os.PathLike, neighborhoods: Neighborhoods,
                       kind: str = KIND) -> str:
  """Writes the table to `<graph_dir>/<kind>/<config.key()>/` atomically.

  `kind` is `KIND` (one row per item) or `PIVOT_KIND` (one row per pivot).

  Returns:
    The table directory.
  """
  neighborhoods.validate(_rows_of(graph_dir, kind))
  config = neighborhoods.config
  return derived_tables.save(
      graph_dir, kind, config.key(),
      {"ids": neighborhoods.ids, "weights": neighborhoods.weights, "counts": neighborhoods.counts},
      config.to_json(), extra={"algorithm_version": ALGORITHM_VERSION})


def load_neighborhoods(graph_dir: str | os.PathLike,
                       config: NeighborhoodConfig = NeighborhoodConfig(), *,
                       kind: str = KIND, mmap: bool = True, verify: bool = True
                       ) -> Neighborhoods:
  """Loads the `kind` table of `config` for the graph in `graph_dir`.

  Raises:
    FileNotFoundError: not computed yet.
    derived_tables.StaleTableError: stored for another graph (fingerprint) or config.
    derived_tables.DerivedTableError: corrupt or malformed files (named).
  """
  rows = _rows_of(graph_dir, kind)
  arrays, _ = derived_tables.load(graph_dir, kind, config.key(), config.to_json(),
                                  ("ids", "weights", "counts"), mmap=mmap, verify=verify)
  table = Neighborhoods(ids=arrays["ids"], weights=arrays["weights"], counts=arrays["counts"],
                        config=config)
  try:
    table.validate(rows)
  except derived_tables.DerivedTableError as e:
    raise derived_tables.DerivedTableError(
        f"{derived_tables.directory(graph_dir, kind, config.key())}: {e}") from e
  return table


def load_or_compute_neighborhoods(
    graph_dir: str | os.PathLike,
    graph: graph_lib.Graph | None = None,
    config: NeighborhoodConfig = NeighborhoodConfig(),
    *,
    num_threads: int | None = None,
    progress: ProgressFn | None = None,
) -> Neighborhoods:
  """Returns the cached table of `config`, computing and saving it when absent.

  A table stored for an older version of the graph (fingerprint mismatch) is
  recomputed and replaced; a corrupt table raises `derived_tables.DerivedTableError`
  (delete its directory to recompute) rather than being silently overwritten.

  Args:
    graph_dir: the graph directory (the cache lives inside it).
    graph: the loaded graph of `graph_dir` (loaded here when None).
    config, num_threads, progress: as for `compute_neighborhoods`.
  """
  return _load_or_compute(graph_dir, graph, config, KIND, compute_neighborhoods,
                           num_threads, progress)


def load_or_compute_pivot_neighborhoods(
    graph_dir: str | os.PathLike,
    graph: graph_lib.Graph | None = None,
    config: NeighborhoodConfig = NeighborhoodConfig(),
    *,
    num_threads: int | None = None,
    progress: ProgressFn | None = None,
) -> Neighborhoods:
  """`load_or_compute_neighborhoods` for the graph's pivots (`PIVOT_KIND`)."""
  return _load_or_compute(graph_dir, graph, config, PIVOT_KIND, compute_pivot_neighborhoods,
                          num_threads, progress)


def _load_or_compute(graph_dir, graph, config, kind, compute, num_threads, progress):
  try:
    return load_neighborhoods(graph_dir, config, kind=kind)
  except FileNotFoundError:
    pass
  except derived_tables.StaleTableError as e:
    logging.info("Recomputing %s: %s", kind, e)
  if graph is None:
    graph = graph_lib.load_graph(graph_dir)
  table = compute(graph, config, num_threads=num_threads, progress=progress)
  save_neighborhoods(graph_dir, table, kind=kind)
  return load_neighborhoods(graph_dir, config, kind=kind)


def recompute_rows(
    graph: graph_lib.Graph,
    table: Neighborhoods,
    rows: np.ndarray,
    *,
    kind: str = KIND,
    item_lists: graph_lib.CSR | None = None,
    num_threads: int | None = None,
    whole_chunks: bool = True,
) -> tuple[Neighborhoods, np.ndarray]:
  """Recomputes the chunks of `table` that hold `rows`, for a changed `graph`.

  The random stream of a row is that of its chunk (`chunk_size` consecutive
  rows), so the whole chunk of every requested row is walked again, with the
  chunk's own generator: each recomputed row equals the row
  `compute_neighborhoods(graph, ...)` (or `compute_pivot_neighborhoods` for
  `kind=PIVOT_KIND`) gives. Rows of other chunks are copied from `table`;
  they equal a full recomputation when their walks read no changed row of
  the graph (`pinsage_tf.refresh` decides which rows that are).

  Args:
    graph: the graph the rows are walked on.
    table: the previous table; it may have fewer rows than the new one
      (rows appended since are new and must be among `rows`).
    rows: int `[R]` rows to recompute (item rows, or pivot / list rows).
    kind: `KIND` (rows are items of `graph`) or `PIVOT_KIND` (rows are the
      lists of `item_lists`, default `graph.pivot_to_item`).
    item_lists: the pivot lists for `PIVOT_KIND`.
    num_threads: worker threads (None: one per CPU core).
    whole_chunks: False walks only `rows` (each with its chunk's generator,
      but the generator then serves fewer walks, so a recomputed row is a
      fresh draw of the same distribution, not the row a full recomputation
      gives); the cost is proportional to `rows` instead of their chunks.

  Returns:
    (the new table, int64 `[C]` every row that was recomputed, ascending).
  """
  config = table.config
  n = graph.num_items
  if kind == KIND:
    adj = _Adjacency.of(graph)
    seeds = np.arange(n, dtype=np.int64)
    stream = 0
  elif kind == PIVOT_KIND:
    lists = _as_item_lists(graph.pivot_to_item if item_lists is None else item_lists, n)
    adj, seeds = _pivot_walk_adjacency(graph, lists)
    stream = 2
  else:
    raise ValueError(f"kind must be {KIND!r} or {PIVOT_KIND!r}, got {kind!r}.")
  total, old = int(seeds.shape[0]), table.num_items
  rows = np.asarray(rows, np.int64).reshape(-1)
  if old > total:
    raise ValueError(f"the table has {old} rows but the graph gives {total}; rows are only "
                     "ever appended.")
  if rows.size and (rows.min() < 0 or rows.max() >= total):
    raise ValueError(f"rows must lie in [0, {total}).")
  if np.setdiff1d(np.arange(old, total), rows).size:
    raise ValueError(f"rows {old}..{total - 1} are new and must be recomputed.")
  t = config.num_neighbors
  ids = np.full((total, t), -1, dtype=np.int32)
  weights = np.zeros((total, t), dtype=np.float32)
  counts = np.zeros(total, dtype=np.int32)
  ids[:old], weights[:old], counts[:old] = table.ids, table.weights, table.counts
  rows = np.unique(rows)
  chunks = np.unique(rows // config.chunk_size)

  def run(chunk: int) -> None:
    lo, hi = chunk * config.chunk_size, min((chunk + 1) * config.chunk_size, total)
    rng = np.random.default_rng([config.seed, stream, chunk])
    if whole_chunks:
      local = np.arange(hi - lo)
    else:
      local = rows[(rows >= lo) & (rows < hi)] - lo
    chunk_rows = lo + local
    chunk_seeds = seeds[chunk_rows]
    ids[chunk_rows], weights[chunk_rows], counts[chunk_rows] = -1, 0.0, 0
    walkable = np.flatnonzero(adj.item_degree[chunk_seeds] > 0)
    if walkable.size:
      i, w, c = _walk_chunk(adj, chunk_seeds[walkable], config, rng, n)
      dest = chunk_rows[walkable]
      ids[dest], weights[dest], counts[dest] = i, w, c

  if num_threads is None:
    num_threads = os.cpu_count() or 1
  if num_threads <= 1 or chunks.size <= 1:
    for chunk in chunks.tolist():
      run(chunk)
  else:
    with concurrent.futures.ThreadPoolExecutor(min(num_threads, chunks.size)) as pool:
      list(pool.map(run, chunks.tolist()))
  if not whole_chunks:
    recomputed = rows
  elif chunks.size:
    recomputed = np.concatenate([
        np.arange(c * config.chunk_size, min((c + 1) * config.chunk_size, total))
        for c in chunks.tolist()])
  else:
    recomputed = np.zeros(0, np.int64)
  return (Neighborhoods(ids=ids, weights=weights, counts=counts, config=config),
          recomputed.astype(np.int64))
