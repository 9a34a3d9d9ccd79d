"""Tests for data.sequences: the leakage-free log protocol."""

from __future__ import annotations

import numpy as np
import pytest

from data import sequences
from data.errors import InputError
from pinsage_tf.graph import Split

T, V, X = int(Split.TRAIN), int(Split.VALIDATION), int(Split.TEST)


def test_unique_sorted_matches_definition():
  np.testing.assert_array_equal(sequences.unique_sorted(np.array([5, 1, 5, 3, 1])), [1, 3, 5])
  assert sequences.unique_sorted(np.zeros(0, np.int64)).size == 0


def test_time_cutoffs_are_lower_quantiles():
  # 10 timestamps 10..100: q=0.6 -> position 5.4 -> "lower" -> 60; q=0.8 -> 7.2 -> 80.
  cutoffs = sequences.time_cutoffs(np.arange(10, 101, 10), 0.6, 0.8)
  assert (cutoffs.validation, cutoffs.test) == (60, 80)
  np.testing.assert_array_equal(cutoffs.period(np.array([59, 60, 79, 80, 1000])),
                                [T, V, V, X, X])


def test_time_cutoffs_rejects_bad_quantiles():
  with pytest.raises(ValueError, match="val_quantile"):
    sequences.time_cutoffs(np.arange(3), 0.9, 0.5)


def _log():
  # Raw pivots 0, 1, 2 over items 0..3, sorted by (pivot, time):
  #   pivot 0: 1 T, 0 T, 2 T, 3 X
  #   pivot 1: 0 T, 2 T, 1 V, 3 X, 3 X   (item 3 twice in a row: no self-pair)
  #   pivot 2: 3 V, 0 X                   (no training edge: not a pivot)
  pivot = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2])
  item = np.array([1, 0, 2, 3, 0, 2, 1, 3, 3, 3, 0])
  period = np.array([T, T, T, X, T, T, V, X, X, V, X], np.int8)
  return pivot, item, period


def test_split_log_edges_pairs_and_heldout():
  pivot, item, period = _log()
  everything = np.ones(pivot.shape, bool)
  log = sequences.split_log(source="log", pivot=pivot, item=item, period=period,
                            is_edge=everything, is_engagement=everything, num_items=4)
  np.testing.assert_array_equal(log.pivot_rows, [0, 1])
  # Training edges: pivot 0 -> {1, 0, 2}, pivot 1 -> {0, 2}.
  assert sorted(zip(log.edge_pivots.tolist(), log.edge_items.tolist())) == [
      (0, 0), (0, 1), (0, 2), (1, 0), (1, 2)]
  # Consecutive pairs, split = the positive's period; (3, 3) dropped.
  assert list(zip(log.pairs.query.tolist(), log.pairs.positive.tolist(),
                  log.pairs.split.tolist())) == [
                      (1, 0, T), (0, 2, T), (2, 3, X),
                      (0, 2, T), (2, 1, V), (1, 3, X),
                      (3, 0, X)]
  # Each pair's group is the raw pivot of its log (pivot 2 has no edge, still a group).
  np.testing.assert_array_equal(log.pairs.group, [0, 0, 0, 1, 1, 1, 2])
  assert log.pairs.group.dtype == np.int32
  # Held-out rows: pivot 0 -> val {}, test {3}; pivot 1 -> val {1}, test {3}.
  np.testing.assert_array_equal(log.heldout.validation.indptr, [0, 0, 1])
  np.testing.assert_array_equal(log.heldout.validation.indices, [1])
  np.testing.assert_array_equal(log.heldout.test.indptr, [0, 1, 2])
  np.testing.assert_array_equal(log.heldout.test.indices, [3, 3])
  assert log.dropped_heldout == 2  # pivot 2's items 3 (V) and 0 (X)


def test_split_log_masks_and_train_items_excluded_from_heldout():
  # Pivot 0 rates item 1 in train and again later: the later one is not held out.
  pivot = np.array([0, 0, 0, 0])
  item = np.array([1, 0, 1, 2])
  period = np.array([T, T, V, X], np.int8)
  is_edge = np.array([True, False, True, True])      # item 0 may not become an edge
  is_engagement = np.array([True, True, True, True])
  log = sequences.split_log(source="log", pivot=pivot, item=item, period=period,
                            is_edge=is_edge, is_engagement=is_engagement, num_items=3)
  np.testing.assert_array_equal(np.sort(log.edge_items), [1])
  assert log.heldout.validation.nnz == 0
  np.testing.assert_array_equal(log.heldout.test.indices, [2])


@pytest.mark.parametrize("period,message", [
    ([V, V, X], "training graph would be empty"),
    ([T, T, X], "validation split would have no item pair"),
    ([T, V, V], "test split would have no item pair"),
])
def test_split_log_refuses_empty_parts(period, message):
  pivot, item = np.array([0, 0, 0]), np.array([0, 1, 2])
  everything = np.ones(3, bool)
  with pytest.raises(InputError, match=message):
    sequences.split_log(source="log", pivot=pivot, item=item, period=np.array(period, np.int8),
                        is_edge=everything, is_engagement=everything, num_items=3)


def test_split_log_needs_sorted_pivots():
  with pytest.raises(ValueError, match="sorted by pivot"):
    sequences.split_log(source="log", pivot=np.array([1, 0]), item=np.array([0, 1]),
                        period=np.zeros(2, np.int8), is_edge=np.ones(2, bool),
                        is_engagement=np.ones(2, bool), num_items=2)


def test_split_log_train_pair_window_adds_only_training_pairs():
  pivot, item, period = _log()
  everything = np.ones(pivot.shape, bool)
  kwargs = dict(source="log", pivot=pivot, item=item, period=period, is_edge=everything,
                is_engagement=everything, num_items=4)
  base = sequences.split_log(**kwargs)
  wide = sequences.split_log(**kwargs, train_pair_window=3)

  def triples(pairs):
    return sorted(zip(pairs.query.tolist(), pairs.positive.tolist(), pairs.split.tolist()))

  # Gap-2 and gap-3 pairs whose positive is in TRAIN, same pivot, distinct items:
  # pivot 0 (items 1 0 2 3 ...): (1, 2) at gap 2; pivot 1 (0 2 ...): none beyond gap 1.
  extra = sorted(set(triples(wide.pairs)) - set(triples(base.pairs)))
  assert all(split == T for _, _, split in extra)
  assert wide.pairs.count(V) == base.pairs.count(V)
  assert wide.pairs.count(X) == base.pairs.count(X)
  assert wide.pairs.count(T) > base.pairs.count(T)
  assert (1, 2, T) in extra
  with pytest.raises(ValueError, match="train_pair_window"):
    sequences.split_log(**kwargs, train_pair_window=0)
