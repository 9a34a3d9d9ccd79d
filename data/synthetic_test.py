"""Tests for data.synthetic: determinism, sizes, planted structure, learnability."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from data import synthetic
from pinsage_tf.graph import Split

SMALL = synthetic.SyntheticConfig(num_items=300, num_boards=80, num_communities=5,
                                  num_pairs=3000, dense_dim=8, seed=11)


def _arrays(g):
  out = {
      "item_to_pivot.indptr": g.item_to_pivot.indptr,
      "item_to_pivot.indices": g.item_to_pivot.indices,
      "dense": g.features.dense,
      "query": g.pairs.query, "positive": g.pairs.positive, "split": g.pairs.split,
  }
  for f in g.features.sparse:
    out[f.name] = f.values.indices
  return out


def test_deterministic_for_a_seed():
  a, b = synthetic.generate(SMALL), synthetic.generate(SMALL)
  for name, array in _arrays(a).items():
    np.testing.assert_array_equal(array, _arrays(b)[name], err_msg=name)
  assert a.metadata == b.metadata


def test_other_seed_differs():
  a = synthetic.generate(SMALL)
  b = synthetic.generate(dataclasses.replace(SMALL, seed=12))
  assert not np.array_equal(a.pairs.query, b.pairs.query)
  assert not np.array_equal(a.features.dense, b.features.dense)
  assert not np.array_equal(a.item_to_pivot.indices, b.item_to_pivot.indices)


def test_sizes_as_configured():
  g = synthetic.generate(SMALL)
  assert (g.num_items, g.num_pivots) == (300, 80)
  assert g.pairs.query.shape == (3000,)
  assert g.features.dense.shape == (300, 8)
  assert [(f.name, f.kind, f.vocab_size) for f in g.features.sparse] == [
      ("topic", "categorical", 5), ("text", "hashed_text", SMALL.hash_buckets)]
  assert g.features.sparse[0].values.degrees().tolist() == [1] * 300
  assert set(g.features.sparse[1].values.degrees().tolist()) <= set(range(1, SMALL.text_tokens + 1))
  assert g.item_titles.shape == (300,)
  assert g.heldout.validation.nnz == g.heldout.test.nnz == 0
  # Board sizes lie in [min, max] before de-duplication, so degrees never exceed max.
  assert 1 <= g.pivot_degrees().min() and g.pivot_degrees().max() <= SMALL.board_size_max
  counts = [g.pairs.count(s) for s in Split]
  assert all(c > 0 for c in counts) and 0.7 < counts[0] / 3000 < 0.9
  assert not np.any(g.pairs.query == g.pairs.positive)


def test_default_size_is_the_documented_one():
  g = synthetic.generate(synthetic.SyntheticConfig())
  assert (g.num_items, g.num_pivots, g.pairs.query.size) == (5000, 1500, 50_000)
  assert g.num_edges > 10_000


def test_splits_are_in_session_time_order():
  g, _ = synthetic.generate_with_truth(SMALL)
  # Pairs are emitted session by session; splits never go back in time.
  assert np.all(np.diff(g.pairs.split.astype(int)) >= 0)
  # A pair's group is its session: non-decreasing, and consecutive pairs of
  # one session chain (the positive of one is the query of the next).
  group = g.pairs.group
  assert group is not None and np.all(np.diff(group) >= 0)
  same = group[1:] == group[:-1]
  assert same.mean() > 0.5
  assert np.mean(g.pairs.positive[:-1][same] == g.pairs.query[1:][same]) > 0.9


def test_planted_structure():
  g, truth = synthetic.generate_with_truth(synthetic.SyntheticConfig(seed=3))
  community = truth.item_community
  # Boards: a pin slot is home w.p. 0.9 + 0.1 / 20 = 0.905 (noisy draws pick a
  # random community, sometimes the home one); de-duplication shifts it a little.
  rows = np.repeat(np.arange(g.num_pivots), g.pivot_degrees())
  home = community[g.pivot_to_item.indices] == truth.board_community[rows]
  assert 0.85 < home.mean() < 0.97
  # "topic" equals the community w.p. 0.7 + 0.3 / 20.
  topic = g.features.sparse_feature("topic").values.indices
  assert 0.67 < np.mean(topic == community) < 0.75
  # Dense features are closer to their own community's mean than to others'.
  means = np.stack([g.features.dense[community == c].mean(0) for c in range(20)])
  nearest = np.argmin(((g.features.dense[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
  assert np.mean(nearest == community) > 0.6


def test_learnable():
  g, truth = synthetic.generate_with_truth(synthetic.SyntheticConfig())
  d = synthetic.diagnostics(g, truth)
  assert d["pairs"] == g.pairs.count(Split.VALIDATION)
  # Validation positives share the query's community far more often than chance (1/20)...
  assert d["same_community"] > 0.8 and d["chance_same_community"] < 0.06
  # ...while global popularity predicts them poorly and community + popularity well.
  assert d["popularity_hit_at_10"] < 0.15
  assert d["community_popularity_hit_at_10"] > 3 * d["popularity_hit_at_10"]
  assert g.metadata["diagnostics"] == d


def test_diagnostics_hits_exclude_the_query():
  # Hand-made ranking: lists [0, 1, 2] with k = 2. Query 0 is dropped from its
  # list -> [1, 2]; query 5 is absent -> the last entry goes -> [0, 1].
  top = np.array([[0, 1, 2], [0, 1, 2]])
  assert synthetic._hits(top, np.array([0, 5]), np.array([2, 2]), k=2) == 0.5


def test_community_sampler_draws_only_from_the_community():
  community = np.array([0, 1, 0, 1, 0])
  weight = np.array([1.0, 1.0, 2.0, 3.0, 1.0])
  sampler = synthetic._CommunitySampler(community, weight, 2)
  rng = np.random.default_rng(0)
  draws = sampler.sample(np.zeros(20_000, np.int64), rng)
  # Community 0 = items 0, 2, 4 with weights 1, 2, 1 -> 1/4, 1/2, 1/4.
  freq = np.bincount(draws, minlength=5) / draws.size
  np.testing.assert_allclose(freq, [0.25, 0, 0.5, 0, 0.25], atol=0.015)
  draws = sampler.sample(np.ones(20_000, np.int64), rng)
  np.testing.assert_allclose(np.bincount(draws, minlength=5) / draws.size,
                             [0, 0.25, 0, 0.75, 0], atol=0.015)


@pytest.mark.parametrize("kwargs,message", [
    ({"num_communities": 1}, "num_communities"),
    ({"num_items": 10}, "num_items"),
    ({"board_noise": 1.5}, "board_noise"),
    ({"val_fraction": 0.5, "test_fraction": 0.5}, "val_fraction"),
])
def test_config_validation(kwargs, message):
  with pytest.raises(ValueError, match=message):
    synthetic.SyntheticConfig(**kwargs)


def test_too_few_pairs_for_the_splits():
  with pytest.raises(ValueError, match="too small"):
    synthetic.generate(synthetic.SyntheticConfig(num_items=100, num_boards=10,
                                                 num_communities=5, num_pairs=3))
