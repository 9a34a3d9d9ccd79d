r"""The hard-negative and neighborhood tables as Apache Beam pipelines.

`hard_negatives.compute_hard_negatives` with the "walks" estimator runs its
walkers in one process over the memory-mapped graph. For a graph whose
adjacency does not fit one worker, this module runs the same walks in the
MapReduce style of PinSage's offline jobs: a walker is a record, and each step
joins the walkers with the adjacency by the node they stand on. It runs on the
DirectRunner here and on Flink, Spark or Dataflow with standard pipeline
options (`pipeline_args`).

Pipeline (Q queries, W = `num_walks`, L = `num_iterations`):

    item / pivot / pair ranges (beam.Create; workers read the memory-mapped graph)
      -> Rows:      (item, its pivots)  and  (pivot, its items)
      -> Positives: (query, [positives]) from the train pairs, both directions
      -> Walkers:   (q, (q, j)) for every query q and walk j < W
      -> for t = 0 .. L-1:
           ToPivot: CoGroupByKey({walkers, item rows}) by the walkers' item;
                    each walker draws h = hash(seed, q, j, t) (the same
                    counter-based draw as the local path), stops with
                    probability alpha (or at an item without pivots), else
                    picks pivot `row[(h_low32 * deg) >> 32]`  -> (pivot, (q, j, h))
           ToItem:  CoGroupByKey({walkers, pivot rows}) by pivot; picks item
                    `row[(h_high32 * deg) >> 32]`  -> visit (q, item) and the
                    walker (item, (q, j)) of step t + 1
      -> Count:     visits per (q, item) (CombinePerKey), regrouped by q
      -> Rank:      CoGroupByKey({visits, positives}) by q;
                    `hard_negatives.pools_from_visits` ranks and samples one
                    query's pool exactly as the local path does for a block
      -> Write:     keyed by q // shard_size, one `part-<start>-<stop>.npy`
                    int32 `[rows, 2 + P]` (query, count, pool) per shard,
                    written to a temporary name and renamed.

The driver assembles the shards into a `HardNegatives` table (queries with no
visits keep an empty pool, as locally). Every draw is a hash of (seed, query,
walk, step) and the ranking does not depend on the order of the visits, so
the table equals the local one for the same config (tested).
`save_hard_negatives` stores it where `trainer.train` finds it.

The importance-neighborhood table (`run_neighborhoods`) is a map over chunks
of start items instead: its walks draw from `default_rng([seed, 0, chunk])`
per chunk of `config.chunk_size` items (`neighborhoods`), so each task runs
one chunk's walks over the memory-mapped adjacency and writes its rows
(`nb-<start>-<stop>.npz`: ids, weights, counts); the assembled table equals
`compute_neighborhoods` for the same config, and `save_neighborhoods` stores
it where `trainer.train` finds it.
"""

from __future__ import annotations

import io
import os
import tempfile
import uuid
from typing import Iterator, Sequence

import numpy as np

from pinsage_tf import graph as graph_lib
from pinsage_tf import hard_negatives as hard_lib
from pinsage_tf import neighborhoods as nb_lib

import apache_beam as beam  # pylint: disable=g-bad-import-order
from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-bad-import-order
from apache_beam.options import pipeline_options  # pylint: disable=g-bad-import-order

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_LOW32 = np.uint64(0xFFFFFFFF)
_SHIFT = np.uint64(32)


def _ranges(total: int, size: int) -> list[tuple[int, int]]:
  return [(lo, min(lo + size, total)) for lo in range(0, total, size)]


class _GraphDoFn(beam.DoFn):
  """Opens the graph (memory-mapped, checked once by the driver) on each worker."""

  def __init__(self, graph_dir: str):
    super().__init__()
    self._graph_dir = graph_dir
    self._graph = None

  def setup(self):
    self._graph = graph_lib.load_graph(self._graph_dir, mmap=True, verify=False)


class _ReadRows(_GraphDoFn):
  """(start, stop) -> (node, neighbor ids) rows of one CSR direction."""

  def __init__(self, graph_dir: str, direction: str):
    super().__init__(graph_dir)
    self._direction = direction

  def process(self, bounds: tuple[int, int]) -> Iterator[tuple[int, np.ndarray]]:
    csr = getattr(self._graph, self._direction)
    for node in range(*bounds):
      yield node, np.asarray(csr.indices[csr.indptr[node]:csr.indptr[node + 1]], np.int64)


class _ReadPositives(_GraphDoFn):
  """(start, stop) of the train pairs -> (item, positive) in both directions."""

  def process(self, bounds: tuple[int, int]) -> Iterator[tuple[int, int]]:
    query, positive = self._graph.pairs.of(graph_lib.Split.TRAIN)
    lo, hi = bounds
    for q, p in zip(np.asarray(query[lo:hi]).tolist(), np.asarray(positive[lo:hi]).tolist()):
      yield q, p
      yield p, q


