"""Tests of blocked exact top-K and ranks against naive full sorts."""

from __future__ import annotations

import numpy as np
import pytest

from pinsage_tf import retrieval_exact as rx
from pinsage_tf.graph import CSR


def _naive_top_k(scores, k):
  """Full sort by (-score, index), -inf entries dropped, padded with -1."""
  out = np.full((scores.shape[0], k), -1)
  for r, row in enumerate(scores):
    order = np.lexsort((np.arange(row.shape[0]), -row))
    order = order[np.isfinite(row[order])][:k]
    out[r, :order.shape[0]] = order
  return out


def _random_exclusions(rng, q, n, max_len):
  return [rng.choice(n, size=rng.integers(0, max_len + 1), replace=False) for _ in range(q)]


@pytest.mark.parametrize("block_size", [1, 7, None])
def test_top_k_matches_full_sort(block_size):
  rng = np.random.default_rng(0)
  queries = rng.normal(size=(23, 5)).astype(np.float32)
  corpus = rng.normal(size=(101, 5)).astype(np.float32)
  excl = _random_exclusions(rng, 23, 101, 6)
  idx, val = rx.top_k(queries, corpus, 10, exclude=excl, block_size=block_size)
  full = queries @ corpus.T
  for r, e in enumerate(excl):
    full[r, e] = -np.inf
  np.testing.assert_array_equal(idx, _naive_top_k(full, 10))
  np.testing.assert_allclose(val, np.take_along_axis(full, idx, 1), rtol=1e-6)
  assert idx.dtype == np.int32 and val.dtype == np.float32
  for r, e in enumerate(excl):
    assert not np.isin(idx[r], e).any()


def test_top_k_ties_broken_by_index_and_padding():
  # Integer scores tie a lot; the order must be (-score, index) exactly.
  rng = np.random.default_rng(1)
  scores = rng.integers(0, 4, size=(30, 50)).astype(np.float32)
  scores[0, 5:] = -np.inf  # only 5 candidates in row 0
  idx, val = rx.top_k_of_scores(scores.copy(), 12)
  np.testing.assert_array_equal(idx, _naive_top_k(scores, 12))
  assert (idx[0, 5:] == -1).all() and np.isneginf(val[0, 5:]).all()
  # Row with 4 tied maxima at 3, 9, 20, 41 and k=2: the two lowest indices win.
  row = np.zeros((1, 50), np.float32)
  row[0, [41, 3, 20, 9]] = 1.0
  np.testing.assert_array_equal(rx.top_k_of_scores(row, 2)[0], [[3, 9]])


@pytest.mark.parametrize("k", [1, 10, 40])
def test_top_k_of_wide_blocks_matches_full_sort(k):
  """Rows wide enough for the block-maxima candidates, with ties, -inf and an all-tie row."""
  rng = np.random.default_rng(2)
  scores = rng.integers(0, 50, size=(40, 1000)).astype(np.float32)  # ties everywhere
  scores[1] = rng.normal(size=1000)  # no ties
  scores[2] = 7.0  # every item ties: the candidate bound falls back to the full partition
  scores[3, 4:] = -np.inf  # 4 candidates only: padded with -1 / -inf
  scores[4, ::3] = -np.inf
  scores[5, 999] = 100.0  # the maximum in the columns after the last full block
  idx, val = rx.top_k_of_scores(scores.copy(), k)
  np.testing.assert_array_equal(idx, _naive_top_k(scores, k))
  np.testing.assert_array_equal(val[idx >= 0], np.take_along_axis(scores, idx, 1)[idx >= 0])
  assert np.isneginf(val[idx < 0]).all() and idx[5, 0] == 999
  assert (idx[2] == np.arange(k)).all()  # the lowest indices win a tie
  scores[6, 500] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    rx.top_k_of_scores(scores, k)


def test_top_k_k_larger_than_corpus():
  idx, val = rx.top_k(np.eye(2, dtype=np.float32), np.eye(2, dtype=np.float32), 4)
  np.testing.assert_array_equal(idx, [[0, 1, -1, -1], [1, 0, -1, -1]])


