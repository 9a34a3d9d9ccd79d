"""Tests for data.csv_edges (bring-your-own logs)."""

from __future__ import annotations

import numpy as np
import pytest

from data import csv_edges
from data.errors import InputError
from pinsage_tf.graph import Split

T, V, X = int(Split.TRAIN), int(Split.VALIDATION), int(Split.TEST)

# Timestamps 10..100: val_quantile 0.6 -> 60, test_quantile 0.8 -> 80 ("lower").
EDGES = """pivot_id,item_id,timestamp
u1,b,10
u1,a,20
u2,a,30
u2,c,40
u1,c,50
u2,b,60
u3,d,70
u3,a,80
u1,d,90
u2,d,100
"""
FEATURES = """item_id,price,score
a,1.5,2
c,-1,0.25
"""
CONFIG = csv_edges.CsvConfig(val_quantile=0.6, test_quantile=0.8)


def _write(tmp_path, text, name):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


def test_time_split_fixture(tmp_path):
  g = csv_edges.load_csv(_write(tmp_path, EDGES, "edges.csv"), None, CONFIG)
  np.testing.assert_array_equal(g.item_ids, ["a", "b", "c", "d"])
  # Train (t < 60): u1 -> b, a, c; u2 -> a, c. u3 starts at 70: not a pivot.
  np.testing.assert_array_equal(g.pivot_ids, ["u1", "u2"])
  np.testing.assert_array_equal(g.pivot_to_item.indptr, [0, 3, 5])
  np.testing.assert_array_equal(g.pivot_to_item.indices, [0, 1, 2, 0, 2])
  # u1: b a c d(X); u2: a c b(V) d(X); u3: d(V) a(X).
  assert list(zip(g.pairs.query.tolist(), g.pairs.positive.tolist(), g.pairs.split.tolist())) == [
      (1, 0, T), (0, 2, T), (2, 3, X), (0, 2, T), (2, 1, V), (1, 3, X), (3, 0, X)]
  np.testing.assert_array_equal(g.heldout.validation.indptr, [0, 0, 1])
  np.testing.assert_array_equal(g.heldout.validation.indices, [1])
  np.testing.assert_array_equal(g.heldout.test.indptr, [0, 1, 2])
  np.testing.assert_array_equal(g.heldout.test.indices, [3, 3])
  assert g.metadata["heldout_dropped_no_train_pivot"] == 2
  protocol = g.metadata["protocol"]
  assert (protocol["validation_cutoff"], protocol["test_cutoff"]) == (60, 80)
  assert g.features.dense_dim == 0


def test_ties_keep_file_order(tmp_path):
  # Equal timestamps: file order decides, so the pairs start z->x->y, not x->y->z.
  # Times 1 1 1 2 3 4 5: cut-offs 2 (q=0.6, position 3.6) and 3 (q=0.8, position 4.8).
  edges = "pivot_id,item_id,timestamp\np,z,1\np,x,1\np,y,1\np,w,2\np,v,3\np,u,4\np,t,5\n"
  g = csv_edges.load_csv(_write(tmp_path, edges, "e.csv"), None,
                         csv_edges.CsvConfig(val_quantile=0.6, test_quantile=0.8))
  names = g.item_ids
  assert [(str(names[q]), str(names[p]), s) for q, p, s in
          zip(g.pairs.query, g.pairs.positive, g.pairs.split.tolist())] == [
              ("z", "x", T), ("x", "y", T), ("y", "w", V), ("w", "v", X), ("v", "u", X),
              ("u", "t", X)]


def test_dense_features(tmp_path):
  g = csv_edges.load_csv(_write(tmp_path, EDGES, "edges.csv"),
                         _write(tmp_path, FEATURES, "features.csv"), CONFIG)
  assert g.features.dense_names == ("price", "score")
  np.testing.assert_array_equal(g.features.dense, [[1.5, 2], [0, 0], [-1, 0.25], [0, 0]])
  assert g.metadata["items_without_features"] == 2  # b and d


