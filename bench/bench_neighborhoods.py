"""Benchmark: importance neighborhoods and PPR hard negatives on Gowalla.

Builds the Gowalla training graph (items = venues, pivots = users) straight
from `<datasets_dir>/gowalla/train.txt`, then measures

* the full importance-neighborhood table (all 40,981 items; T=10, 100 walks,
  3 traversals, restart 0.5; chunks of 1024 seeds) with 1 and 2 threads:
  wall time, seeds/s, CPU/wall ratio (cores actually used), and that the
  tables are identical;
* the latency of one 1024-seed chunk;
* hard negatives (default config) for a sample of query items, with the
  full-table time extrapolated (labelled as an estimate), and one power
  iteration with `tf.sparse.sparse_dense_matmul` vs the CSR kernel used.

The machine may be shared: the JSON records the load average at start.

    python bench/bench_neighborhoods.py --datasets_dir=../shared/datasets \
        --output_json=bench/results/neighborhoods.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pinsage_tf  # noqa: E402,F401  (before TensorFlow)
from pinsage_tf import atomic  # noqa: E402
from pinsage_tf import graph as graph_lib  # noqa: E402
from pinsage_tf import neighborhoods as nb  # noqa: E402


def read_gowalla_train(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(user, item) int64 edge arrays of a `user item item ...` file."""
  with open(path) as f:
    lines = [line for line in f.read().split("\n") if line.strip()]
  lengths = np.array([len(line.split()) for line in lines], dtype=np.int64)
  tokens = np.array(" ".join(lines).split(), dtype=np.int64)
  firsts = np.cumsum(lengths) - lengths
  users = np.repeat(tokens[firsts], lengths - 1)
  is_item = np.ones(tokens.shape[0], dtype=bool)
  is_item[firsts] = False
  return users, tokens[is_item]


def build_gowalla_graph(datasets_dir: str) -> graph_lib.Graph:
  users, items = read_gowalla_train(os.path.join(datasets_dir, "gowalla", "train.txt"))
  n, m = int(items.max()) + 1, int(users.max()) + 1
  return graph_lib.build_graph(
      name="gowalla-train", item_ids=np.arange(n).astype(str), pivot_ids=np.arange(m).astype(str),
      edge_items=items, edge_pivots=users)


def timed(fn):
  wall, cpu = time.perf_counter(), time.process_time()
  out = fn()
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  return out, wall, cpu


def bench_neighborhoods(graph, threads, repeats, chunk_size):
  config = nb.NeighborhoodConfig(num_neighbors=10, num_walks=100, max_hops=3,
                                 restart_prob=0.5, seed=0, chunk_size=chunk_size)
  result = {"config": config.to_json(), "num_items": graph.num_items, "by_threads": {}}
  tables = {}
  for k in threads:
    walls, cpus = [], []
    for _ in range(repeats):
      table, wall, cpu = timed(lambda k=k: nb.compute_neighborhoods(graph, config, num_threads=k))
      walls.append(wall)
      cpus.append(cpu)
    tables[k] = table
    best = int(np.argmin(walls))
    result["by_threads"][str(k)] = {
        "full_table_wall_s": round(walls[best], 3),
        "full_table_wall_s_all": [round(w, 3) for w in walls],
        "seeds_per_s": round(graph.num_items / walls[best], 1),
        "cpu_over_wall": round(cpus[best] / walls[best], 2),
    }
  if len(threads) >= 2:
    a, b = str(threads[0]), str(threads[-1])
    walls = {k: v["full_table_wall_s"] for k, v in result["by_threads"].items()}
    result[f"speedup_{b}_over_{a}_threads"] = round(walls[a] / walls[b], 2)
  first = tables[threads[0]]
  result["identical_across_thread_counts"] = all(
      np.array_equal(t.ids, first.ids) and np.array_equal(t.weights, first.weights)
      for t in tables.values())
  result["rows_with_full_T"] = int(np.count_nonzero(first.counts == config.num_neighbors))
  result["isolated_items"] = int(np.count_nonzero(first.counts == 0))

  # One chunk of 1024 seeds, single thread.
  adj = nb._Adjacency.of(graph)  # pylint: disable=protected-access
  seeds = np.arange(min(1024, graph.num_items), dtype=np.int64)
  seeds = seeds[adj.item_degree[seeds] > 0]
  lat = []
  for c in range(max(repeats, 3)):
    _, wall, _ = timed(lambda c=c: nb._walk_chunk(  # pylint: disable=protected-access
        adj, seeds, config, np.random.default_rng([0, 0, c]), graph.num_items))
    lat.append(wall)
  result["one_chunk_1024_seeds"] = {"wall_s_min": round(min(lat), 4),
                                    "seeds_per_s": round(seeds.size / min(lat), 1)}
  return result


