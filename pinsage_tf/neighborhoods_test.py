"""Tests of importance neighborhoods: walk statistics, padding, storage."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from pinsage_tf import derived_tables
from pinsage_tf import graph as graph_lib
from pinsage_tf import neighborhoods as nb


def _graph(num_items, num_pivots, edges, name="g"):
  edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
  return graph_lib.build_graph(
      name=name, item_ids=[f"i{i}" for i in range(num_items)],
      pivot_ids=[f"p{p}" for p in range(num_pivots)],
      edge_items=edges[:, 0], edge_pivots=edges[:, 1])


def _path_graph():
  # Items 0-1-2-3 on a path (pivot 0 = {0,1}, pivot 1 = {1,2}, pivot 2 = {2,3}),
  # item 4 isolated (no pivots).
  return _graph(5, 3, [(0, 0), (1, 0), (1, 1), (2, 1), (2, 2), (3, 2)])


def _small_graph():
  # An irregular bipartite graph: pivot 0 = {0,1,2}, 1 = {1,3}, 2 = {2,3,4}, 3 = {4,5}.
  return _graph(6, 4, [(0, 0), (1, 0), (2, 0), (1, 1), (3, 1), (2, 2), (3, 2), (4, 2),
                       (4, 3), (5, 3)])


def _random_graph(num_items=60, num_pivots=25, num_edges=200, seed=0):
  rng = np.random.default_rng(seed)
  edges = np.stack([rng.integers(0, num_items, num_edges),
                    rng.integers(0, num_pivots, num_edges)], 1)
  return _graph(num_items, num_pivots, edges)


def _exact_visit_distribution(graph, start, max_hops, restart_prob):
  """Expected visits of one walk (module docstring formula), s dropped, L1-normalised."""
  n, m = graph.num_items, graph.num_pivots
  a = np.zeros((n, m))
  for i in range(n):
    a[i, graph.pivots_of(i)] = 1.0
  item_deg, pivot_deg = a.sum(1), a.sum(0)
  p = (a / np.maximum(item_deg, 1)[:, None]) @ (a / np.maximum(pivot_deg, 1)[None, :]).T
  e = np.zeros(n)
  e[start] = 1.0
  y = e @ p
  visits = np.zeros(n)
  for _ in range(max_hops):
    visits += y
    y = (restart_prob * e + (1 - restart_prob) * y) @ p
  visits[start] = 0.0
  return visits / visits.sum()


def _dense_row(table, row, num_items):
  out = np.zeros(num_items)
  valid = table.ids[row] >= 0
  out[table.ids[row][valid]] = table.weights[row][valid]
  return out


class TestConfig:

  def test_key_is_stable_and_distinguishes_parameters(self):
    assert nb.NeighborhoodConfig().key() == "v1-T10-w100-h3-r0.5-s0-c1024"
    keys = {nb.NeighborhoodConfig(**kw).key() for kw in (
        {}, {"num_neighbors": 5}, {"num_walks": 50}, {"max_hops": 2},
        {"restart_prob": 0.25}, {"seed": 1}, {"chunk_size": 7})}
    assert len(keys) == 7

  @pytest.mark.parametrize("kwargs", [{"num_neighbors": 0}, {"num_walks": -1},
                                      {"max_hops": 0}, {"restart_prob": 1.5},
                                      {"seed": -1}, {"chunk_size": 0}])
  def test_rejects_bad_values(self, kwargs):
    with pytest.raises(ValueError, match="NeighborhoodConfig"):
      nb.NeighborhoodConfig(**kwargs)


class TestWalkStatistics:

  @pytest.mark.parametrize("max_hops,restart_prob", [(1, 0.5), (3, 0.0), (3, 0.5), (3, 1.0)])
  def test_visit_distribution_matches_exact_expectation(self, max_hops, restart_prob):
    graph = _small_graph()
    # T = 5 = N - 1 keeps every reachable item, so the weights are the full
    # normalised visit distribution (60k visits per start item for H = 3).
    config = nb.NeighborhoodConfig(num_neighbors=5, num_walks=20000, max_hops=max_hops,
                                   restart_prob=restart_prob, seed=3)
    table = nb.compute_neighborhoods(graph, config, num_threads=1)
    for start in range(graph.num_items):
      exact = _exact_visit_distribution(graph, start, max_hops, restart_prob)
      sampled = _dense_row(table, start, graph.num_items)
      np.testing.assert_array_less(np.abs(sampled - exact), 0.01)
      # Exactly the reachable items are neighbors.
      assert set(np.flatnonzero(exact > 0)) == set(table.ids[start][table.ids[start] >= 0])

  def test_path_graph_one_hop(self):
    config = nb.NeighborhoodConfig(num_neighbors=3, num_walks=50, max_hops=1)
    table = nb.compute_neighborhoods(_path_graph(), config)
    # One traversal from 0 can only land on 0 (dropped) or 1.
    np.testing.assert_array_equal(table.ids[0], [1, -1, -1])
    np.testing.assert_array_equal(table.weights[0], [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(table.ids[3], [2, -1, -1])
    assert set(table.ids[1][:2]) == {0, 2} and table.ids[1][2] == -1
    assert set(table.ids[2][:2]) == {1, 3} and table.ids[2][2] == -1
    np.testing.assert_array_equal(table.counts, [1, 2, 2, 1, 0])

  def test_path_graph_hop_limit_bounds_reach(self):
    config = nb.NeighborhoodConfig(num_neighbors=4, num_walks=400, max_hops=2, restart_prob=0.0)
    table = nb.compute_neighborhoods(_path_graph(), config)
    # Two traversals reach at most distance 2: 0 sees {1, 2}, never 3; item 1
    # is visited more than item 2 (it lies on every path to 2).
    np.testing.assert_array_equal(table.ids[0], [1, 2, -1, -1])
    assert table.counts[0] == 2
    assert table.weights[0, 0] > table.weights[0, 1] > 0

  def test_isolated_item_and_padding(self):
    # Without restarts a walk from 0 reaches 3 with probability 1/2 * 1/4 * 1/4
    # = 1/32, so 1000 walks see it (P(miss) ~ 1e-14).
    config = nb.NeighborhoodConfig(num_neighbors=6, num_walks=1000, max_hops=3,
                                   restart_prob=0.0)
    table = nb.compute_neighborhoods(_path_graph(), config)
    np.testing.assert_array_equal(table.ids[4], [-1] * 6)
    np.testing.assert_array_equal(table.weights[4], [0.0] * 6)
    assert table.counts[4] == 0
    assert np.all(np.isfinite(table.weights))
    # Only 3 other items exist in item 0's component.
    assert table.counts[0] == 3 and np.all(table.ids[0, 3:] == -1)
    np.testing.assert_allclose(table.weights[:4].sum(1), 1.0, rtol=1e-6)
    table.validate(5)

  def test_graph_without_edges(self):
    table = nb.compute_neighborhoods(_graph(3, 2, []), nb.NeighborhoodConfig(num_neighbors=2))
    np.testing.assert_array_equal(table.ids, -np.ones((3, 2)))
    np.testing.assert_array_equal(table.counts, [0, 0, 0])

  def test_sorted_by_count_then_lower_index(self):
    # Few walks on a random graph produce many equal counts.
    graph = _random_graph()
    table = nb.compute_neighborhoods(graph, nb.NeighborhoodConfig(num_neighbors=8, num_walks=5))
    ids, w = table.ids, table.weights
    both = (ids[:, 1:] >= 0)
    strictly_heavier = w[:, :-1] > w[:, 1:]
    tie_lower_first = (w[:, :-1] == w[:, 1:]) & (ids[:, :-1] < ids[:, 1:])
    assert np.all(~both | strictly_heavier | tie_lower_first)
    assert np.any(both & tie_lower_first)  # the fixture really has ties
    assert not np.any(ids == np.arange(graph.num_items)[:, None])  # never itself

  def test_lexsort_fallback_gives_same_table(self, monkeypatch):
    graph = _random_graph()
    config = nb.NeighborhoodConfig(num_neighbors=8, num_walks=5)
    expected = nb.compute_neighborhoods(graph, config)
    monkeypatch.setattr(nb, "_COMPOSITE_KEY_LIMIT", 0)
    actual = nb.compute_neighborhoods(graph, config)
    np.testing.assert_array_equal(actual.ids, expected.ids)
    np.testing.assert_array_equal(actual.weights, expected.weights)


class TestDeterminism:

  def test_same_for_any_thread_count(self):
    graph = _random_graph()
    config = nb.NeighborhoodConfig(num_neighbors=5, num_walks=20, chunk_size=7, seed=11)
    tables = [nb.compute_neighborhoods(graph, config, num_threads=k) for k in (1, 2, 3)]
    for other in tables[1:]:
      np.testing.assert_array_equal(other.ids, tables[0].ids)
      np.testing.assert_array_equal(other.weights, tables[0].weights)
      np.testing.assert_array_equal(other.counts, tables[0].counts)

  def test_seed_changes_the_walks(self):
    graph = _random_graph()
    a = nb.compute_neighborhoods(graph, nb.NeighborhoodConfig(num_walks=20, seed=1))
    b = nb.compute_neighborhoods(graph, nb.NeighborhoodConfig(num_walks=20, seed=2))
    assert not np.array_equal(a.weights, b.weights)

  def test_progress_reports_every_chunk(self):
    calls = []
    nb.compute_neighborhoods(_random_graph(), nb.NeighborhoodConfig(chunk_size=25),
                             num_threads=2,
                             progress=lambda done, total: calls.append((done, total)))
    assert calls == [(0, 60), (25, 60), (50, 60), (60, 60)]


class TestNewItems:

  def test_new_item_on_existing_pivots_matches_that_item(self):
    graph = _random_graph(num_items=30, num_pivots=12, num_edges=90, seed=4)
    config = nb.NeighborhoodConfig(num_neighbors=30, num_walks=6000, seed=5)
    x = int(np.argmax(graph.item_degrees()))
    table = nb.compute_neighborhoods(graph, config)
    existing, existing_dist = table.ids[x], _dense_row(table, x, graph.num_items)
    new = nb.neighborhoods_for_new_items(graph, [graph.pivots_of(x)], config)
    assert new.ids.shape == (1, 30)
    new_dist = _dense_row(new, 0, graph.num_items)
    # x itself is visited by the new item's walks...
    assert x in new.ids[0]
    # ...and apart from x the visit distribution is x's own.
    without_x = new_dist.copy()
    without_x[x] = 0
    without_x /= without_x.sum()
    assert np.abs(without_x - existing_dist).sum() < 0.05
    assert set(new.ids[0][new.ids[0] >= 0]) == set(existing[existing >= 0]) | {x}

  def test_empty_and_csr_pivot_lists(self):
    graph = _path_graph()
    config = nb.NeighborhoodConfig(num_neighbors=2, num_walks=50, max_hops=1)
    csr = graph_lib.CSR(indptr=np.array([0, 1, 1]), indices=np.array([2], np.int32))
    table = nb.neighborhoods_for_new_items(graph, csr, config)
    # Pivot 2 holds items {2, 3}; the second new item has no pivots.
    assert set(table.ids[0]) == {2, 3}
    np.testing.assert_array_equal(table.ids[1], [-1, -1])
    np.testing.assert_array_equal(table.counts, [2, 0])

  def test_pivots_without_items_are_ignored(self):
    # Pivot 3 exists but holds no item; before the fix a walk picking it read
    # the previous pivot's row (items of pivot 2).
    graph = _graph(5, 4, [(0, 0), (1, 0), (1, 1), (2, 1), (2, 2), (3, 2)])
    config = nb.NeighborhoodConfig(num_neighbors=3, num_walks=50, max_hops=1)
    table = nb.neighborhoods_for_new_items(graph, [[3], [3, 0], [], [0]], config)
    np.testing.assert_array_equal(table.ids[0], [-1, -1, -1])
    np.testing.assert_array_equal(table.ids[2], [-1, -1, -1])
    assert set(table.ids[1][table.ids[1] >= 0]) == {0, 1}
    assert set(table.ids[3][table.ids[3] >= 0]) == {0, 1}
    np.testing.assert_array_equal(table.counts, [0, 2, 0, 2])

  def test_rejects_unknown_pivot(self):
    with pytest.raises(ValueError, match=r"pivot_lists\[1\] holds pivot 7"):
      nb.neighborhoods_for_new_items(_path_graph(), [[0], [1, 7]])


class TestStorage:

  def _saved_graph(self, tmp_path, graph=None, name="graph"):
    graph = graph or _random_graph()
    directory = os.path.join(tmp_path, name)
    graph_lib.save_graph(graph, directory)
    return graph, directory

  def test_round_trip_with_mmap(self, tmp_path):
    graph, directory = self._saved_graph(tmp_path)
    config = nb.NeighborhoodConfig(num_neighbors=4, num_walks=10)
    table = nb.compute_neighborhoods(graph, config)
    path = nb.save_neighborhoods(directory, table)
    assert path == os.path.join(directory, "neighborhoods", config.key())
    loaded = nb.load_neighborhoods(directory, config)
    assert isinstance(loaded.ids, np.memmap)
    np.testing.assert_array_equal(loaded.ids, table.ids)
    np.testing.assert_array_equal(loaded.weights, table.weights)
    np.testing.assert_array_equal(loaded.counts, table.counts)
    assert loaded.config == config
    # The graph's own checksums are unaffected by the sub-directory.
    graph_lib.load_graph(directory)

  def test_missing_config_is_not_found(self, tmp_path):
    graph, directory = self._saved_graph(tmp_path)
    nb.save_neighborhoods(directory, nb.compute_neighborhoods(graph, nb.NeighborhoodConfig(seed=1)))
    with pytest.raises(FileNotFoundError):
      nb.load_neighborhoods(directory, nb.NeighborhoodConfig(seed=2))

  def test_save_rejects_table_of_wrong_size(self, tmp_path):
    _, directory = self._saved_graph(tmp_path)
    table = nb.compute_neighborhoods(_path_graph(), nb.NeighborhoodConfig(num_walks=10))
    with pytest.raises(derived_tables.DerivedTableError, match="ids must be"):
      nb.save_neighborhoods(directory, table)

  def test_load_or_compute_caches_and_recomputes_stale(self, tmp_path):
    graph, directory = self._saved_graph(tmp_path)
    config = nb.NeighborhoodConfig(num_walks=10)
    calls = []
    first = nb.load_or_compute_neighborhoods(directory, graph, config,
                                             progress=lambda d, t: calls.append(d))
    assert calls  # computed
    calls.clear()
    second = nb.load_or_compute_neighborhoods(directory, None, config,
                                              progress=lambda d, t: calls.append(d))
    assert not calls  # loaded from the cache
    np.testing.assert_array_equal(first.ids, second.ids)
    # A table copied from another graph is replaced by a fresh one.
    other_graph, other = self._saved_graph(tmp_path, _random_graph(seed=9), name="other")
    shutil.copytree(os.path.join(directory, "neighborhoods"), os.path.join(other, "neighborhoods"))
    fresh = nb.load_or_compute_neighborhoods(other, None, config,
                                             progress=lambda d, t: calls.append(d))
    assert calls
    np.testing.assert_array_equal(fresh.ids, nb.compute_neighborhoods(other_graph, config).ids)


def _exact_pivot_visit_distribution(graph, items, max_hops, restart_prob):
  """Expected visits of one walk from a new pivot holding `items`, L1-normalised.

  A traversal from the pivot lands uniformly on `items` (u); otherwise the
  walk moves like an item walk, so y_1 = u, y_{t+1} = r u + (1 - r) y_t P.
  """
  n, m = graph.num_items, graph.num_pivots
  a = np.zeros((n, m))
  for i in range(n):
    a[i, graph.pivots_of(i)] = 1.0
  p = (a / np.maximum(a.sum(1), 1)[:, None]) @ (a / np.maximum(a.sum(0), 1)[None, :]).T
  u = np.bincount(np.asarray(items), minlength=n) / len(items)
  y, visits = u, np.zeros(n)
  for _ in range(max_hops):
    visits += y
    y = restart_prob * u + (1 - restart_prob) * (y @ p)
  return visits / visits.sum()


class TestPivotNeighborhoods:

  @pytest.mark.parametrize("max_hops,restart_prob", [(1, 0.5), (3, 0.5), (3, 0.0)])
  def test_graph_pivots_match_exact_expectation(self, max_hops, restart_prob):
    graph = _small_graph()
    config = nb.NeighborhoodConfig(num_neighbors=6, num_walks=20000, max_hops=max_hops,
                                   restart_prob=restart_prob, seed=5)
    table = nb.compute_pivot_neighborhoods(graph, config, num_threads=1)
    assert table.ids.shape == (graph.num_pivots, 6)
    for pivot in range(graph.num_pivots):
      exact = _exact_pivot_visit_distribution(graph, graph.items_of(pivot), max_hops,
                                              restart_prob)
      sampled = _dense_row(table, pivot, graph.num_items)
      np.testing.assert_array_less(np.abs(sampled - exact), 0.01)

  def test_one_hop_is_the_pivots_own_items(self):
    # One traversal from pivot 0 = {0, 1, 2} lands uniformly on its items.
    config = nb.NeighborhoodConfig(num_neighbors=4, num_walks=3000, max_hops=1)
    table = nb.compute_pivot_neighborhoods(_small_graph(), config)
    assert set(table.ids[0][:3]) == {0, 1, 2} and table.ids[0][3] == -1
    np.testing.assert_allclose(table.weights[0][:3], 1 / 3, atol=0.03)
    np.testing.assert_array_equal(table.counts, [3, 2, 3, 2])

  def test_item_lists_outside_the_graph(self):
    graph = _small_graph()
    config = nb.NeighborhoodConfig(num_neighbors=6, num_walks=20000, max_hops=2, seed=1)
    # A list with a repeated item weights it double; an empty list is padding.
    table = nb.compute_pivot_neighborhoods(graph, config, [[5, 5, 0], []])
    exact = _exact_pivot_visit_distribution(graph, [5, 5, 0], 2, 0.5)
    np.testing.assert_array_less(np.abs(_dense_row(table, 0, 6) - exact), 0.01)
    np.testing.assert_array_equal(table.ids[1], [-1] * 6)
    assert table.counts[1] == 0

  def test_rejects_unknown_item(self):
    with pytest.raises(ValueError, match=r"item_lists\[1\] holds item 6"):
      nb.compute_pivot_neighborhoods(_small_graph(), nb.NeighborhoodConfig(), [[0], [1, 6]])

  def test_same_for_any_thread_count(self):
    graph = _random_graph(num_items=300, num_pivots=200, num_edges=1200)
    config = nb.NeighborhoodConfig(num_walks=20, chunk_size=16)
    one = nb.compute_pivot_neighborhoods(graph, config, num_threads=1)
    two = nb.compute_pivot_neighborhoods(graph, config, num_threads=2)
    np.testing.assert_array_equal(one.ids, two.ids)
    np.testing.assert_array_equal(one.weights, two.weights)

  def test_storage_round_trip(self, tmp_path):
    graph = _random_graph()
    directory = os.path.join(tmp_path, "g")
    graph_lib.save_graph(graph, directory)
    config = nb.NeighborhoodConfig(num_neighbors=8, num_walks=10)
    table = nb.load_or_compute_pivot_neighborhoods(directory, graph, config)
    assert os.path.isdir(os.path.join(directory, nb.PIVOT_KIND, config.key()))
    assert table.ids.shape == (graph.num_pivots, 8)
    np.testing.assert_array_equal(
        table.ids, nb.compute_pivot_neighborhoods(graph, config).ids)
    # An item table cannot be stored as a pivot table (wrong row count).
    with pytest.raises(derived_tables.DerivedTableError, match="ids must be"):
      nb.save_neighborhoods(directory, nb.compute_neighborhoods(graph, config),
                            kind=nb.PIVOT_KIND)


class TestDegreeExponent:

  def test_key_and_json(self):
    config = nb.NeighborhoodConfig(degree_exponent=0.5)
    assert config.key() == "v1-T10-w100-h3-r0.5-s0-c1024-b0.5"
    assert config.to_json()["degree_exponent"] == 0.5
    with pytest.raises(ValueError, match="degree_exponent"):
      nb.NeighborhoodConfig(degree_exponent=-1.0)

  def test_importance_is_visits_over_degree_power(self):
    graph = _small_graph()
    beta = 1.0
    config = nb.NeighborhoodConfig(num_neighbors=5, num_walks=20000, max_hops=2,
                                   degree_exponent=beta, seed=2)
    table = nb.compute_neighborhoods(graph, config, num_threads=1)
    degree = graph.item_degrees().astype(np.float64)
    for start in range(graph.num_items):
      exact = _exact_visit_distribution(graph, start, 2, 0.5) / degree ** beta
      exact /= exact.sum()
      np.testing.assert_array_less(np.abs(_dense_row(table, start, 6) - exact), 0.01)
      # Rows are ordered by importance, not by raw visits.
      valid = table.ids[start] >= 0
      assert np.all(np.diff(table.weights[start][valid]) <= 0)

  def test_hub_drops_below_a_specific_neighbor(self):
    # Item 0 shares pivot 0 with item 1 (degree 1) and pivot 1 with hub 2,
    # which also sits on pivots 2..5 alone. Visits from 0 favour neither 1
    # nor 2 in the first traversal, but 2's degree (5) pushes it down.
    edges = [(0, 0), (1, 0), (0, 1), (2, 1)] + [(2, p) for p in range(2, 6)]
    graph = _graph(3, 6, edges)
    plain = nb.compute_neighborhoods(graph, nb.NeighborhoodConfig(
        num_neighbors=2, num_walks=4000, max_hops=1), num_threads=1)
    boosted = nb.compute_neighborhoods(graph, nb.NeighborhoodConfig(
        num_neighbors=2, num_walks=4000, max_hops=1, degree_exponent=0.5), num_threads=1)
    np.testing.assert_allclose(plain.weights[0], [0.5, 0.5], atol=0.05)
    assert boosted.ids[0][0] == 1
    # 1 / (1 + 1/sqrt(5)) = 0.691 of the weight goes to the specific neighbor.
    np.testing.assert_allclose(boosted.weights[0][0], 1 / (1 + 5 ** -0.5), atol=0.03)


def test_recompute_rows_walks_whole_chunks_with_their_own_seed():
  graph = _random_graph()
  config = nb.NeighborhoodConfig(num_neighbors=4, num_walks=10, chunk_size=16, seed=3)
  full = nb.compute_neighborhoods(graph, config, num_threads=1)
  # A table whose rows are all wrong: only the recomputed chunks get fixed.
  wrong = nb.Neighborhoods(ids=np.full_like(full.ids, -1), weights=np.zeros_like(full.weights),
                           counts=np.zeros_like(full.counts), config=config)
  table, recomputed = nb.recompute_rows(graph, wrong, np.array([3, 40]), num_threads=2)
  np.testing.assert_array_equal(recomputed, np.r_[0:16, 32:48])
  np.testing.assert_array_equal(table.ids[recomputed], full.ids[recomputed])
  np.testing.assert_array_equal(table.weights[recomputed], full.weights[recomputed])
  rest = np.setdiff1d(np.arange(60), recomputed)
  assert (table.ids[rest] == -1).all() and (table.counts[rest] == 0).all()


def test_recompute_rows_needs_every_appended_row():
  graph = _random_graph()
  config = nb.NeighborhoodConfig(num_neighbors=4, num_walks=10, chunk_size=16)
  short = nb.compute_neighborhoods(_random_graph(num_items=50), config, num_threads=1)
  with pytest.raises(ValueError, match="rows 50..59 are new"):
    nb.recompute_rows(graph, short, np.array([0]))
  table, recomputed = nb.recompute_rows(graph, short, np.arange(50, 60), num_threads=1)
  assert table.num_items == 60 and recomputed.tolist() == list(range(48, 60))
  with pytest.raises(ValueError, match="kind"):
    nb.recompute_rows(graph, short, np.arange(50, 60), kind="boards")
