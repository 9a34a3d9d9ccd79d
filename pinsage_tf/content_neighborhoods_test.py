"""Content neighborhoods: hand-computed multi-hot cosines on a six-item graph."""

from __future__ import annotations

import numpy as np
import pytest

from pinsage_tf import content_neighborhoods as cn
from pinsage_tf.graph import CSR, SparseFeature, build_graph


def _csr(rows):
  indptr = np.zeros(len(rows) + 1, np.int64)
  np.cumsum([len(r) for r in rows], out=indptr[1:])
  return CSR(indptr, np.asarray([x for r in rows for x in r], np.int32))


def genre_graph(with_features: bool = True):
  """Items 0-3 have edges (u0: {0, 1}, u1: {2, 3}); 4 and 5 have none.

  Genres: 0 {a, b}, 1 {a}, 2 {c}, 3 {a, b, c}, 4 {a, b}, 5 {d}. The multi-hot
  cosine of 4 with 0 is 2/sqrt(2*2) = 1, with 3 2/sqrt(2*3) = 0.8165, with 1
  1/sqrt(2*1) = 0.7071, with 2 0; 5 shares no genre with any item with edges.
  """
  genres = SparseFeature("genres", "categorical", 4,
                         _csr([[0, 1], [0], [2], [0, 1, 2], [0, 1], [3]]))
  return build_graph(name="genres", item_ids=[f"i{i}" for i in range(6)],
                     pivot_ids=["u0", "u1"], edge_items=np.array([0, 1, 2, 3]),
                     edge_pivots=np.array([0, 0, 1, 1]),
                     sparse=[genres] if with_features else ())


def test_content_neighbors_are_similar_items_with_edges():
  ids, weights = cn.content_neighbors(genre_graph(), np.array([4, 5, 0]), 3)
  s = np.array([1.0, 2 / np.sqrt(6), 1 / np.sqrt(2)])
  np.testing.assert_array_equal(ids[0], [0, 3, 1])
  np.testing.assert_allclose(weights[0], s / s.sum(), rtol=1e-6)
  # 5 has no look-alike with edges: an empty row.
  np.testing.assert_array_equal(ids[1], [-1, -1, -1])
  np.testing.assert_array_equal(weights[1], [0, 0, 0])
  # 0 (with edges): 3 (0.8165) then 1 (0.7071); never itself, never 4 (no edges).
  np.testing.assert_array_equal(ids[2], [3, 1, -1])
  s0 = np.array([2 / np.sqrt(6), 1 / np.sqrt(2)])
  np.testing.assert_allclose(weights[2, :2], s0 / s0.sum(), rtol=1e-6)


def test_fill_edgeless_replaces_only_rows_without_edges():
  graph = genre_graph()
  ids = np.array([[1, -1], [0, -1], [3, -1], [2, -1], [-1, -1], [-1, -1]], np.int32)
  weights = np.array([[1, 0], [1, 0], [1, 0], [1, 0], [0, 0], [0, 0]], np.float32)
  new_ids, new_weights = cn.fill_edgeless(graph, ids, weights)
  np.testing.assert_array_equal(new_ids[:4], ids[:4])
  np.testing.assert_array_equal(new_weights[:4], weights[:4])
  np.testing.assert_array_equal(new_ids[4], [0, 3])
  np.testing.assert_allclose(new_weights[4].sum(), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(new_ids[5], [-1, -1])
  assert ids[4, 0] == -1  # inputs untouched
  # Precomputed content neighbors give the same rows.
  content = cn.content_neighbors(graph, np.arange(6), 2)
  again = cn.fill_edgeless(graph, ids, weights, content=content)
  np.testing.assert_array_equal(again[0], new_ids)
  np.testing.assert_allclose(again[1], new_weights)


def test_errors_name_the_problem():
  with pytest.raises(ValueError, match="need item features"):
    cn.fill_edgeless(genre_graph(with_features=False), np.full((6, 2), -1, np.int32),
                     np.zeros((6, 2), np.float32))
  with pytest.raises(ValueError, match=r"\[6, T\]"):
    cn.fill_edgeless(genre_graph(), np.full((5, 2), -1, np.int32), np.zeros((5, 2), np.float32))
  with pytest.raises(ValueError, match="num_neighbors"):
    cn.content_neighbors(genre_graph(), np.array([4]), 0)
