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