def test_random_split_without_timestamps(tmp_path):
  rng = np.random.default_rng(0)
  per_pivot = {f"p{p:02d}": [f"i{i}" for i in rng.permutation(60)[:25]] for p in range(40)}
  lines = ["pivot_id,item_id"] + [f"{p},{i}" for p, items in per_pivot.items() for i in items]
  path = _write(tmp_path, "\n".join(lines) + "\n", "e.csv")
  a = csv_edges.load_csv(path, None, csv_edges.CsvConfig(seed=5))
  b = csv_edges.load_csv(path, None, csv_edges.CsvConfig(seed=5))
  c = csv_edges.load_csv(path, None, csv_edges.CsvConfig(seed=6))
  np.testing.assert_array_equal(a.pairs.split, b.pairs.split)
  assert not np.array_equal(a.pairs.split, c.pairs.split)
  # Pairs follow file order: each pivot's k-th and (k+1)-th lines; 40 * 24 of them.
  expected = [(x, y) for items in per_pivot.values() for x, y in zip(items[:-1], items[1:])]
  got = [(a.item_ids[q], a.item_ids[p]) for q, p in zip(a.pairs.query, a.pairs.positive)]
  assert got == expected
  # ~80/10/10 of 960 pairs.
  share = np.bincount(a.pairs.split, minlength=3) / a.pairs.split.size
  assert 0.75 < share[0] < 0.85 and 0.06 < share[1] < 0.14 and 0.06 < share[2] < 0.14
  # A pair's positive is a graph edge exactly when the pair is TRAIN (items are
  # distinct per pivot, so membership identifies the interaction).
  pivot_row = {str(p): r for r, p in enumerate(a.pivot_ids)}
  edges = set()
  for r in range(a.num_pivots):
    edges |= {(r, int(i)) for i in a.items_of(r)}
  pair_pivot = np.repeat(np.arange(40), 24)
  for k, (pos, split) in enumerate(zip(a.pairs.positive.tolist(), a.pairs.split.tolist())):
    row = pivot_row.get(f"p{pair_pivot[k]:02d}")  # None: pivot without train edges
    assert ((row, pos) in edges) == (split == T)


@pytest.mark.parametrize("edges,features,message", [
    ("pivot_id,item\nu,a\n", None, r"e\.csv:1: missing column 'item_id'"),
    ("", None, r"e\.csv: file is empty"),
    ("pivot_id,item_id,timestamp\nu,a,1\nu,b,soon\n", None,
     r"e\.csv:3: column 'timestamp': 'soon' is not a finite number"),
    ("pivot_id,item_id\nu,a\n,b\n", None, r"e\.csv:3: empty pivot_id"),
    (EDGES, "item_id,price\na,1\nz,2\n", r"f\.csv:3: item_id 'z' does not occur in the edges"),
    (EDGES, "item_id,price\na,1\na,2\n", r"f\.csv:3: item_id 'a' is listed twice"),
    (EDGES, "item_id,price\na,1\nb,cheap\n", r"f\.csv:3: column 'price': 'cheap'"),
    (EDGES, "item_id\na\n", r"f\.csv:1: no feature column"),
    (EDGES, "price,score\n1,2\n", r"f\.csv:1: missing column 'item_id'"),
    (EDGES, "item_id,price\na,1e39\n", r"f\.csv:2: value overflows float32"),
])
def test_bad_input(tmp_path, edges, features, message):
  f = None if features is None else _write(tmp_path, features, "f.csv")
  with pytest.raises(InputError, match=message):
    csv_edges.load_csv(_write(tmp_path, edges, "e.csv"), f, CONFIG)


def test_empty_test_split_is_an_error(tmp_path):
  # 11 times 1 2 10 20 30 40 50 60 65 90 95: cut-offs 40 (q=0.5, position 5) and
  # 90 (q=0.9, position 9). The test period holds u3@90 and u5@95, each the
  # pivot's only interaction, so no test pair has a predecessor.
  edges = ("pivot_id,item_id,timestamp\nu4,a,1\nu4,b,2\nu1,a,10\nu1,b,20\nu2,a,30\n"
           "u2,b,40\nu1,c,50\nu1,d,60\nu2,c,65\nu3,a,90\nu5,b,95\n")
  with pytest.raises(InputError, match=r"e\.csv: the test split would have no item pair"):
    csv_edges.load_csv(_write(tmp_path, edges, "e.csv"), None,
                       csv_edges.CsvConfig(val_quantile=0.5, test_quantile=0.9))
