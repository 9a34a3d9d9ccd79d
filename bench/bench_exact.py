r"""Benchmark: exact search in cache-sized tiles beside `[b, N]` score blocks.

`retrieval_exact.top_k` / `rank_counts` score up to 1,024 queries against
8,192 corpus rows at a time (the evaluator, the export's checks and its ScaNN
tuning use them). The reference is the blocked layout they replace and that
non-embedding scorers still use: `[b, N]` blocks with `b * N` at most
`DEFAULT_MAX_BLOCK_ELEMENTS` (`rows_per_block`), masked with `mask_rows`, then
`top_k_of_scores` / `rank_counts_of_scores` of each whole block. Both run in one
process on the same random unit vectors (64 dims), alternating, best of
`--repeats`; their results are checked equal. Milliseconds per query:

    nice -n 10 python bench/bench_exact.py [--sizes=100000,1000000] [--queries=2048] \
        [--output_json=bench/results/exact.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pinsage_tf import atomic  # noqa: E402
from pinsage_tf import retrieval_exact as rx  # noqa: E402

_K = 10


def _blocked(queries: np.ndarray, corpus: np.ndarray, exclude: np.ndarray, score_block):
  """`score_block(scores, start, stop)` of every masked `[b, N]` score block."""
  excl = rx.as_exclusion(exclude, queries.shape[0], corpus.shape[0])
  for start, stop in rx.blocks(queries.shape[0], rx.rows_per_block(corpus.shape[0])):
    scores = queries[start:stop] @ corpus.T
    rx.mask_rows(scores, excl, start)
    score_block(scores, start, stop)


def _blocked_top_k(queries, corpus, exclude):
  top = np.empty((queries.shape[0], _K), np.int32)

  def block(scores, start, stop):
    top[start:stop] = rx.top_k_of_scores(scores, _K)[0]

  _blocked(queries, corpus, exclude, block)
  return top


def _blocked_rank_counts(queries, corpus, targets, exclude):
  greater = np.empty(queries.shape[0], np.int64)
  equal = np.empty(queries.shape[0], np.int64)

  def block(scores, start, stop):
    greater[start:stop], equal[start:stop] = rx.rank_counts_of_scores(scores, targets[start:stop])

  _blocked(queries, corpus, exclude, block)
  return greater, equal


def bench_size(n: int, num_queries: int, repeats: int, seed: int) -> dict:
  rng = np.random.default_rng(seed)
  corpus = rng.standard_normal((n, 64), dtype=np.float32)
  corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
  rows = rng.choice(n, num_queries, replace=False)
  targets = rng.integers(0, n, num_queries)
  targets[targets == rows] = (targets[targets == rows] + 1) % n
  queries = corpus[rows]
  runs = {
      "blocks_top_k": lambda: _blocked_top_k(queries, corpus, rows),
      "tiles_top_k": lambda: rx.top_k(queries, corpus, _K, exclude=rows)[0],
      "blocks_rank_counts": lambda: _blocked_rank_counts(queries, corpus, targets, rows),
      "tiles_rank_counts": lambda: rx.rank_counts(queries, corpus, targets, exclude=rows),
  }
  best = dict.fromkeys(runs, np.inf)
  out = {}
  for _ in range(repeats):  # alternating, so a busy spell hits every variant
    for name, run in runs.items():
      started = time.perf_counter()
      out[name] = run()
      best[name] = min(best[name], time.perf_counter() - started)
  equal_lists = float(np.mean(np.all(out["tiles_top_k"] == out["blocks_top_k"], axis=1)))
  if equal_lists < 0.999 or not all(np.array_equal(a, b) for a, b in zip(
      out["tiles_rank_counts"], out["blocks_rank_counts"])):
    raise SystemExit(f"n={n}: the tiles and the blocks disagree (identical lists {equal_lists}).")
  per_query = {name: round(seconds / num_queries * 1e3, 4) for name, seconds in best.items()}
  return {"items": n, "queries": num_queries, "ms_per_query": per_query,
          "tiles_over_blocks": {
              what: round(per_query[f"tiles_{what}"] / per_query[f"blocks_{what}"], 3)
              for what in ("top_k", "rank_counts")},
          "identical_top_lists": equal_lists}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="100000,1000000")
  parser.add_argument("--queries", type=int, default=2048)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--output_json", default=None)
  args = parser.parse_args()
  result = {"k": _K, "dim": 64, "load_average_at_start": list(os.getloadavg()),
            "tile": {"rows": rx.TILE_ROWS, "elements": rx.TILE_ELEMENTS},
            "block_elements": rx.DEFAULT_MAX_BLOCK_ELEMENTS,
            "sizes": [bench_size(int(n), args.queries, args.repeats, args.seed)
                      for n in args.sizes.split(",")]}
  print(json.dumps(result, indent=2))
  if args.output_json:
    atomic.write_json(args.output_json, result)


if __name__ == "__main__":
  main()