def _to_pivot(element, config: hard_lib.HardNegativeConfig, step: int):
  """(item, {walkers, row}) -> (pivot, (q, j, h)) for the walkers that take the step."""
  _, group = element
  walkers, rows = list(group["walkers"]), list(group["row"])
  if not walkers:
    return
  pivots = rows[0] if rows else np.zeros(0, np.int64)
  q = np.array([w[0] for w in walkers], np.int64)
  j = np.array([w[1] for w in walkers], np.uint64)
  stop_below = np.uint64(min(int(config.alpha * 2.0**64), 2**64 - 1))
  with np.errstate(over="ignore"):
    counter = j * np.uint64(config.num_iterations) + np.uint64(step)
    keys = hard_lib._hash_stream(config.seed, hard_lib._WALK_SALT, q)  # pylint: disable=protected-access
    h = hard_lib._mix64(keys ^ (counter * _GOLDEN + _GOLDEN))  # pylint: disable=protected-access
    alive = hard_lib._mix64(h ^ _GOLDEN) >= stop_below  # pylint: disable=protected-access
    deg = np.uint64(pivots.size)
    pick = ((h & _LOW32) * deg) >> _SHIFT
  if not pivots.size:
    return
  for qi, ji, hi, ai, pi in zip(q.tolist(), j.tolist(), h.tolist(), alive.tolist(),
                                pick.tolist()):
    if ai:
      yield int(pivots[pi]), (qi, ji, hi)


def _to_item(element) -> Iterator[tuple[str, tuple]]:
  """(pivot, {walkers, row}) -> tagged visits (q, item) and next walkers (item, (q, j))."""
  _, group = element
  walkers, rows = list(group["walkers"]), list(group["row"])
  if not walkers:
    return
  items = rows[0]
  deg = np.uint64(items.size)
  for q, j, h in walkers:
    with np.errstate(over="ignore"):
      item = int(items[int(((np.uint64(h) >> _SHIFT) * deg) >> _SHIFT)])
    yield beam.pvalue.TaggedOutput("visits", ((q, item), 1))
    yield item, (q, j)


def _rank(element, config: hard_lib.HardNegativeConfig, start: int, end: int, num_items: int):
  """(q, {visits, positives}) -> (q, count, pool [P]) as the local path ranks one query."""
  q, group = element
  visits = list(group["visits"])
  if not visits:
    return
  items = np.array([v[0] for v in visits], np.int64)
  counts = np.array([v[1] for v in visits], np.int64)
  positives = np.array(sorted(set(group["positives"])), np.int64)
  excluded = np.stack([np.zeros(1 + positives.size, np.int64),
                       np.concatenate([[q], positives])], axis=1)
  pool, count = hard_lib.pools_from_visits(
      config, start, end, np.array([q], np.int64), excluded, np.zeros(items.size, np.int64),
      items, counts, num_items)
  yield q, int(count[0]), pool[0]


class _WriteShard(beam.DoFn):
  """(shard, [(q, count, pool)]) -> `part-<start>-<stop>.npy` int32 [rows, 2 + P]."""

  def __init__(self, output_dir: str, shard_size: int, pool_size: int):
    super().__init__()
    self._output_dir, self._shard_size, self._pool_size = output_dir, shard_size, pool_size

  def process(self, element) -> Iterator[str]:
    shard, rows = element
    rows = sorted(rows, key=lambda r: r[0])
    table = np.array([[q, c, *pool] for q, c, pool in rows], np.int32).reshape(
        -1, 2 + self._pool_size)
    start = shard * self._shard_size
    name = f"part-{start}-{start + self._shard_size}.npy"
    path = FileSystems.join(self._output_dir, name)
    tmp = FileSystems.join(self._output_dir, f".tmp-{uuid.uuid4().hex}-{name}")
    buffer = io.BytesIO()
    np.save(buffer, table, allow_pickle=False)
    with FileSystems.create(tmp) as f:
      f.write(buffer.getvalue())
    if FileSystems.exists(path):  # a retried bundle: same content
      FileSystems.delete([path])
    FileSystems.rename([tmp], [path])
    yield path