def test_exclusion_formats_agree():
  rng = np.random.default_rng(2)
  q = rng.normal(size=(4, 3)).astype(np.float32)
  c = rng.normal(size=(9, 3)).astype(np.float32)
  one_each = np.array([2, -1, 0, 8])
  as_lists = [[2], [], [0], [8]]
  as_csr = CSR(np.array([0, 1, 1, 2, 3]), np.array([2, 0, 8], np.int32))
  results = [rx.top_k(q, c, 9, exclude=e)[0] for e in (one_each, as_lists, as_csr)]
  for r in results[1:]:
    np.testing.assert_array_equal(results[0], r)
  assert (results[0][0] != 2).all() and (results[0][3] != 8).all()
  assert (results[0][1] >= 0).all()  # query 1 excludes nothing: all 9 items
  with pytest.raises(ValueError, match="rows"):
    rx.top_k(q, c, 3, exclude=as_lists[:3])
  with pytest.raises(ValueError, match=r"\[0, 9\)"):
    rx.top_k(q, c, 3, exclude=[[9], [], [], []])


def test_rank_of_matches_naive_count():
  rng = np.random.default_rng(4)
  queries = rng.normal(size=(40, 6)).astype(np.float32)
  corpus = rng.normal(size=(70, 6)).astype(np.float32)
  targets = rng.integers(0, 70, 40)
  excl = [np.setdiff1d(rng.choice(70, 5, replace=False), [t]) for t in targets]
  ranks = rx.rank_of(queries, corpus, targets, exclude=excl, block_size=6)
  full = queries @ corpus.T
  for r in range(40):
    full[r, excl[r]] = -np.inf
    expected = np.count_nonzero(full[r] > full[r, targets[r]]) + 1
    assert ranks[r] == expected
    # The rank is the target's position in the full (-score, index) sort when
    # there are no ties.
    assert list(_naive_top_k(full[r:r + 1], 70)[0]).index(targets[r]) + 1 == expected


def test_rank_counts_with_ties_and_policies():
  # Query scores: item 0 -> 2, items 1, 2, 3 -> 1, item 4 -> 0; target = 2.
  corpus = np.array([[2.0], [1.0], [1.0], [1.0], [0.0]], np.float32)
  queries = np.array([[1.0]], np.float32)
  greater, equal = rx.rank_counts(queries, corpus, np.array([2]))
  assert greater.tolist() == [1] and equal.tolist() == [2]
  assert rx.rank_of(queries, corpus, np.array([2])).tolist() == [2]
  assert rx.rank_of(queries, corpus, np.array([2]), ties="pessimistic").tolist() == [4]
  assert rx.rank_of(queries, corpus, np.array([2]), ties="expected").tolist() == [3.0]
  # Excluding item 0 (the only higher one) and item 1 (a tie).
  greater, equal = rx.rank_counts(queries, corpus, np.array([2]), exclude=[[0, 1]])
  assert greater.tolist() == [0] and equal.tolist() == [1]


def test_rank_counts_rejects_excluded_target():
  q = np.ones((1, 2), np.float32)
  c = np.eye(2, dtype=np.float32)
  with pytest.raises(ValueError, match="must not be masked"):
    rx.rank_counts(q, c, np.array([1]), exclude=[[1]])


def test_take_rows_and_concat_rows():
  csr = CSR(np.array([0, 2, 2, 5]), np.array([4, 1, 0, 3, 2], np.int32))
  sub = rx.take_rows(csr, np.array([2, 0, 1]))
  assert sub.indptr.tolist() == [0, 3, 5, 5]
  assert sub.indices.tolist() == [0, 3, 2, 4, 1]
  both = rx.concat_rows(csr, CSR(np.array([0, 1, 2, 2]), np.array([7, 8], np.int32)))
  assert [both.row(r).tolist() for r in range(3)] == [[4, 1, 7], [8], [0, 3, 2]]


def test_rows_per_block_bounds_memory():
  assert rx.rows_per_block(1000, max_block_elements=10_000) == 10
  assert rx.rows_per_block(10**7, max_block_elements=10_000) == 1  # never zero
  assert rx.rows_per_block(1000, block_size=3) == 3
  with pytest.raises(ValueError):
    rx.rows_per_block(1000, block_size=0)