def bench_hard_negatives(graph, num_queries, block_size):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from pinsage_tf import hard_negatives as hn  # pylint: disable=g-import-not-at-top
  config = hn.HardNegativeConfig()
  rng = np.random.default_rng(0)
  candidates = np.flatnonzero(graph.item_degrees() > 0)
  queries = np.sort(rng.choice(candidates, min(num_queries, candidates.size), replace=False))
  table, wall, cpu = timed(lambda: hn.compute_hard_negatives(graph, queries, config,
                                                             block_size=block_size))
  counts = table.counts[queries]
  result = {
      "config": config.to_json(),
      "window": list(config.window(graph.num_items)),
      "num_queries": int(queries.size),
      "block_size": block_size,
      "wall_s": round(wall, 2),
      "cpu_over_wall": round(cpu / wall, 2),
      "queries_per_s": round(queries.size / wall, 1),
      "estimate_full_table_all_items_wall_s": round(wall * graph.num_items / queries.size, 1),
      "estimate_note": "extrapolated linearly from the sampled queries (includes one-off "
                       "tracing), not measured",
      "pool_count_mean": round(float(counts.mean()), 2),
      "pool_count_min": int(counts.min()),
      "train_pairs_excluded": 0,
  }

  # One power iteration (two sparse products) with each TF kernel, block_size queries.
  n, m = graph.num_items, graph.num_pivots
  p2i = graph.pivot_to_item
  i2p = graph.item_to_pivot
  ops = {
      "to_pivot": hn._csr_operands(  # pylint: disable=protected-access
          p2i.indptr, p2i.indices, 1.0 / graph.item_degrees()[p2i.indices], (m, n)),
      "to_item": hn._csr_operands(  # pylint: disable=protected-access
          i2p.indptr, i2p.indices, 1.0 / graph.pivot_degrees()[i2p.indices], (n, m)),
  }
  dense = tf.constant(rng.random((n, block_size), dtype=np.float32))
  coo = {k: tf.sparse.SparseTensor(*v) for k, v in ops.items()}
  csr = {k: tf.raw_ops.SparseTensorToCSRSparseMatrix(indices=v[0], values=v[1], dense_shape=v[2])
         for k, v in ops.items()}

  def coo_iter():
    x = tf.sparse.sparse_dense_matmul(coo["to_pivot"], dense)
    return tf.sparse.sparse_dense_matmul(coo["to_item"], x).numpy()

  def csr_iter():
    x = tf.raw_ops.SparseMatrixMatMul(a=csr["to_pivot"], b=dense)
    return tf.raw_ops.SparseMatrixMatMul(a=csr["to_item"], b=x).numpy()

  per_iter = {}
  for name, fn in (("sparse_dense_matmul_coo", coo_iter), ("csr_sparse_matrix_matmul", csr_iter)):
    fn()
    walls = [timed(fn)[1] for _ in range(3)]
    per_iter[name] = round(min(walls), 4)
  np.testing.assert_allclose(coo_iter(), csr_iter(), rtol=1e-4, atol=1e-7)
  result["one_power_iteration_s"] = per_iter
  return result


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--datasets_dir", default="../shared/datasets")
  parser.add_argument("--output_json", default=None)
  parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--chunk_size", type=int, default=1024)
  parser.add_argument("--hard_negative_queries", type=int, default=2048)
  parser.add_argument("--hard_negative_block_size", type=int, default=128)
  parser.add_argument("--skip_hard_negatives", action="store_true")
  args = parser.parse_args(argv)

  graph, build_s, _ = timed(lambda: build_gowalla_graph(args.datasets_dir))
  out = {
      "benchmark": "neighborhoods",
      "dataset": "gowalla train",
      "graph": {"items": graph.num_items, "pivots": graph.num_pivots, "edges": graph.num_edges,
                "build_s": round(build_s, 2)},
      "cpu_count": os.cpu_count(),
      "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
      "neighborhoods": bench_neighborhoods(
          graph, [int(t) for t in args.threads.split(",")], args.repeats, args.chunk_size),
  }
  if not args.skip_hard_negatives:
    out["hard_negatives"] = bench_hard_negatives(graph, args.hard_negative_queries,
                                                 args.hard_negative_block_size)
  out["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
  print(json.dumps(out, indent=2, sort_keys=True))
  if args.output_json:
    atomic.write_json(args.output_json, out)


if __name__ == "__main__":
  main()
