"""Tests of PPR hard negatives: window, exclusions, fallbacks, storage."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from pinsage_tf import derived_tables
from pinsage_tf import graph as graph_lib
from pinsage_tf import hard_negatives as hn


def _chain_graph(num_communities=5, size=4, pairs=(), extra_items=0):
  """Communities C_k = items [size*k, size*(k+1)) on one pivot each, chained by bridges.

  Bridge pivot `num_communities + k` holds the last item of C_k and the first
  item of C_{k+1}. From item 0, PPR mass decays by community: every path to
  C_{k+1} passes through one bridge of degree 2, so all of C_k outranks all of
  C_{k+1} (checked against an exact float64 PPR below). `extra_items` adds
  isolated items at the end.
  """
  edges = []
  for k in range(num_communities):
    edges += [(size * k + j, k) for j in range(size)]
  for k in range(num_communities - 1):
    edges += [(size * k + size - 1, num_communities + k), (size * (k + 1), num_communities + k)]
  edges = np.array(edges)
  n = num_communities * size + extra_items
  pairs = np.array(pairs, dtype=np.int32).reshape(-1, 2)
  return graph_lib.build_graph(
      name="chain", item_ids=[f"i{i}" for i in range(n)],
      pivot_ids=[f"p{p}" for p in range(2 * num_communities - 1)],
      edge_items=edges[:, 0], edge_pivots=edges[:, 1],
      pairs=graph_lib.ItemPairs(pairs[:, 0], pairs[:, 1], np.zeros(len(pairs), np.int8)))


def _exact_ranking(graph, q, alpha, excluded=()):
  """Candidates of q by exact PPR (linear solve), descending, ties by index."""
  n, m = graph.num_items, graph.num_pivots
  a = np.zeros((n, m))
  for i in range(n):
    a[i, graph.pivots_of(i)] = 1.0
  p = (a / np.maximum(a.sum(1), 1)[:, None]) @ (a / np.maximum(a.sum(0), 1)[None, :]).T
  e = np.zeros(n)
  e[q] = 1.0
  scores = alpha * np.linalg.solve((np.eye(n) - (1 - alpha) * p).T, e)
  candidates = [i for i in range(n) if i != q and i not in excluded and scores[i] > 1e-12]
  return sorted(candidates, key=lambda i: (-scores[i], i))


class TestConfig:

  def test_default_window_scales_with_items(self):
    config = hn.HardNegativeConfig()
    # Gowalla: ceil(0.02 * 40981) = 820, ceil(0.10 * 40981) = 4099.
    assert config.window(40981) == (820, 4099)
    # Small graphs: at least 10 ranks in, at least 10 wide.
    assert config.window(50) == (10, 20)
    # 0.1 * 30 is 3.0000000000000004 in floats; the window must still be exact.
    assert hn.HardNegativeConfig(window_start_fraction=0.0, window_end_fraction=0.1,
                                 ).window(3000) == (10, 300)

  def test_explicit_window_and_key(self):
    config = hn.HardNegativeConfig(window_start=3, window_end=7, pool_size=4)
    assert config.window(10**6) == (3, 7)
    assert config.resolve(10**4).key() == "v1-win3-7-a0.5-it10-P4-s0"
    assert hn.HardNegativeConfig().resolve(10**4).key() == "v1-winf0.02-0.1-a0.5-it10-P64-s0"

  def test_auto_estimator_resolves_by_size(self):
    config = hn.HardNegativeConfig(auto_exact_max_items=100)
    assert config.resolve(100).estimator == "exact"
    walks = config.resolve(101)
    assert walks.estimator == "walks"
    assert walks.key() == "v1-winf0.02-0.1-a0.5-it10-P64-s0-walks2000"
    # Explicit choices are kept whatever the size.
    assert hn.HardNegativeConfig(estimator="walks").resolve(10).estimator == "walks"
    assert hn.HardNegativeConfig(estimator="exact").resolve(10**9).estimator == "exact"
    with pytest.raises(ValueError, match="resolve"):
      config.key()

  @pytest.mark.parametrize("kwargs", [{"window_start": 5}, {"window_start": 5, "window_end": 5},
                                      {"alpha": 0.0}, {"num_iterations": 0}, {"pool_size": 0},
                                      {"window_start_fraction": 0.2, "window_end_fraction": 0.1},
                                      {"estimator": "pixie"}, {"num_walks": 0}])
  def test_rejects_bad_values(self, kwargs):
    with pytest.raises(ValueError, match="HardNegativeConfig"):
      hn.HardNegativeConfig(**kwargs)


class TestCurriculum:

  @pytest.mark.parametrize("epoch,max_hard,expected", [(1, 3, 0), (2, 3, 1), (4, 3, 3),
                                                       (9, 3, 3), (5, 0, 0)])
  def test_epoch_n_uses_n_minus_one(self, epoch, max_hard, expected):
    assert hn.num_hard_negatives_for_epoch(epoch, max_hard) == expected

  def test_rejects_epoch_zero(self):
    with pytest.raises(ValueError, match="1-based"):
      hn.num_hard_negatives_for_epoch(0, 2)


class TestPools:

  def test_ranking_matches_exact_ppr_on_community_chain(self):
    graph = _chain_graph()
    ranking = _exact_ranking(graph, 0, alpha=0.5)
    # The hand-derived order: the rest of C0, then C1, C2, ...
    assert [set(ranking[:3]), set(ranking[3:7]), set(ranking[7:11])] == [
        {1, 2, 3}, {4, 5, 6, 7}, {8, 9, 10, 11}]
    config = hn.HardNegativeConfig(window_start=7, window_end=11, pool_size=8,
                                   num_iterations=60)
    table = hn.compute_hard_negatives(graph, [0], config)
    assert table.counts[0] == 4
    assert set(table.pool[0, :4]) == {8, 9, 10, 11}  # exactly C2
    np.testing.assert_array_equal(table.pool[0, 4:], [-1] * 4)

  def test_pool_is_inside_window_and_excludes_positives(self):
    # Train pairs (0 -> 5) and (6 -> 0): both 5 and 6 are positives of 0.
    graph = _chain_graph(pairs=[(0, 5), (6, 0), (9, 10)])
    config = hn.HardNegativeConfig(window_start=2, window_end=9, pool_size=4,
                                   num_iterations=60)
    ranking = _exact_ranking(graph, 0, 0.5, excluded={5, 6})
    window = set(ranking[2:9])
    table = hn.compute_hard_negatives(graph, None, config)  # train queries: 0, 6, 9
    np.testing.assert_array_equal(table.queries, [0, 6, 9])
    assert table.counts[0] == 4
    assert set(table.pool[0]) <= window
    assert not set(table.pool[0]) & {0, 5, 6}
    assert len(set(table.pool[0])) == 4
    for q, positive in ((6, 0), (9, 10)):
      assert q not in table.pool[q] and positive not in table.pool[q]
    # Non-queries have empty pools.
    others = np.setdiff1d(np.arange(graph.num_items), [0, 6, 9])
    assert np.all(table.pool[others] == -1) and np.all(table.counts[others] == 0)

  def test_small_reachable_set_takes_its_lower_part(self):
    # Two components: C0 (items 0-3) alone, so item 0 reaches 3 candidates.
    graph = _chain_graph(num_communities=1, extra_items=30)
    config = hn.HardNegativeConfig(window_start=10, window_end=20, pool_size=5)
    table = hn.compute_hard_negatives(graph, [0, 5], config)
    # R = 3 < end = 20: window [floor(10 * 3 / 20), 3) = [1, 3). Items 1, 2, 3
    # are symmetric (equal scores, computed by identical operations), so ties
    # resolve by index: ranks 0, 1, 2 are items 1, 2, 3 and the window is {2, 3}.
    assert table.counts[0] == 2
    assert set(table.pool[0, :2]) == {2, 3}
    # Item 5 is isolated: no candidates, no crash.
    assert table.counts[5] == 0 and np.all(table.pool[5] == -1)

  def test_deterministic_and_independent_of_block_size(self):
    graph = _chain_graph(num_communities=6)
    config = hn.HardNegativeConfig(window_start=3, window_end=15, pool_size=4, seed=7)
    queries = np.arange(graph.num_items)
    tables = [hn.compute_hard_negatives(graph, queries, config, block_size=b) for b in (1, 5, 128)]
    for other in tables[1:]:
      np.testing.assert_array_equal(other.pool, tables[0].pool)
      np.testing.assert_array_equal(other.counts, tables[0].counts)
    reseeded = hn.compute_hard_negatives(graph, queries, dataclasses.replace(config, seed=8))
    assert not np.array_equal(reseeded.pool, tables[0].pool)

  def test_sampling_is_uniform_without_replacement(self):
    config = hn.HardNegativeConfig(window_start=10, window_end=30, pool_size=5, seed=3)
    b = 2000
    queries = np.arange(b)
    items = np.broadcast_to(np.arange(100, 140), (b, 40))   # every query ranks 100..139
    scores = np.broadcast_to(np.linspace(1.0, 0.5, 40), (b, 40))
    pool, counts = hn._sample_pools(config, 10, 30, queries, scores, items)
    np.testing.assert_array_equal(counts, 5)
    assert all(len(set(row)) == 5 for row in pool)
    freq = np.bincount(pool.reshape(-1) - 100, minlength=40)
    assert freq[:10].sum() == 0 and freq[30:].sum() == 0
    # Expected 2000 * 5 / 20 = 500 per window item; binomial sd ~ 19.
    assert np.all(np.abs(freq[10:30] - 500) < 100)

  def test_progress_and_bad_queries(self):
    graph = _chain_graph()
    calls = []
    hn.compute_hard_negatives(graph, [0, 1, 2], hn.HardNegativeConfig(), block_size=2,
                              progress=lambda d, t: calls.append((d, t)))
    assert calls == [(0, 3), (2, 3), (3, 3)]
    walks = hn.HardNegativeConfig(estimator="walks", num_walks=20)
    calls.clear()
    hn.compute_hard_negatives(graph, range(7), walks, block_size=2, num_threads=3,
                              progress=lambda d, t: calls.append((d, t)))
    assert calls == [(0, 7), (2, 7), (4, 7), (6, 7), (7, 7)]
    with pytest.raises(ValueError, match="num_threads must be >= 1"):
      hn.compute_hard_negatives(graph, [0], walks, num_threads=0)
    with pytest.raises(ValueError, match=r"query_items must lie in \[0, 20\)"):
      hn.compute_hard_negatives(graph, [25])


class TestStorage:

  def test_round_trip_and_cache(self, tmp_path):
    graph = _chain_graph(pairs=[(0, 5), (8, 9)])
    directory = os.path.join(tmp_path, "graph")
    graph_lib.save_graph(graph, directory)
    config = hn.HardNegativeConfig(window_start=2, window_end=9, pool_size=3)
    calls = []
    first = hn.load_or_compute_hard_negatives(directory, graph, config,
                                              progress=lambda d, t: calls.append(d))
    assert calls
    assert os.path.isdir(os.path.join(directory, "hard_negatives",
                                      config.resolve(graph.num_items).key()))
    np.testing.assert_array_equal(first.queries, [0, 8])
    calls.clear()
    second = hn.load_or_compute_hard_negatives(directory, None, config,
                                               progress=lambda d, t: calls.append(d))
    assert not calls
    assert isinstance(second.pool, np.memmap)
    np.testing.assert_array_equal(second.pool, first.pool)
    # Another query set is stale: recomputed and replaced.
    third = hn.load_or_compute_hard_negatives(directory, graph, config, query_items=[3],
                                              progress=lambda d, t: calls.append(d))
    assert calls
    np.testing.assert_array_equal(third.queries, [3])
    np.testing.assert_array_equal(hn.load_hard_negatives(directory, config).queries, [3])

  def test_corrupt_pool_is_named(self, tmp_path):
    graph = _chain_graph(pairs=[(0, 5)])
    directory = os.path.join(tmp_path, "graph")
    graph_lib.save_graph(graph, directory)
    config = hn.HardNegativeConfig(window_start=2, window_end=9, pool_size=3)
    path = hn.save_hard_negatives(directory, hn.compute_hard_negatives(graph, None, config))
    with open(os.path.join(path, "pool.npy"), "r+b") as f:
      f.seek(-1, os.SEEK_END)
      f.write(b"\x7f")
    with pytest.raises(derived_tables.DerivedTableError, match="pool.npy: checksum mismatch"):
      hn.load_hard_negatives(directory, config)


def _community_graph(num_items=1200, num_pivots=360, num_communities=12, pivot_size=8,
                     noise=0.2, num_pairs=2400, seed=0):
  """A random pin/board graph with planted communities (a small synthetic catalogue).

  Each pivot belongs to a community and holds `pivot_size` items, each from
  its community with probability `1 - noise`, else from anywhere; train pairs
  join two items of one pivot.
  """
  rng = np.random.default_rng(seed)
  community = rng.integers(num_communities, size=num_items)
  members = [np.flatnonzero(community == c) for c in range(num_communities)]
  edge_items, edge_pivots = [], []
  for p in range(num_pivots):
    own = rng.choice(members[p % num_communities], size=pivot_size)
    mixed = np.where(rng.random(pivot_size) < noise, rng.integers(num_items, size=pivot_size), own)
    edge_items += list(mixed)
    edge_pivots += [p] * pivot_size
  edges = np.unique(np.stack([edge_items, edge_pivots], 1), axis=0)
  pivot_of = rng.integers(num_pivots, size=num_pairs)
  items_of = [edges[edges[:, 1] == p, 0] for p in range(num_pivots)]
  pairs = np.array([rng.choice(items_of[p], size=2) for p in pivot_of])
  pairs = pairs[pairs[:, 0] != pairs[:, 1]].astype(np.int32)
  return graph_lib.build_graph(
      name="communities", item_ids=[f"i{i}" for i in range(num_items)],
      pivot_ids=[f"p{p}" for p in range(num_pivots)],
      edge_items=edges[:, 0], edge_pivots=edges[:, 1],
      pairs=graph_lib.ItemPairs(pairs[:, 0], pairs[:, 1], np.zeros(len(pairs), np.int8)))


def _dense_ppr(graph, queries, alpha, num_iterations):
  """Exact truncated PPR scores `[Q, N]` in float64, as the module docstring defines them."""
  n, m = graph.num_items, graph.num_pivots
  a = np.zeros((n, m))
  for i in range(n):
    a[i, graph.pivots_of(i)] = 1.0
  p = (a / np.maximum(a.sum(1), 1)[:, None]) @ (a / np.maximum(a.sum(0), 1)[None, :]).T
  restart = np.zeros((len(queries), n))
  restart[np.arange(len(queries)), queries] = alpha
  scores = restart
  for _ in range(num_iterations):
    scores = restart + (1 - alpha) * scores @ p
  return scores


class TestWalks:

  def test_visit_counts_estimate_the_exact_scores(self):
    # E[visits of i] = num_walks / alpha * score(i), the same truncated sum.
    graph = _chain_graph(num_communities=3)
    config = hn.HardNegativeConfig(estimator="walks", num_walks=40_000, num_iterations=10)
    rows, items, counts = hn._Walker(graph, config)(np.array([0]))
    assert np.all(rows == 0) and np.all(np.diff(items) > 0)
    estimate = np.zeros(graph.num_items)
    estimate[items] = counts * config.alpha / config.num_walks
    exact = _dense_ppr(graph, [0], config.alpha, config.num_iterations)[0]
    exact[0] -= config.alpha  # the walks count the steps, not the start at q
    # Binomial sd of a score s: sqrt(alpha * s / num_walks) <= 0.0025 here.
    np.testing.assert_allclose(estimate, exact, atol=0.01)
    assert np.all((estimate > 0) <= (exact > 0))  # only reachable items are visited

  def test_pool_is_inside_visited_set_and_excludes_positives(self):
    graph = _chain_graph(pairs=[(0, 5), (6, 0), (9, 10)])
    config = hn.HardNegativeConfig(window_start=2, window_end=9, pool_size=4,
                                   estimator="walks", num_walks=3000)
    table = hn.compute_hard_negatives(graph, None, config)
    assert table.config.estimator == "walks"
    np.testing.assert_array_equal(table.queries, [0, 6, 9])
    assert table.counts[0] == 4 and len(set(table.pool[0])) == 4
    assert not set(table.pool[0]) & {0, 5, 6}
    # From item 0, 3000 walks reach C0..C2 for sure: the window [2, 9) holds
    # the rest of C0 (2 of 3 ranks are above), C1 and maybe C2, never beyond.
    assert set(table.pool[0]) <= set(range(1, 12))
    for q, positive in ((6, 0), (9, 10)):
      assert q not in table.pool[q] and positive not in table.pool[q]

  def test_small_visited_set_takes_its_lower_part_and_isolated_is_empty(self):
    graph = _chain_graph(num_communities=1, extra_items=30)
    config = hn.HardNegativeConfig(window_start=10, window_end=20, pool_size=5,
                                   estimator="walks", num_walks=500)
    table = hn.compute_hard_negatives(graph, [0, 5], config)
    # Walks from 0 visit only 1, 2, 3 (R = 3): the window is [1, 3), two items.
    assert table.counts[0] == 2 and set(table.pool[0, :2]) <= {1, 2, 3}
    assert table.counts[5] == 0 and np.all(table.pool[5] == -1)

  def test_deterministic_and_independent_of_block_size(self):
    graph = _chain_graph(num_communities=6)
    config = hn.HardNegativeConfig(window_start=3, window_end=15, pool_size=4, seed=7,
                                   estimator="walks", num_walks=200)
    queries = np.arange(graph.num_items)
    tables = [hn.compute_hard_negatives(graph, queries, config, block_size=b, num_threads=t)
              for b, t in ((1, 1), (7, 1), (128, 1), (3, 4), (7, 2))]
    for other in tables[1:]:
      np.testing.assert_array_equal(other.pool, tables[0].pool)
      np.testing.assert_array_equal(other.counts, tables[0].counts)
    reseeded = hn.compute_hard_negatives(graph, queries, dataclasses.replace(config, seed=8))
    assert not np.array_equal(reseeded.pool, tables[0].pool)

  def test_window_overlaps_the_exact_window(self):
    """The estimated window is the exact band up to rank noise at its edges.

    1200 items, default window ranks [24, 120) of ~1070 reachable candidates,
    2000 walks per query (the default), 60 queries. Measured: 61% of the exact
    window is in the estimated one (1000 walks: 49%, 8000: 78%); 4.2% of the
    estimated window ranks above the exact window (none a positive: they are
    excluded exactly), 11.7% at twice its end or below, none unreachable. A
    random sample of the reachable candidates would overlap 9%.
    """
    graph = _community_graph()
    config = hn.HardNegativeConfig(pool_size=1000, estimator="walks")
    start, end = config.window(graph.num_items)
    assert (start, end) == (24, 120)
    queries = np.unique(graph.pairs.of(graph_lib.Split.TRAIN)[0])[:60]
    table = hn.compute_hard_negatives(graph, queries, config)
    exact = _dense_ppr(graph, queries, config.alpha, config.num_iterations)
    positives = hn.train_positives(graph)
    overlap, above, far = [], [], []
    for row, q in enumerate(queries):
      scores = exact[row].copy()
      scores[q] = -1
      scores[positives.row(q)] = -1
      ranking = np.lexsort((np.arange(graph.num_items), -scores))
      ranking = ranking[scores[ranking] > 0]
      assert ranking.size >= end
      rank = np.full(graph.num_items, graph.num_items)
      rank[ranking] = np.arange(ranking.size)
      estimated = table.pool[q, :table.counts[q]]
      assert np.all(scores[estimated] > 0)  # never a positive, q or an unreached item
      overlap.append(np.isin(ranking[start:end], estimated).mean())
      above.append(np.mean(rank[estimated] < start))
      far.append(np.mean(rank[estimated] >= 2 * end))
    assert np.mean(overlap) > 0.5
    assert np.mean(above) < 0.1
    assert np.mean(far) < 0.15

  def test_round_trip_records_the_estimator(self, tmp_path):
    graph = _chain_graph(pairs=[(0, 5), (8, 9)])
    directory = os.path.join(tmp_path, "graph")
    graph_lib.save_graph(graph, directory)
    config = hn.HardNegativeConfig(window_start=2, window_end=9, pool_size=3,
                                   auto_exact_max_items=10, num_walks=300)
    first = hn.load_or_compute_hard_negatives(directory, graph, config)
    assert first.config.estimator == "walks"
    assert os.path.isdir(os.path.join(directory, "hard_negatives",
                                      dataclasses.replace(config, estimator="walks").key()))
    second = hn.load_hard_negatives(directory, config)
    np.testing.assert_array_equal(second.pool, first.pool)
