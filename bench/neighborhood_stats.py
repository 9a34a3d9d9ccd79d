"""What importance neighborhoods contain: weight entropy, hubs, pair leakage.

For a prepared graph and one or more neighborhood configs (differing in the
degree exponent, the number of walks, ...) this measures on the table:

* `weight_entropy`: mean normalised entropy `H(w) / log(count)` of the kept
  weights over items with >= 2 neighbors (1.0 = uniform weights, i.e.
  importance pooling is mean pooling);
* `top_weight`: mean weight of the first neighbor (1 / T when uniform);
* `neighbor_degree_median` vs `item_degree_median` (items with edges), and
  `top50_slot_share`: the share of all neighbor slots taken by the 50 most
  frequent neighbors (how much the neighborhoods are the same hubs);
* `pairs_in_neighborhood`: per split, the share of (query, positive) item
  pairs whose positive is among the query's neighbors (`query_side`), or
  either item among the other's (`either_side`). Training pairs whose
  positive sits in the query's neighborhood offer a shortcut held-out pairs
  rarely offer; the pipeline masks it (`PipelineConfig.mask_pair_leakage`).

    python bench/neighborhood_stats.py --graph_dir=out/gowalla/graph \
        --degree_exponents=0,0.5 --output_json=bench/results/neighborhood_stats_gowalla.json
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


def weight_entropy(table: nb.Neighborhoods) -> tuple[float, float]:
  """(mean normalised entropy over rows with >= 2 neighbors, mean top weight)."""
  counts = np.asarray(table.counts)
  w = np.asarray(table.weights, np.float64)[counts >= 2]
  c = counts[counts >= 2]
  with np.errstate(divide="ignore", invalid="ignore"):
    h = -np.where(w > 0, w * np.log(w), 0.0).sum(axis=1)
  return float(np.mean(h / np.log(c))), float(np.mean(w[:, 0]))


def pair_membership(table: nb.Neighborhoods, query: np.ndarray, positive: np.ndarray
                    ) -> dict[str, float]:
  """Shares of pairs whose positive is in the query's row (and either way)."""
  ids = np.asarray(table.ids)
  if query.size == 0:
    return {"pairs": 0, "query_side": 0.0, "either_side": 0.0}
  forward = np.any(ids[query] == positive[:, None], axis=1)
  backward = np.any(ids[positive] == query[:, None], axis=1)
  return {"pairs": int(query.size), "query_side": float(forward.mean()),
          "either_side": float((forward | backward).mean())}


def table_stats(graph: graph_lib.Graph, table: nb.Neighborhoods) -> dict:
  degree = graph.item_degrees()
  ids = np.asarray(table.ids)
  slots = ids[ids >= 0]
  entropy, top = weight_entropy(table)
  frequency = np.bincount(slots, minlength=graph.num_items)
  top50 = np.sort(frequency)[::-1][:50].sum() / max(1, slots.size)
  out = {
      "config": table.config.to_json(),
      "weight_entropy": round(entropy, 4),
      "top_weight": round(top, 4),
      "uniform_weight": round(1.0 / table.num_neighbors, 4),
      "neighbor_degree_median": float(np.median(degree[slots])) if slots.size else 0.0,
      "item_degree_median": float(np.median(degree[degree > 0])),
      "top50_slot_share": round(float(top50), 4),
      "pairs_in_neighborhood": {},
  }
  for split in graph_lib.Split:
    q, p = graph.pairs.of(split)
    out["pairs_in_neighborhood"][split.name.lower()] = pair_membership(
        table, np.asarray(q, np.int64), np.asarray(p, np.int64))
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--graph_dir", required=True)
  parser.add_argument("--num_neighbors", type=int, default=10)
  parser.add_argument("--num_walks", type=str, default="100",
                      help="comma-separated walks per item (one table each)")
  parser.add_argument("--degree_exponents", type=str, default="0,0.5")
  parser.add_argument("--output_json", required=True)
  args = parser.parse_args()
  graph = graph_lib.load_graph(args.graph_dir)
  results = []
  for walks in (int(w) for w in args.num_walks.split(",")):
    for beta in (float(b) for b in args.degree_exponents.split(",")):
      config = nb.NeighborhoodConfig(num_neighbors=args.num_neighbors, num_walks=walks,
                                     degree_exponent=beta)
      started = time.perf_counter()
      table = nb.load_or_compute_neighborhoods(args.graph_dir, graph, config)
      stats = table_stats(graph, table)
      stats["seconds"] = round(time.perf_counter() - started, 2)
      print(json.dumps(stats), flush=True)
      results.append(stats)
  atomic.write_json(args.output_json, {
      "command": ["python", "bench/neighborhood_stats.py", *sys.argv[1:]],
      "graph_dir": args.graph_dir, "graph": graph.name, "tables": results})


if __name__ == "__main__":
  main()
