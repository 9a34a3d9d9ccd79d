"""Hand-computed tests of the ranking metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pinsage_tf import metrics
from pinsage_tf.graph import CSR


def _csr(rows):
  indptr = np.zeros(len(rows) + 1, np.int64)
  np.cumsum([len(r) for r in rows], out=indptr[1:])
  indices = np.concatenate([np.asarray(r, np.int32) for r in rows]) if rows else np.zeros(0, np.int32)
  return CSR(indptr, indices.astype(np.int32))


# Four pairs whose positives rank 1, 3, 120 and 600.
RANKS = np.array([1, 3, 120, 600])


def test_hit_rate_by_hand():
  # <=10: ranks 1 and 3 -> 2/4; <=100: same; <=500: also 120 -> 3/4.
  assert metrics.hit_rate(RANKS, 10) == 0.5
  assert metrics.hit_rate(RANKS, 100) == 0.5
  assert metrics.hit_rate(RANKS, 500) == 0.75
  assert metrics.hit_rate(RANKS, 600) == 1.0


def test_mrr_by_hand():
  # (1 + 1/3 + 1/120 + 1/600) / 4 = 1.3433333 / 4.
  assert metrics.mrr(RANKS) == pytest.approx((1 + 1 / 3 + 1 / 120 + 1 / 600) / 4)
  assert metrics.mrr(RANKS) == pytest.approx(0.3358333, abs=1e-6)


def test_scaled_mrr_by_hand():
  # ceil(R / 100) = 1, 1, 2, 6 -> (1 + 1 + 1/2 + 1/6) / 4 = 0.6666667.
  assert metrics.scaled_mrr(RANKS, 100) == pytest.approx(2.6666667 / 4)
  # Scale 1 is the plain MRR.
  assert metrics.scaled_mrr(RANKS, 1) == pytest.approx(metrics.mrr(RANKS))


def test_rank_validation():
  with pytest.raises(ValueError, match="1-based"):
    metrics.mrr(np.array([0, 1]))
  with pytest.raises(ValueError, match="scale"):
    metrics.scaled_mrr(RANKS, 0)


def test_tie_policies_by_hand():
  # 2 items score higher than the positive, 3 others tie with it: the
  # positive sits at one of positions 3, 4, 5, 6.
  g, e = np.array([2]), np.array([3])
  opt = metrics.item_metrics(g, e, ks=(4,), mrr_scale=2, ties="optimistic")
  pes = metrics.item_metrics(g, e, ks=(4,), mrr_scale=2, ties="pessimistic")
  exp = metrics.item_metrics(g, e, ks=(4,), mrr_scale=2, ties="expected")
  assert opt["hit_rate@4"] == 1.0 and opt["mrr"] == pytest.approx(1 / 3)
  assert pes["hit_rate@4"] == 0.0 and pes["mrr"] == pytest.approx(1 / 6)
  # Positions 3 and 4 of the 4 are within the top 4.
  assert exp["hit_rate@4"] == pytest.approx(0.5)
  # (1/3 + 1/4 + 1/5 + 1/6) / 4 = 0.95 / 4.
  assert exp["mrr"] == pytest.approx(0.2375)
  # ceil(p / 2) = 2, 2, 3, 3 -> (1/2 + 1/2 + 1/3 + 1/3) / 4.
  assert exp["scaled_mrr"] == pytest.approx((1 + 2 / 3) / 4)
  assert exp["mean_rank"] == pytest.approx(4.5)
  assert opt["scaled_mrr"] == pytest.approx(0.5)  # ceil(3 / 2) = 2


def test_expected_ties_match_enumeration():
  rng = np.random.default_rng(3)
  g = rng.integers(0, 300, 50)
  e = rng.integers(0, 300, 50)
  e[:10] = 0
  got = metrics.item_metric_values(g, e, ks=(10, 100, 250), mrr_scale=7, ties="expected")
  for i in range(50):
    positions = np.arange(g[i] + 1, g[i] + e[i] + 2, dtype=np.float64)
    assert got["mrr"][i] == pytest.approx(np.mean(1 / positions))
    assert got["scaled_mrr"][i] == pytest.approx(np.mean(1 / np.ceil(positions / 7)))
    for k in (10, 100, 250):
      assert got[f"hit_rate@{k}"][i] == pytest.approx(np.mean(positions <= k))


def test_no_ties_all_policies_agree():
  g = np.array([0, 5, 99, 700])
  e = np.zeros(4, np.int64)
  a = metrics.item_metrics(g, e, ties="optimistic")
  b = metrics.item_metrics(g, e, ties="expected")
  for key in a:
    assert a[key] == pytest.approx(b[key])
  # Ranks 1, 6, 100, 701: hit@10 = 2/4, hit@100 = 3/4, hit@500 = 3/4.
  assert a["hit_rate@10"] == 0.5 and a["hit_rate@100"] == 0.75 and a["hit_rate@500"] == 0.75


def test_user_metrics_by_hand():
  top = np.array([
      [3, 7, 1, 9, 4],     # user A: relevant {7, 4, 8}: hits at positions 2 and 5
      [5, 6, 0, 2, -1],    # user B: relevant {5}: hit at position 1, list padded
      [1, 2, 3, 4, 6],     # user C: relevant {0, 8}: no hit
  ])
  relevant = _csr([[7, 4, 8], [5], [0, 8]])
  m = metrics.user_metrics(top, relevant, ks=(5, 2))
  # Recall@5: A 2/3, B 1/1, C 0 -> 0.5555556.
  assert m["recall@5"] == pytest.approx((2 / 3 + 1 + 0) / 3)
  # Precision@5: 2/5, 1/5, 0.
  assert m["precision@5"] == pytest.approx((0.4 + 0.2) / 3)
  # NDCG@5 A: DCG = 1/log2(3) + 1/log2(6) = 1.0177826; IDCG over min(3, 5) = 3
  # positions = 1 + 1/log2(3) + 1/2 = 2.1309298; 0.4776237.  B: 1/1.  C: 0.
  ndcg_a = (1 / math.log2(3) + 1 / math.log2(6)) / (1 + 1 / math.log2(3) + 0.5)
  assert ndcg_a == pytest.approx(0.4776237, abs=1e-6)
  assert m["ndcg@5"] == pytest.approx((ndcg_a + 1 + 0) / 3)
  # @2: A hit at 2 -> recall 1/3, NDCG = (1/log2 3) / (1 + 1/log2 3) = 0.3868528.
  assert m["recall@2"] == pytest.approx((1 / 3 + 1 + 0) / 3)
  assert m["ndcg@2"] == pytest.approx((0.3868528 + 1 + 0) / 3, abs=1e-6)


def _lightgcn_reference(top, relevant_lists, k):
  """LightGCN's `utils.RecallPrecision_ATk` and `NDCGatK_r`, restated (sums / users)."""
  r = np.array([[1.0 if x in set(rel) else 0.0 for x in row[:k]]
                for row, rel in zip(top, relevant_lists)])
  recall = np.sum(r.sum(1) / np.array([len(t) for t in relevant_lists]))
  test_matrix = np.zeros((len(r), k))
  for i, items in enumerate(relevant_lists):
    test_matrix[i, :min(k, len(items))] = 1
  idcg = np.sum(test_matrix / np.log2(np.arange(2, k + 2)), axis=1)
  dcg = np.sum(r / np.log2(np.arange(2, k + 2)), axis=1)
  return recall / len(r), np.sum(dcg / idcg) / len(r)


def test_user_metrics_match_lightgcn_reference():
  rng = np.random.default_rng(0)
  n, users, k = 60, 40, 20
  top = np.stack([rng.permutation(n)[:k] for _ in range(users)])
  rel = [rng.choice(n, size=rng.integers(1, 30), replace=False) for _ in range(users)]
  m = metrics.user_metrics(top, _csr(rel), ks=(k,))
  recall, ndcg = _lightgcn_reference(top, rel, k)
  assert m[f"recall@{k}"] == pytest.approx(recall)
  assert m[f"ndcg@{k}"] == pytest.approx(ndcg)
  assert 0 < m[f"ndcg@{k}"] < 1


def test_user_metrics_reject_users_without_relevant_items():
  with pytest.raises(ValueError, match=">= 1 relevant"):
    metrics.user_metrics(np.array([[1, 2]]), _csr([[]]), ks=(2,))
  with pytest.raises(ValueError, match="exceeds"):
    metrics.user_metrics(np.array([[1, 2]]), _csr([[1]]), ks=(3,))


def test_hits_matrix_ignores_padding():
  hits = metrics.hits_matrix(np.array([[-1, 4, 2]]), _csr([[2, 3]]))
  np.testing.assert_array_equal(hits, [[False, False, True]])
