"""Tests of the per-epoch training pairs (`pinsage_tf.positives`)."""

from __future__ import annotations

import numpy as np
import pytest

from pinsage_tf import graph as graph_lib
from pinsage_tf import positives


def _graph():
  # Pivot 0 = {0, 1, 2, 3, 4, 5} (heavy), pivot 1 = {1, 6}, pivot 2 = {7} (one item).
  edges = [(i, 0) for i in range(6)] + [(1, 1), (6, 1), (7, 2)]
  e = np.asarray(edges)
  pairs = graph_lib.ItemPairs(np.array([0, 1, 2], np.int32), np.array([1, 2, 3], np.int32),
                              np.array([0, 0, 1], np.int8))
  return graph_lib.build_graph(name="g", item_ids=[f"i{i}" for i in range(8)],
                               pivot_ids=["p0", "p1", "p2"], edge_items=e[:, 0],
                               edge_pivots=e[:, 1], pairs=pairs)


def _edge_set(pivot, item):
  return set(zip(pivot.tolist(), item.tolist()))


def test_config_validation():
  with pytest.raises(ValueError, match="item_pairs"):
    positives.PositivesConfig(item_pairs="random")
  with pytest.raises(ValueError, match="max_pairs_per_pivot"):
    positives.PositivesConfig(max_pairs_per_pivot=-1)


def test_graph_pairs_and_pivot_pairs_cover_every_edge():
  graph = _graph()
  pairs = positives.epoch_pairs(graph, positives.PositivesConfig(pivot_pairs=True), epoch=1)
  np.testing.assert_array_equal(pairs.query, [0, 1])  # TRAIN pairs only
  np.testing.assert_array_equal(pairs.positive, [1, 2])
  edges = {(p, i) for p in range(3) for i in graph.items_of(p).tolist()}
  assert _edge_set(pairs.pivot, pairs.pivot_positive) == edges
  assert pairs.pivot.dtype == np.int32


def test_no_pivot_pairs_without_the_objective():
  pairs = positives.epoch_pairs(_graph(), positives.PositivesConfig(), epoch=1)
  assert pairs.pivot.shape == (0,) and pairs.pivot_positive.shape == (0,)


def test_cap_limits_each_pivot_and_rotates_over_epochs():
  graph = _graph()
  config = positives.PositivesConfig(pivot_pairs=True, max_pairs_per_pivot=2, seed=3)
  seen = set()
  for epoch in range(1, 30):
    pairs = positives.epoch_pairs(graph, config, epoch)
    counts = np.bincount(pairs.pivot, minlength=3)
    # Pivot 0 has 6 edges, capped at 2; the others keep theirs.
    np.testing.assert_array_equal(counts, [2, 2, 1])
    edges = _edge_set(pairs.pivot, pairs.pivot_positive)
    assert len(edges) == 5  # a subset without repeats
    seen |= edges
  # Over epochs every edge of the heavy pivot appears (P(miss one) ~ 29 * (2/3)^29).
  assert {(0, i) for i in range(6)} <= seen


def test_same_epoch_same_pairs_other_epoch_other_pairs():
  graph = _graph()
  config = positives.PositivesConfig(item_pairs="walks", pivot_pairs=True,
                                     max_pairs_per_pivot=3, seed=1)
  a, b = positives.epoch_pairs(graph, config, 4), positives.epoch_pairs(graph, config, 4)
  np.testing.assert_array_equal(a.query, b.query)
  np.testing.assert_array_equal(a.positive, b.positive)
  c = positives.epoch_pairs(graph, config, 5)
  assert (_edge_set(a.query, a.positive) != _edge_set(c.query, c.positive)
          or _edge_set(a.pivot, a.pivot_positive) != _edge_set(c.pivot, c.pivot_positive))


def test_walk_pairs_share_a_pivot_and_skip_single_item_pivots():
  graph = _graph()
  pairs = positives.epoch_pairs(graph, positives.PositivesConfig(item_pairs="walks"), epoch=1)
  # Every edge of pivots with >= 2 items is a query once: 6 + 2 = 8 pairs;
  # item 7 (alone on pivot 2) is never a query.
  assert pairs.query.shape == (8,)
  assert 7 not in pairs.query and 7 not in pairs.positive
  assert np.all(pairs.query != pairs.positive)
  for q, p in zip(pairs.query, pairs.positive):
    assert set(graph.pivots_of(q)) & set(graph.pivots_of(p))
  # Item 6's only co-pivot item is 1.
  assert pairs.positive[pairs.query == 6].tolist() == [1]


def test_walk_positive_is_uniform_over_the_other_items():
  graph = _graph()
  pivot = np.zeros(60000, np.int64)
  item = np.full(60000, 2, np.int64)
  query, positive = positives.walk_item_pairs(graph, pivot, item, seed=0, epoch=1)
  assert np.all(query == 2)
  counts = np.bincount(positive, minlength=8)
  # The 5 other items of pivot 0 get 1/5 each; item 2 itself never.
  assert counts[2] == 0 and counts[6:].sum() == 0
  np.testing.assert_allclose(counts[[0, 1, 3, 4, 5]] / 60000, 0.2, atol=0.01)
