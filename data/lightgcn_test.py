"""Tests for data.lightgcn on hand-made split files and on Gowalla."""

from __future__ import annotations

import os

import numpy as np
import pytest

from data import lightgcn
from data.errors import InputError
from pinsage_tf.graph import Split

# Users 0..3, items 0..5 (item 5 and user 3 appear only in test.txt).
TRAIN = "0 0 1 2 3\n1 1 2\n2 4\n"
TEST = "0 4\n1 0\n2 3\n3 5\n"


def _write(tmp_path, train=TRAIN, test=TEST):
  for name, text in (("train.txt", train), ("test.txt", test)):
    if text is not None:
      (tmp_path / name).write_text(text)
  return str(tmp_path)


def _pairs(g, split):
  q, p = g.pairs.of(split)
  return list(zip(q.tolist(), p.tolist()))


def test_read_user_items(tmp_path):
  path = tmp_path / "f.txt"
  path.write_text("3 7 8\r\n\n5\n 1\t2 \n")  # CRLF, a blank line, a user alone, tabs
  users, items, line_users = lightgcn.read_user_items(str(path))
  np.testing.assert_array_equal(users, [3, 3, 1])
  np.testing.assert_array_equal(items, [7, 8, 2])
  np.testing.assert_array_equal(line_users, [3, 5, 1])


@pytest.mark.parametrize("text,message", [
    ("0 1 2\n1 3 x\n", r"f\.txt:2: unexpected character 'x'"),
    ("0 1\n\n1 -3\n", r"f\.txt:3: unexpected character '-'"),
    ("0 1.5\n", r"f\.txt:1: unexpected character '\.'"),
    ("0 1234567890123456789\n", r"f\.txt:1: id with more than 18 digits"),
    ("", r"f\.txt: file is empty"),
    ("\n \n", r"f\.txt: file is empty"),
])
def test_read_user_items_errors(tmp_path, text, message):
  path = tmp_path / "f.txt"
  path.write_text(text)
  with pytest.raises(InputError, match=message):
    lightgcn.read_user_items(str(path))


def test_no_validation(tmp_path):
  g = lightgcn.load_lightgcn(_write(tmp_path), lightgcn.LightGCNConfig(val_fraction=0.0))
  np.testing.assert_array_equal(g.item_ids, ["0", "1", "2", "3", "4", "5"])
  np.testing.assert_array_equal(g.pivot_ids, ["0", "1", "2", "3"])
  # Edges = train.txt: user 0 -> 0..3, user 1 -> 1, 2, user 2 -> 4, user 3 -> none.
  np.testing.assert_array_equal(g.pivot_to_item.indptr, [0, 4, 6, 7, 7])
  np.testing.assert_array_equal(g.pivot_to_item.indices, [0, 1, 2, 3, 1, 2, 4])
  assert g.features.dense_dim == 0 and g.features.sparse == ()
  np.testing.assert_array_equal(g.features.log_degree,
                                np.log1p([1, 2, 2, 1, 1, 0]).astype(np.float32))
  # heldout.test = test.txt row by row.
  np.testing.assert_array_equal(g.heldout.test.indptr, [0, 1, 2, 3, 4])
  np.testing.assert_array_equal(g.heldout.test.indices, [4, 0, 3, 5])
  assert g.heldout.validation.nnz == 0 and g.pairs.count(Split.VALIDATION) == 0
  # Train pairs: user 0's 4 items in a random order give 3 links (a path through
  # all four), user 1's two items one link; each link in both directions.
  train = _pairs(g, Split.TRAIN)
  assert len(train) == 8
  assert sorted(train) == sorted((b, a) for a, b in train)
  links = [frozenset(p) for p in train if p[0] < p[1]]
  links.remove(frozenset({1, 2}))  # user 1's only link
  degree = np.bincount([i for link in links for i in link], minlength=4)
  assert sorted(degree.tolist()) == [1, 1, 2, 2]  # user 0: a path through 0..3
  # Test pairs: (random train item of the user, test item); user 3 has no train item.
  test = _pairs(g, Split.TEST)
  assert [p for _, p in test] == [4, 0, 3]
  assert test[0][0] in {0, 1, 2, 3} and test[1][0] in {1, 2} and test[2][0] == 4
  assert g.metadata["test_interactions_without_train_user"] == 1


