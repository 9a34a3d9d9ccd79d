"""Ranking metrics of the two offline protocols, as defined by the papers.

Item-to-item protocol (PinSage, Ying et al. KDD'18, Sec. 4.2). For every
held-out (query q, positive i) pair all items except q are ranked by their
similarity to q, and `R` is the 1-based rank of i:

    hit_rate@K   = mean over pairs of [R <= K]          (paper: K = 500; we
                                                          report 10/50/100/500)
    MRR          = mean over pairs of 1 / R
    scaled MRR   = mean over pairs of 1 / ceil(R / s)   (the paper's "MRR",
                                                          s = 100 for ~5M items)

The paper's scale `s` makes a rank difference matter only beyond `s` items;
s = 100 was chosen for a 5M-item corpus. We keep 100 as the default and report
it in the output; pass a smaller `s` (e.g. s ~ 100 * N / 5e6, at least 1) to
keep the same *relative* resolution on a small corpus.

Ties. A rank is defined by `greater` (items scored strictly higher than the
positive) and `equal` (other items with exactly the positive's score; masked
items never count). `ties` selects how the positive is placed among its ties:

* "optimistic":  R = greater + 1 (the positive wins every tie).
* "pessimistic": R = greater + equal + 1.
* "expected":    the exact expectation of each metric when ties are broken
  uniformly at random, i.e. R uniform on {greater+1, ..., greater+equal+1}.
  Continuous learned scores almost never tie, so all three agree for them;
  count-based baselines (popularity, co-occurrence, random-walk visit counts)
  tie a lot (e.g. every never-visited item scores 0), and "optimistic" would
  then credit a positive with score 0 with the best of thousands of ties.
  "expected" is the evaluator's default.

User protocol (NGCF, Wang et al. SIGIR'19; LightGCN, He et al. SIGIR'20, as in
LightGCN's reference code `utils.RecallPrecision_ATk` / `NDCGatK_r`). For each
test user u with test items T_u (|T_u| >= 1), all items are scored, u's
training items are masked, and the top-K list is taken (K = 20 in the papers):

    Recall@K    = |top-K ∩ T_u| / |T_u|
    Precision@K = |top-K ∩ T_u| / K
    NDCG@K      = DCG / IDCG,  DCG  = sum over hit positions p (1-based) of
                                      1 / log2(p + 1),
                               IDCG = sum_{p=1}^{min(|T_u|, K)} 1 / log2(p + 1)

each averaged over test users. (The first NGCF release normalised DCG by the
ideal ordering of the *retrieved* hits only; LightGCN's code and this module
use the standard IDCG above.)

All functions are pure numpy; inputs are the per-pair / per-user quantities,
so the same code scores learned embeddings and every baseline.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from pinsage_tf.graph import CSR

TIES = ("optimistic", "pessimistic", "expected")
DEFAULT_ITEM_KS = (10, 50, 100, 500)
DEFAULT_USER_KS = (20,)
DEFAULT_MRR_SCALE = 100.0


def _ranks(ranks: np.ndarray) -> np.ndarray:
  ranks = np.asarray(ranks, dtype=np.float64)
  if ranks.ndim != 1:
    raise ValueError(f"ranks must be 1-D [P], got shape {ranks.shape}.")
  if ranks.size and ranks.min() < 1:
    raise ValueError("ranks are 1-based: every rank must be >= 1.")
  return ranks


def hit_rate(ranks: np.ndarray, k: int) -> float:
  """Fraction of pairs whose positive is ranked within the top `k`.

  Args:
    ranks: `[P]` 1-based ranks of the positives.
    k: cutoff, >= 1.
  """
  ranks = _ranks(ranks)
  return float(np.mean(ranks <= k)) if ranks.size else 0.0


def mrr(ranks: np.ndarray) -> float:
  """Mean reciprocal rank: mean of `1 / R` over `[P]` 1-based ranks."""
  ranks = _ranks(ranks)
  return float(np.mean(1.0 / ranks)) if ranks.size else 0.0


def scaled_mrr(ranks: np.ndarray, scale: float = DEFAULT_MRR_SCALE) -> float:
  """The PinSage paper's MRR: mean of `1 / ceil(R / scale)` over `[P]` ranks."""
  if scale <= 0:
    raise ValueError(f"scale must be > 0, got {scale}.")
  ranks = _ranks(ranks)
  return float(np.mean(1.0 / np.ceil(ranks / scale))) if ranks.size else 0.0