@pytest.mark.parametrize("block_size,tile_columns", [(1, 1), (4, 3), (7, 16), (None, 50)])
def test_tiles_equal_one_block(block_size, tile_columns):
  # Every tiling gives the lists and counts of one [Q, N] block, including
  # ties (duplicated corpus rows, integer scores) across tile boundaries.
  rng = np.random.default_rng(5)
  corpus = rng.integers(-2, 3, size=(37, 3)).astype(np.float32)
  corpus[10:14] = corpus[20]  # 5 identical rows
  queries = rng.integers(-2, 3, size=(19, 3)).astype(np.float32)
  targets = rng.integers(0, 37, 19)
  targets[:3] = 20
  excl = [np.setdiff1d(rng.choice(37, 4, replace=False), [t]) for t in targets]
  full = queries @ corpus.T
  for r, e in enumerate(excl):
    full[r, e] = -np.inf
  idx, val = rx.top_k(queries, corpus, 12, exclude=excl, block_size=block_size,
                      tile_columns=tile_columns)
  np.testing.assert_array_equal(idx, _naive_top_k(full, 12))
  np.testing.assert_array_equal(val, np.take_along_axis(full, np.maximum(idx, 0), 1))
  greater, equal = rx.rank_counts(queries, corpus, targets, exclude=excl, block_size=block_size,
                                  tile_columns=tile_columns)
  want = full[np.arange(19), targets]
  np.testing.assert_array_equal(greater, np.sum(full > want[:, None], axis=1))
  np.testing.assert_array_equal(equal, np.sum(full == want[:, None], axis=1) - 1)
  assert equal[:3].min() >= 4  # the target's four duplicates (unless excluded) tie with it


def test_rank_counts_progress_and_bad_target_scores():
  corpus = np.eye(3, dtype=np.float32)
  done = []
  rx.rank_counts(np.ones((5, 3), np.float32), corpus, np.array([0, 1, 2, 0, 1]), block_size=2,
                 progress=done.append)
  assert done == [2, 4, 5]
  with pytest.raises(ValueError, match="NaN/inf"):
    rx.rank_counts(np.full((1, 3), np.nan, np.float32), corpus, np.array([0]))
  with pytest.raises(ValueError, match="tile_columns"):
    rx.top_k(np.ones((1, 3), np.float32), corpus, 2, tile_columns=0)


@pytest.mark.parametrize("levels", [None, 50, 3])
def test_wide_rows_match_the_full_sort(levels):
  # 6,011 columns: the group-maxima path (groups of 128, a ragged tail) for
  # distinct or moderately tied scores; heavy ties (3 levels) and rows with
  # fewer than k finite scores take the partition path. Same lists either way.
  rng = np.random.default_rng(7)
  scores = rng.normal(size=(40, 6011)).astype(np.float32)
  if levels is not None:
    scores = np.floor(scores * levels / 4).astype(np.float32)
  scores[3, :] = -np.inf
  scores[3, [5, 6010]] = 1.0  # two finite scores for k = 10: padded
  scores[4, 6000:] = 99.0  # the best items all in the tail
  scores[5, rng.choice(6011, 4500, replace=False)] = -np.inf
  idx, val = rx.top_k_of_scores(scores.copy(), 10)
  np.testing.assert_array_equal(idx, _naive_top_k(scores, 10))
  np.testing.assert_array_equal(val, np.where(idx >= 0, np.take_along_axis(
      scores, np.maximum(idx, 0), 1), -np.inf))
  assert idx[3].tolist() == [5, 6010] + [-1] * 8
  assert idx[4].tolist() == list(range(6000, 6010))
  scores[7, 100] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    rx.top_k_of_scores(scores, 10)


def test_nan_is_an_error_on_either_path():
  # Narrow rows take the partition, wide rows the group maxima; a NaN that is
  # not the k-th value must still be reported.
  for width in (50, 6000):
    scores = np.arange(2 * width, dtype=np.float32).reshape(2, width)
    scores[1, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
      rx.top_k_of_scores(scores, 5)