def run_hard_negatives(
    graph_dir: str,
    config: hard_lib.HardNegativeConfig,
    *,
    query_items: Sequence[int] | np.ndarray | None = None,
    pipeline_args: Sequence[str] = (),
    read_size: int = 65536,
    shard_size: int = 65536,
    output_dir: str | None = None,
) -> hard_lib.HardNegatives:
  """Computes the hard-negative table of `graph_dir` with a Beam pipeline.

  Args:
    graph_dir: a graph from `data.prepare` (on storage every worker reads).
    config: a "walks" config ("auto" must resolve to walks for this graph;
      the exact estimator has no pipeline).
    query_items: query items; None = every query of a train pair.
    pipeline_args: Beam options, e.g. `["--runner=FlinkRunner", ...]`;
      empty = DirectRunner in one process.
    read_size: nodes (or pairs) per read task.
    shard_size: queries per output shard.
    output_dir: where the shards go (kept); None = a temporary directory.

  Returns:
    The same `HardNegatives` as `compute_hard_negatives(graph, query_items,
    config)`.
  """
  manifest = graph_lib.read_manifest(graph_dir)
  n = int(manifest["counts"]["items"])
  m = int(manifest["counts"]["pivots"])
  config = config.resolve(n)
  if config.estimator != "walks":
    raise ValueError("run_hard_negatives runs the 'walks' estimator; pass "
                     "HardNegativeConfig(estimator='walks') (exact PPR has no pipeline).")
  graph = graph_lib.load_graph(graph_dir)  # checks every file once, before launching
  if query_items is None:
    query_items = graph.pairs.of(graph_lib.Split.TRAIN)[0]
  queries = np.unique(np.asarray(query_items, dtype=np.int64).reshape(-1))
  if queries.size and (queries[0] < 0 or queries[-1] >= n):
    raise ValueError(f"query_items must lie in [0, {n}).")
  num_pairs = int(graph.pairs.of(graph_lib.Split.TRAIN)[0].shape[0])
  start, end = config.window(n)
  if output_dir is None:
    output_dir = os.path.join(tempfile.mkdtemp(prefix="pinsage-beam-hard-negatives-"))
  if not FileSystems.exists(output_dir):
    FileSystems.mkdirs(output_dir)
  options = pipeline_options.PipelineOptions(list(pipeline_args))
  query_list = queries.tolist()
  with beam.Pipeline(options=options) as p:
    item_rows = (p | "ItemRanges" >> beam.Create(_ranges(n, read_size))
                 | "ItemRows" >> beam.ParDo(_ReadRows(graph_dir, "item_to_pivot")))
    pivot_rows = (p | "PivotRanges" >> beam.Create(_ranges(m, read_size))
                  | "PivotRows" >> beam.ParDo(_ReadRows(graph_dir, "pivot_to_item")))
    positives = (p | "PairRanges" >> beam.Create(_ranges(num_pairs, read_size))
                 | "Positives" >> beam.ParDo(_ReadPositives(graph_dir)))
    walkers = (p | "Queries" >> beam.Create(query_list)
               | "Walkers" >> beam.FlatMap(
                   lambda q, w=config.num_walks: ((q, (q, j)) for j in range(w))))
    visits = []
    for step in range(config.num_iterations):
      at_pivot = ({"walkers": walkers, "row": item_rows}
                  | f"JoinItems{step}" >> beam.CoGroupByKey()
                  | f"ToPivot{step}" >> beam.FlatMap(_to_pivot, config, step))
      stepped = ({"walkers": at_pivot, "row": pivot_rows}
                 | f"JoinPivots{step}" >> beam.CoGroupByKey()
                 | f"ToItem{step}" >> beam.FlatMap(_to_item).with_outputs("visits", main="walkers"))
      visits.append(stepped.visits)
      walkers = stepped.walkers
    counted = (visits | "AllVisits" >> beam.Flatten()
               | "Count" >> beam.CombinePerKey(sum)
               | "ByQuery" >> beam.Map(lambda kv: (kv[0][0], (kv[0][1], kv[1]))))
    _ = ({"visits": counted, "positives": positives}
         | "JoinPositives" >> beam.CoGroupByKey()
         | "Rank" >> beam.FlatMap(_rank, config, start, end, n)
         | "ByShard" >> beam.Map(lambda r: (r[0] // shard_size, r))
         | "GroupShards" >> beam.GroupByKey()
         | "Write" >> beam.ParDo(_WriteShard(output_dir, shard_size, config.pool_size)))
  return _assemble(output_dir, config, queries, n)


def _assemble(output_dir: str, config: hard_lib.HardNegativeConfig, queries: np.ndarray,
              num_items: int) -> hard_lib.HardNegatives:
  """The table from the shards: rows of queries without visits stay empty."""
  pool = np.full((num_items, config.pool_size), -1, dtype=np.int32)
  counts = np.zeros(num_items, dtype=np.int32)
  seen = np.zeros(num_items, dtype=bool)
  for match in FileSystems.match([FileSystems.join(output_dir, "part-*.npy")])[0].metadata_list:
    with FileSystems.open(match.path) as f:
      table = np.load(io.BytesIO(f.read()), allow_pickle=False)
    q = table[:, 0]
    if np.any(seen[q]):
      raise RuntimeError(f"{match.path}: a query appears in two shards (a runner duplicated "
                         "elements).")
    seen[q] = True
    counts[q], pool[q] = table[:, 1], table[:, 2:]
  extra = np.setdiff1d(np.flatnonzero(seen), queries)
  if extra.size:
    raise RuntimeError(f"{output_dir}: pools for {extra.size} items that are not queries.")
  table = hard_lib.HardNegatives(pool=pool, counts=counts, queries=queries.astype(np.int32),
                                 config=config)
  table.validate(num_items)
  return table


class _NeighborhoodChunk(_GraphDoFn):
  """chunk index -> its rows of the importance-neighborhood table, written as one shard."""

  def __init__(self, graph_dir: str, config: nb_lib.NeighborhoodConfig, output_dir: str):
    super().__init__(graph_dir)
    self._config, self._output_dir = config, output_dir
    self._adj = None

  def setup(self):
    super().setup()
    self._adj = nb_lib._Adjacency.of(self._graph)  # pylint: disable=protected-access

  def process(self, chunk: int) -> Iterator[str]:
    config, n = self._config, self._graph.num_items
    lo, hi = chunk * config.chunk_size, min((chunk + 1) * config.chunk_size, n)
    t = config.num_neighbors
    ids = np.full((hi - lo, t), -1, dtype=np.int32)
    weights = np.zeros((hi - lo, t), dtype=np.float32)
    counts = np.zeros(hi - lo, dtype=np.int32)
    # The draws of the local path's chunk `chunk` (stream 0: graph items).
    rng = np.random.default_rng([config.seed, 0, chunk])
    seeds = np.arange(lo, hi, dtype=np.int64)
    walkable = np.flatnonzero(self._adj.item_degree[seeds] > 0)
    if walkable.size:
      ids[walkable], weights[walkable], counts[walkable] = nb_lib._walk_chunk(  # pylint: disable=protected-access
          self._adj, seeds[walkable], config, rng, n)
    name = f"nb-{lo}-{hi}.npz"
    path = FileSystems.join(self._output_dir, name)
    tmp = FileSystems.join(self._output_dir, f".tmp-{uuid.uuid4().hex}-{name}")
    buffer = io.BytesIO()
    np.savez(buffer, ids=ids, weights=weights, counts=counts)
    with FileSystems.create(tmp) as f:
      f.write(buffer.getvalue())
    if FileSystems.exists(path):
      FileSystems.delete([path])
    FileSystems.rename([tmp], [path])
    yield path


def run_neighborhoods(graph_dir: str, config: nb_lib.NeighborhoodConfig, *,
                      pipeline_args: Sequence[str] = (),
                      output_dir: str | None = None) -> nb_lib.Neighborhoods:
  """Computes the importance-neighborhood table of `graph_dir` with a Beam pipeline.

  Returns:
    The same `Neighborhoods` as `neighborhoods.compute_neighborhoods(graph, config)`.
  """
  graph_lib.load_graph(graph_dir)  # checks every file once, before launching
  n = int(graph_lib.read_manifest(graph_dir)["counts"]["items"])
  if output_dir is None:
    output_dir = tempfile.mkdtemp(prefix="pinsage-beam-neighborhoods-")
  if not FileSystems.exists(output_dir):
    FileSystems.mkdirs(output_dir)
  num_chunks = -(-n // config.chunk_size)
  options = pipeline_options.PipelineOptions(list(pipeline_args))
  with beam.Pipeline(options=options) as p:
    _ = (p | "Chunks" >> beam.Create(list(range(num_chunks)))
         | "Walk" >> beam.ParDo(_NeighborhoodChunk(graph_dir, config, output_dir)))
  t = config.num_neighbors
  ids = np.full((n, t), -1, dtype=np.int32)
  weights = np.zeros((n, t), dtype=np.float32)
  counts = np.zeros(n, dtype=np.int32)
  covered = np.zeros(n, dtype=np.int64)
  for match in FileSystems.match([FileSystems.join(output_dir, "nb-*.npz")])[0].metadata_list:
    lo, hi = (int(x) for x in os.path.basename(match.path)[3:-4].split("-"))
    with FileSystems.open(match.path) as f:
      shard = np.load(io.BytesIO(f.read()), allow_pickle=False)
      ids[lo:hi], weights[lo:hi], counts[lo:hi] = shard["ids"], shard["weights"], shard["counts"]
    covered[lo:hi] += 1
  if np.any(covered != 1):
    raise RuntimeError(f"{output_dir}: the shards do not cover every item exactly once.")
  table = nb_lib.Neighborhoods(ids=ids, weights=weights, counts=counts, config=config)
  table.validate(n)
  return table