def ranks_from_counts(greater: np.ndarray, equal: np.ndarray,
                      ties: str = "optimistic") -> np.ndarray:
  """1-based ranks `[P]` from rank counts under a tie policy.

  "expected" returns the mean rank `greater + equal / 2 + 1` (float); the
  metrics under "expected" use `item_metrics`, which averages each metric
  over the tied positions rather than evaluating it at the mean rank.
  """
  greater = np.asarray(greater, dtype=np.int64)
  equal = np.asarray(equal, dtype=np.int64)
  if ties == "optimistic":
    return greater + 1
  if ties == "pessimistic":
    return greater + equal + 1
  if ties == "expected":
    return greater + equal / 2.0 + 1.0
  raise ValueError(f"ties must be one of {TIES}, got {ties!r}.")


def _cumulative(values_of_position, n: int) -> np.ndarray:
  """`c[m] = sum_{p=1}^{m} f(p)` for m in [0, n], float64 `[n + 1]`."""
  c = np.zeros(n + 1, dtype=np.float64)
  if n:
    np.cumsum(values_of_position(np.arange(1, n + 1, dtype=np.float64)), out=c[1:])
  return c


def item_metric_values(
    greater: np.ndarray,
    equal: np.ndarray,
    ks: Sequence[int] = DEFAULT_ITEM_KS,
    mrr_scale: float = DEFAULT_MRR_SCALE,
    ties: str = "expected",
) -> dict[str, np.ndarray]:
  """Per-pair metric values `[P]` of the item-to-item protocol.

  Args:
    greater: int `[P]` number of (unmasked) items scored strictly higher than
      the positive.
    equal: int `[P]` number of other (unmasked) items scored exactly like the
      positive.
    ks: hit-rate cutoffs.
    mrr_scale: the scale `s` of the scaled MRR.
    ties: "optimistic", "pessimistic" or "expected" (see module docstring).

  Returns:
    {"hit_rate@K": [P] for K in ks, "mrr": [P], "scaled_mrr": [P],
     "rank": [P] (mean rank under "expected")}, float64.
  """
  if ties not in TIES:
    raise ValueError(f"ties must be one of {TIES}, got {ties!r}.")
  if mrr_scale <= 0:
    raise ValueError(f"mrr_scale must be > 0, got {mrr_scale}.")
  greater = np.asarray(greater, dtype=np.int64)
  equal = np.asarray(equal, dtype=np.int64)
  if greater.shape != equal.shape or greater.ndim != 1:
    raise ValueError(f"greater {greater.shape} and equal {equal.shape} must be equal 1-D.")
  if greater.size and (greater.min() < 0 or equal.min() < 0):
    raise ValueError("greater and equal are counts and must be >= 0.")
  out: dict[str, np.ndarray] = {}
  if ties != "expected":
    ranks = ranks_from_counts(greater, equal, ties).astype(np.float64)
    for k in ks:
      out[f"hit_rate@{k}"] = (ranks <= k).astype(np.float64)
    out["mrr"] = 1.0 / ranks
    out["scaled_mrr"] = 1.0 / np.ceil(ranks / mrr_scale)
    out["rank"] = ranks
    return out
  # R is uniform on {g+1, ..., g+e+1} (e+1 positions): every metric is the
  # average of its value over those positions, computed with prefix sums.
  span = equal + 1.0
  for k in ks:
    out[f"hit_rate@{k}"] = np.clip(k - greater, 0, equal + 1) / span
  last = int((greater + equal).max()) + 1 if greater.size else 0
  harmonic = _cumulative(lambda p: 1.0 / p, last)
  scaled = _cumulative(lambda p: 1.0 / np.ceil(p / mrr_scale), last)
  out["mrr"] = (harmonic[greater + equal + 1] - harmonic[greater]) / span
  out["scaled_mrr"] = (scaled[greater + equal + 1] - scaled[greater]) / span
  out["rank"] = greater + equal / 2.0 + 1.0
  return out


