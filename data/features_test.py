"""Tests for data.features: tokenizing, stable hashing, sparse features."""

from __future__ import annotations

import numpy as np
import pytest

from data import features


def test_tokenize_lowercases_and_splits_on_punctuation():
  assert features.tokenize("Shawshank Redemption, The") == ["shawshank", "redemption", "the"]
  assert features.tokenize("Amélie_2: WALL·E!") == ["amélie", "2", "wall", "e"]
  assert features.tokenize("  ") == []


def test_stable_hash_is_crc32_and_fixed():
  # zlib.crc32(b"hello") = 907060870 = 55363 * 16384 + 9862; the literal guards
  # against anyone switching to the per-process salted hash().
  assert features.stable_hash("hello", 16384) == 9862
  assert features.stable_hash("toy", 8) == 6  # crc32 1728423790 % 8


def test_hashed_text_feature_rows_are_bags_of_buckets():
  # Buckets mod 8: hello -> 6, toy -> 6, alpha -> 2 (crc32 3504355690 % 8).
  f = features.hashed_text_feature("text", [["hello", "toy", "alpha"], [], ["alpha"]], 8)
  assert (f.name, f.kind, f.vocab_size, f.vocab) == ("text", "hashed_text", 8, None)
  np.testing.assert_array_equal(f.values.indptr, [0, 2, 2, 3])   # {2, 6}, {}, {2}
  np.testing.assert_array_equal(f.values.indices, [2, 6, 2])


def test_categorical_feature_uses_vocab_positions():
  f = features.categorical_feature("genres", [["b"], ["a", "b"], []], ["a", "b", "c"])
  assert (f.kind, f.vocab_size) == ("categorical", 3)
  np.testing.assert_array_equal(f.vocab, ["a", "b", "c"])
  np.testing.assert_array_equal(f.values.indptr, [0, 1, 3, 3])
  np.testing.assert_array_equal(f.values.indices, [1, 0, 1])


def test_categorical_feature_rejects_unknown_label():
  with pytest.raises(KeyError):
    features.categorical_feature("g", [["z"]], ["a"])


def test_hashed_text_from_tokens_equals_the_token_lists():
  words = np.array(["hello", "toy", "alpha"])
  tokens = np.array([[0, 1, 2], [2, 2, 2], [1, 0, 0]])
  f = features.hashed_text_feature_from_tokens("text", words, tokens, 8)
  g = features.hashed_text_feature("text", [list(words[row]) for row in tokens], 8)
  assert (f.name, f.kind, f.vocab_size) == (g.name, g.kind, g.vocab_size)
  # Rows {2, 6}, {2}, {6}: duplicates within a row collapse as in the list version.
  np.testing.assert_array_equal(f.values.indptr, [0, 2, 3, 4])
  np.testing.assert_array_equal(f.values.indptr, g.values.indptr)
  np.testing.assert_array_equal(f.values.indices, g.values.indices)


def test_categorical_from_ids_equals_the_label_lists():
  f = features.categorical_feature_from_ids("g", np.array([1, 0, 2]), ["a", "b", "c"])
  g = features.categorical_feature("g", [["b"], ["a"], ["c"]], ["a", "b", "c"])
  np.testing.assert_array_equal(f.values.indices, g.values.indices)
  np.testing.assert_array_equal(f.values.indptr, g.values.indptr)
  np.testing.assert_array_equal(f.vocab, g.vocab)
  with pytest.raises(ValueError, match=r"ids must lie in \[0, 3\)"):
    features.categorical_feature_from_ids("g", np.array([3]), ["a", "b", "c"])