def test_train_pairs_form_a_path_per_user(tmp_path):
  g = lightgcn.load_lightgcn(_write(tmp_path, train="0 0 1 2 3 4 5\n", test="0 6\n"),
                             lightgcn.LightGCNConfig(val_fraction=0.0, seed=3))
  links = {frozenset(p) for p in _pairs(g, Split.TRAIN)}
  # A random permutation of 6 items: 5 links, a path visiting every item once.
  assert len(links) == 5
  degree = np.bincount([i for link in links for i in link], minlength=6)
  assert sorted(degree.tolist()) == [1, 1, 2, 2, 2, 2]


def test_max_pairs_per_user_caps_train_pairs(tmp_path):
  g = lightgcn.load_lightgcn(_write(tmp_path), lightgcn.LightGCNConfig(
      val_fraction=0.0, max_pairs_per_user=2))
  # One link per user: user 0 -> 2 pairs, user 1 -> 2 pairs, user 2 -> none.
  assert g.pairs.count(Split.TRAIN) == 4


def test_validation_holdout(tmp_path):
  g = lightgcn.load_lightgcn(_write(tmp_path), lightgcn.LightGCNConfig(val_fraction=0.5, seed=7))
  # User 0 (4 items, >= 3): floor(0.5 * 4 + u) = 2 items, capped at 4 - 2 = 2.
  # Users 1 (2 items) and 2 (1 item) keep everything.
  assert g.heldout.validation.nnz == 2 and g.heldout.validation.row(0).size == 2
  assert g.num_edges + g.heldout.validation.nnz == 7
  val_items = set(g.heldout.validation.row(0).tolist())
  train_items = set(g.items_of(0).tolist())
  assert val_items | train_items == {0, 1, 2, 3} and not val_items & train_items
  val = _pairs(g, Split.VALIDATION)
  assert {p for _, p in val} == val_items
  assert all(q in train_items for q, _ in val)
  # Train pairs only use remaining training items: one link for user 0 now.
  assert all(set(p) <= train_items or set(p) == {1, 2} for p in _pairs(g, Split.TRAIN))
  # Every pair's group is its user: both items of a training pair are that
  # user's training items, a validation pair's positive its validation item.
  for split in (Split.TRAIN, Split.VALIDATION):
    q, p = g.pairs.of(split)
    for a, b, u in zip(q, p, g.pairs.groups_of(split)):
      mine = set(g.items_of(u).tolist()) | set(g.heldout.validation.row(u).tolist())
      assert {int(a), int(b)} <= mine
  np.testing.assert_array_equal(g.pairs.groups_of(Split.VALIDATION), [0, 0])


def test_deterministic_per_seed(tmp_path):
  root = _write(tmp_path, train="0 0 1 2 3 4 5 6 7 8 9\n1 3 4 5 6 7\n", test="0 10\n1 11\n")
  config = lightgcn.LightGCNConfig(val_fraction=0.3, seed=1)
  a, b = lightgcn.load_lightgcn(root, config), lightgcn.load_lightgcn(root, config)
  for x, y in ((a.pairs.query, b.pairs.query), (a.pairs.positive, b.pairs.positive),
               (a.heldout.validation.indices, b.heldout.validation.indices),
               (a.pivot_to_item.indices, b.pivot_to_item.indices)):
    np.testing.assert_array_equal(x, y)
  others = [lightgcn.load_lightgcn(root, lightgcn.LightGCNConfig(val_fraction=0.3, seed=s))
            for s in range(2, 6)]
  assert any(not np.array_equal(a.pairs.query, o.pairs.query) for o in others)