def item_metrics(
    greater: np.ndarray,
    equal: np.ndarray,
    ks: Sequence[int] = DEFAULT_ITEM_KS,
    mrr_scale: float = DEFAULT_MRR_SCALE,
    ties: str = "expected",
) -> dict[str, float]:
  """Means over pairs of `item_metric_values`, plus the median rank.

  Returns:
    {"hit_rate@K", "mrr", "scaled_mrr", "mean_rank", "median_rank"} floats
    (zeros when there are no pairs).
  """
  values = item_metric_values(greater, equal, ks, mrr_scale, ties)
  rank = values.pop("rank")
  out = {name: float(v.mean()) if v.size else 0.0 for name, v in values.items()}
  out["mean_rank"] = float(rank.mean()) if rank.size else 0.0
  out["median_rank"] = float(np.median(rank)) if rank.size else 0.0
  return out


def hits_matrix(top_items: np.ndarray, relevant: CSR) -> np.ndarray:
  """Marks which recommended items are relevant.

  Args:
    top_items: int `[U, K]` ranked item ids per user (-1 = no item).
    relevant: `CSR` with U rows: the relevant (held-out) items of each user.

  Returns:
    bool `[U, K]`, True where `top_items[u, p]` is in `relevant.row(u)`.
  """
  top_items = np.asarray(top_items)
  if top_items.ndim != 2 or top_items.shape[0] != relevant.num_rows:
    raise ValueError(f"top_items must be [U={relevant.num_rows}, K], got {top_items.shape}.")
  num_users, k = top_items.shape
  if num_users == 0 or k == 0 or relevant.nnz == 0:
    return np.zeros((num_users, k), dtype=bool)
  width = int(max(top_items.max(), relevant.indices.max())) + 1
  rel_rows = np.repeat(np.arange(num_users, dtype=np.int64), relevant.degrees())
  rel_keys = rel_rows * width + relevant.indices.astype(np.int64)
  top_keys = np.arange(num_users, dtype=np.int64)[:, None] * width + top_items.astype(np.int64)
  return np.isin(top_keys, rel_keys) & (top_items >= 0)


def _discounts(k: int) -> np.ndarray:
  return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


def user_metric_values(hits: np.ndarray, num_relevant: np.ndarray,
                       ks: Sequence[int] = DEFAULT_USER_KS) -> dict[str, np.ndarray]:
  """Per-user Recall/Precision/NDCG@K `[U]` from a hits matrix.

  Args:
    hits: bool `[U, K_max]` (from `hits_matrix`), K_max >= max(ks).
    num_relevant: int `[U]` |T_u|, every entry >= 1.
    ks: cutoffs.
  """
  hits = np.asarray(hits, dtype=bool)
  num_relevant = np.asarray(num_relevant, dtype=np.int64)
  if hits.ndim != 2 or num_relevant.shape != (hits.shape[0],):
    raise ValueError(f"hits [U, K] and num_relevant [U] disagree: {hits.shape}, "
                     f"{num_relevant.shape}.")
  if num_relevant.size and num_relevant.min() < 1:
    raise ValueError("every evaluated user needs >= 1 relevant item (drop the others).")
  out: dict[str, np.ndarray] = {}
  for k in ks:
    if k > hits.shape[1]:
      raise ValueError(f"cutoff {k} exceeds the {hits.shape[1]} ranked items.")
    h = hits[:, :k]
    found = h.sum(axis=1).astype(np.float64)
    disc = _discounts(k)
    ideal = np.cumsum(disc)[np.minimum(num_relevant, k) - 1] if hits.shape[0] else np.zeros(0)
    out[f"recall@{k}"] = found / num_relevant
    out[f"precision@{k}"] = found / k
    out[f"ndcg@{k}"] = (h * disc).sum(axis=1) / ideal
  return out


def user_metrics(top_items: np.ndarray, relevant: CSR,
                 ks: Sequence[int] = DEFAULT_USER_KS) -> dict[str, float]:
  """Recall/Precision/NDCG@K averaged over users (the user protocol).

  Args:
    top_items: int `[U, K_max]` ranked recommendations (train items already
      masked out), -1 where fewer than K_max items could be recommended.
    relevant: `CSR` with U rows, each with >= 1 held-out item.
    ks: cutoffs, each <= K_max.
  """
  hits = hits_matrix(top_items, relevant)
  values = user_metric_values(hits, relevant.degrees(), ks)
  return {name: float(v.mean()) if v.size else 0.0 for name, v in values.items()}

