"""Baselines on a tiny hand-made graph with expected orderings."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pinsage_tf import baselines
from pinsage_tf.graph import CSR, SparseFeature, build_graph


def _csr(rows):
  indptr = np.zeros(len(rows) + 1, np.int64)
  np.cumsum([len(r) for r in rows], out=indptr[1:])
  flat = [x for r in rows for x in r]
  return CSR(indptr, np.asarray(flat, np.int32))


# Pivots (users) and their items:
#   u0: {a, b, c}   u1: {a, b}   u2: {b, d}   u3: {e}
# Item degrees: a 2, b 3, c 1, d 1, e 1.
EDGES = [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (1, 2), (3, 2), (4, 3)]


def tiny_graph(**kwargs):
  items, pivots = zip(*EDGES)
  return build_graph(name="tiny", item_ids=list("abcde"), pivot_ids=["u0", "u1", "u2", "u3"],
                     edge_items=np.array(items), edge_pivots=np.array(pivots), **kwargs)


def _order(row, exclude=()):
  row = row.astype(np.float64).copy()
  row[list(exclude)] = -np.inf
  return [int(i) for i in np.lexsort((np.arange(row.shape[0]), -row)) if np.isfinite(row[i])]


def test_popularity_same_list_for_every_query():
  scorer = baselines.PopularityScorer(tiny_graph())
  scores = scorer.score(np.array([0, 3]))
  np.testing.assert_array_equal(scores[0], [2, 3, 1, 1, 1])
  np.testing.assert_array_equal(scores[0], scores[1])
  # b (3) > a (2) > c = d = e (ties by index).
  assert _order(scores[1]) == [1, 0, 2, 3, 4]
  sets = scorer.score_sets(_csr([[0], [2, 3]]))
  np.testing.assert_array_equal(sets[1], [2, 3, 1, 1, 1])


def test_itemknn_cosines_by_hand():
  scorer = baselines.ItemKNNScorer(tiny_graph())
  s = scorer.score(np.array([0, 3, 4]))
  # a = {u0, u1}: cos(a, b) = 2 / sqrt(2 * 3), cos(a, c) = 1 / sqrt(2), d, e: 0.
  np.testing.assert_allclose(s[0], [1.0, 2 / math.sqrt(6), 1 / math.sqrt(2), 0, 0], rtol=1e-6)
  assert _order(s[0], exclude=[0]) == [1, 2, 3, 4]
  # d = {u2}: cos(d, b) = 1 / sqrt(3).
  np.testing.assert_allclose(s[1], [0, 1 / math.sqrt(3), 0, 1, 0], rtol=1e-6)
  # e's only pivot has no other item.
  np.testing.assert_allclose(s[2], [0, 0, 0, 0, 1], rtol=1e-6)


def test_linear_filter_by_hand():
  scorer = baselines.make_baseline("linear_filter", tiny_graph())
  # Pivot degrees u0 3, u1 2, u2 2, u3 1; S[q, i] = sum_{shared p} 1/deg(p) / sqrt(deg q deg i).
  s = scorer.score(np.array([0, 1]))
  np.testing.assert_allclose(
      s[0], [5 / 12, (5 / 6) / math.sqrt(6), (1 / 3) / math.sqrt(2), 0, 0], rtol=1e-6)
  s_b = [(5 / 6) / math.sqrt(6), 4 / 9, (1 / 3) / math.sqrt(3), (1 / 2) / math.sqrt(3), 0]
  np.testing.assert_allclose(s[1], s_b, rtol=1e-6)
  # A user's mean score is r_u S / |u|: u2 = {b, d}.
  s_d = [0, (1 / 2) / math.sqrt(3), 0, 1 / 2, 0]
  np.testing.assert_allclose(scorer.score_sets(_csr([[1, 3]]))[0],
                             (np.array(s_b) + np.array(s_d)) / 2, rtol=1e-6)


def test_itemknn_bounded_expansion_gives_same_scores():
  graph = tiny_graph()
  full = baselines.ItemKNNScorer(graph).score(np.arange(5))
  tiny_budget = baselines.ItemKNNScorer(graph, max_block_elements=1).score(np.arange(5))
  np.testing.assert_allclose(full, tiny_budget, rtol=1e-6)


def test_set_means_match_generic_aggregation():
  rng = np.random.default_rng(0)
  vectors = rng.normal(size=(5, 3)).astype(np.float32)
  sets = _csr([[0, 1], [3], [], [2, 3, 4]])
  for scorer in (baselines.EmbeddingScorer(vectors), baselines.ItemKNNScorer(tiny_graph())):
    fast = scorer.score_sets(sets, "mean")
    generic = baselines.ItemScorer.score_sets(scorer, sets, "mean")
    np.testing.assert_allclose(fast, generic, rtol=1e-5, atol=1e-6)
    assert (fast[2] == 0).all()  # empty set
  emb = baselines.EmbeddingScorer(vectors)
  # "max": row 0 is the elementwise max of the rows of items 0 and 1.
  mx = emb.score_sets(sets, "max")
  np.testing.assert_allclose(mx[0], np.maximum(*(vectors[[0, 1]] @ vectors.T)), rtol=1e-6)
  np.testing.assert_allclose(emb.score_sets(sets, "mean")[0],
                             (vectors[[0, 1]] @ vectors.T).mean(0), rtol=1e-5)
  with pytest.raises(ValueError, match="how"):
    emb.score_sets(sets, "median")


def test_pixie_walks_prefer_graph_neighbors():
  scorer = baselines.PixieScorer(tiny_graph(), num_steps=20_000, restart_prob=0.5, seed=1)
  s = scorer.score(np.array([3]))[0]
  # From d the walk goes d -> u2 -> {b, d}; from b to u0/u1/u2 -> a, c, ...
  # P(a | from b) = 1/9 + 1/6 > P(c | from b) = 1/9; e is unreachable.
  assert s[4] == 0
  assert _order(s, exclude=[3]) == [1, 0, 2, 4]
  assert s.sum() == pytest.approx(20_000, rel=0.01)


def test_pixie_is_reproducible_and_independent_of_blocks():
  graph = tiny_graph()
  a = baselines.PixieScorer(graph, num_steps=300, seed=5)
  b = baselines.PixieScorer(graph, num_steps=300, seed=5)
  together = a.score(np.array([0, 1, 2, 3]))
  b.score(np.array([4]))  # a different call history
  alone = b.score(np.array([2]))
  np.testing.assert_array_equal(together[2], alone[0])
  other_seed = baselines.PixieScorer(graph, num_steps=300, seed=6).score(np.array([2]))
  assert not np.array_equal(other_seed[0], alone[0])
  # Multi-query walk: the set {a, d} visits both neighborhoods.
  s = a.score_sets(_csr([[0, 3]]))[0]
  assert s[2] > 0 and s[1] > 0 and s[4] == 0


def test_features_categorical_cosine():
  # genres: a {x, y}, b {x}, c {z}, d {x, y}, e {} (ids x=0, y=1, z=2).
  genres = SparseFeature("genres", "categorical", 3, _csr([[0, 1], [0], [2], [0, 1], []]),
                         np.array(["x", "y", "z"]))
  scorer = baselines.FeatureScorer(tiny_graph(sparse=[genres]))
  s = scorer.score(np.array([0]))[0]
  np.testing.assert_allclose(s, [1, 1 / math.sqrt(2), 0, 1, 0], rtol=1e-6)
  assert _order(s, exclude=[0]) == [3, 1, 2, 4]
  assert scorer.groups == ["genres"]


def test_features_tfidf_and_dense_groups():
  # Text tokens: a {t0, t1}, b {t0}, c {t1, t1}, d {}, e {t0}.
  text = SparseFeature("title", "hashed_text", 4, _csr([[0, 1], [0], [1, 1], [], [0]]))
  dense = np.array([[1, 0], [2, 0], [3, 1], [4, 1], [5, 3]], np.float32)
  scorer = baselines.FeatureScorer(tiny_graph(sparse=[text], dense=dense, dense_names=("p", "q")))
  assert scorer.groups == ["dense", "title"]
  # Reference, written out densely: idf = ln(6 / (1 + df)) + 1 with df(t0) = 3,
  # df(t1) = 2; tf counts repeats (c has t1 twice).
  idf = np.log(6 / np.array([4, 3])) + 1
  tf = np.array([[1, 1], [1, 0], [0, 2], [0, 0], [1, 0]], np.float64)
  x = tf * idf
  x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
  z = (dense - dense.mean(0)) / dense.std(0)
  # c's dense row equals the column means: its standardised vector is 0, so
  # its dense cosine is 0 with every item (and the division is skipped).
  norms = np.linalg.norm(z, axis=1, keepdims=True)
  assert norms[2] == 0
  z /= np.where(norms > 0, norms, 1)
  expected = (z @ z.T + x @ x.T) / 2
  np.testing.assert_allclose(scorer.score(np.arange(5)), expected, rtol=1e-5, atol=1e-6)


def test_features_need_features():
  with pytest.raises(ValueError, match="no usable item features"):
    baselines.FeatureScorer(tiny_graph())


def test_make_baseline_and_bad_queries():
  graph = tiny_graph()
  assert isinstance(baselines.make_baseline("itemknn", graph), baselines.ItemKNNScorer)
  with pytest.raises(ValueError, match="unknown baseline"):
    baselines.make_baseline("bm25", graph)
  with pytest.raises(ValueError, match=r"\[0, 5\)"):
    baselines.PopularityScorer(graph).score(np.array([5]))


def test_logsumexp_set_aggregation():
  rng = np.random.default_rng(1)
  vectors = rng.normal(size=(6, 4)).astype(np.float32)
  vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
  sets = _csr([[0, 1, 2], [], [3], [1, 4, 5, 0]])
  emb = baselines.EmbeddingScorer(vectors)
  for tau in (0.05, 0.5):
    got = emb.score_sets(sets, "logsumexp", tau)
    for row, members in enumerate([[0, 1, 2], [], [3], [1, 4, 5, 0]]):
      if not members:
        assert (got[row] == 0).all()
        continue
      s = vectors[members] @ vectors.T  # [m, N]
      want = tau * np.log(np.exp(s / tau).sum(0))
      np.testing.assert_allclose(got[row], want, rtol=1e-5, atol=1e-5)
  # Chunked like a large evaluation (one item row per chunk): same values.
  small = baselines.EmbeddingScorer(vectors, max_block_elements=1)
  np.testing.assert_allclose(small.score_sets(sets, "logsumexp", 0.2),
                             emb.score_sets(sets, "logsumexp", 0.2), rtol=1e-5, atol=1e-6)
  # A singleton set is its item's own row; a low temperature tends to "max".
  np.testing.assert_allclose(emb.score_sets(sets, "logsumexp")[2], vectors[3] @ vectors.T,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(emb.score_sets(sets, "logsumexp", 1e-3)[0],
                             emb.score_sets(sets, "max")[0], atol=0.01)
  # Large raw scores (visit counts) stay finite.
  counts = baselines.EmbeddingScorer(vectors * 1e4)
  assert np.isfinite(counts.score_sets(sets, "logsumexp", 0.1)).all()
  with pytest.raises(ValueError, match="temperature"):
    emb.score_sets(sets, "logsumexp", 0.0)


def test_embedding_bias_is_added_to_every_score_and_index_form():
  rng = np.random.default_rng(2)
  vectors = rng.normal(size=(5, 3)).astype(np.float32)
  vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
  bias = np.array([0.3, -0.2, 0.0, 1.0, -0.5], np.float32)
  plain = baselines.EmbeddingScorer(vectors)
  emb = baselines.EmbeddingScorer(vectors, bias=bias)
  items = np.array([0, 3])
  np.testing.assert_allclose(emb.score(items), plain.score(items) + bias, rtol=1e-6, atol=1e-6)
  # [q, 1] . [e_i, b_i] reproduces the scores (the ScaNN / serving form).
  np.testing.assert_allclose(emb.query_vectors(vectors[items]) @ emb.index_vectors().T,
                             emb.score(items), rtol=1e-6, atol=1e-6)
  assert plain.index_vectors() is plain.vectors
  sets = _csr([[0, 1], [2, 3, 4]])
  for how in ("mean", "logsumexp"):
    np.testing.assert_allclose(emb.score_sets(sets, how, 0.3),
                               plain.score_sets(sets, how, 0.3) + bias, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match=r"shape \[5\]"):
    baselines.EmbeddingScorer(vectors, bias=bias[:3])


def test_logsumexp_ranks_multi_interest_users_better_than_mean():
  # Two far-apart interests: the mean vector lies between them and prefers an
  # item close to neither; the soft maximum prefers items near either one.
  a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
  middle = np.array([1.0, 1.0]) / np.sqrt(2)
  near_a = np.array([np.cos(0.2), np.sin(0.2)])
  vectors = np.stack([a, b, middle, near_a]).astype(np.float32)
  emb = baselines.EmbeddingScorer(vectors)
  user = _csr([[0, 1]])
  mean = emb.score_sets(user, "mean")[0]
  soft = emb.score_sets(user, "logsumexp", 0.1)[0]
  assert mean[2] > mean[3]
  assert soft[3] > soft[2]