@pytest.mark.parametrize("train,test,message", [
    ("0 1\n", None, r"test\.txt: file not found"),
    ("0 1\n", "", r"test\.txt: file is empty"),
    ("0 1\n", "0\n", r"test\.txt: no \(user, item\) interaction"),
    ("0 1\n", "1 2\n", r"test\.txt: no test user has a training item"),
    ("0 1 a\n", "0 2\n", r"train\.txt:1: unexpected character 'a'"),
])
def test_bad_input(tmp_path, train, test, message):
  with pytest.raises(InputError, match=message):
    lightgcn.load_lightgcn(_write(tmp_path, train, test), lightgcn.LightGCNConfig(val_fraction=0.0))


def test_empty_validation_is_an_error_when_asked_for(tmp_path):
  with pytest.raises(InputError, match=r"train\.txt: no user has >= 3 training items"):
    lightgcn.load_lightgcn(_write(tmp_path, "0 1 2\n", "0 3\n"), lightgcn.LightGCNConfig())


def test_config_validation():
  with pytest.raises(ValueError, match="val_fraction"):
    lightgcn.LightGCNConfig(val_fraction=1.0)
  with pytest.raises(ValueError, match="max_pairs_per_user"):
    lightgcn.LightGCNConfig(max_pairs_per_user=1)


def test_gowalla(datasets_dir):
  root = os.path.join(datasets_dir, "gowalla")
  full = lightgcn.load_lightgcn(root, lightgcn.LightGCNConfig(val_fraction=0.0))
  assert (full.num_pivots, full.num_items, full.num_edges) == (29_858, 40_981, 810_128)
  assert full.heldout.test.nnz == 217_242
  assert full.pairs.count(Split.TEST) == 217_242  # every test user has train items
  assert full.pairs.count(Split.VALIDATION) == 0
  g = lightgcn.load_lightgcn(root, lightgcn.LightGCNConfig())
  assert g.num_edges + g.heldout.validation.nnz == 810_128
  assert g.heldout.validation.nnz == g.pairs.count(Split.VALIDATION) > 0
  # Validation items really left the graph: no held-out (user, item) is an edge.
  rows = np.repeat(np.arange(g.num_pivots), g.heldout.validation.degrees())
  edge_keys = np.repeat(np.arange(g.num_pivots), g.pivot_degrees()) * g.num_items + \
      g.pivot_to_item.indices
  assert not np.isin(rows * g.num_items + g.heldout.validation.indices, edge_keys).any()
  # Everyone keeps >= 2 training items when they had >= 3.
  assert g.pivot_degrees().min() >= 2
  assert g.pairs.count(Split.TRAIN) <= 50 * g.num_pivots


def test_pair_rounds_add_training_pairs_and_keep_the_holdouts(tmp_path):
  path = _write(tmp_path, train="0 0 1 2 3 4 5 6 7\n1 1 2 3 4\n", test="0 8\n1 8\n")
  one = lightgcn.load_lightgcn(path, lightgcn.LightGCNConfig(val_fraction=0.2, seed=5))
  three = lightgcn.load_lightgcn(path, lightgcn.LightGCNConfig(val_fraction=0.2, seed=5,
                                                               pair_rounds=3))
  assert three.pairs.count(Split.TRAIN) == 3 * one.pairs.count(Split.TRAIN)
  # The first round is the single-round graph's pairs; hold-outs and eval pairs are equal.
  n = one.pairs.count(Split.TRAIN) // 2
  assert _pairs(three, Split.TRAIN)[:n] == _pairs(one, Split.TRAIN)[:n]
  for split in (Split.VALIDATION, Split.TEST):
    assert _pairs(three, split) == _pairs(one, split)
  np.testing.assert_array_equal(three.heldout.validation.indices, one.heldout.validation.indices)
  np.testing.assert_array_equal(three.item_to_pivot.indices, one.item_to_pivot.indices)
  # Every extra pair links two training items of the same user.
  edges = {(int(u), int(i)) for u in range(one.num_pivots)
           for i in one.pivot_to_item.indices[one.pivot_to_item.indptr[u]:
                                              one.pivot_to_item.indptr[u + 1]]}
  for q, p in _pairs(three, Split.TRAIN):
    assert any((u, q) in edges and (u, p) in edges for u in range(one.num_pivots))
  with pytest.raises(ValueError, match="pair_rounds"):
    lightgcn.LightGCNConfig(pair_rounds=0)
