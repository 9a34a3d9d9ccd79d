"""Building sparse item features: categorical id lists and hashed text tokens.

Contract: both builders take one list of strings per item (`N` lists) and
return a `pinsage_tf.graph.SparseFeature` whose `values` CSR has one row per
item with sorted, de-duplicated ids (a bag, not a sequence; an item may have
an empty row). Text tokens are hashed with `zlib.crc32` of their UTF-8 bytes
modulo the number of buckets: stable across processes, machines and Python
versions (Python's `hash()` is salted per process, so it is never used).
"""

from __future__ import annotations

import re
import zlib
from typing import Sequence

import numpy as np

from pinsage_tf.graph import CSR, SparseFeature

# Runs of letters/digits (any script); punctuation and "_" separate tokens.
_TOKEN = re.compile(r"[^\W_]+")


def tokenize(text: str) -> list[str]:
  """Lower-cased letter/digit runs of `text`, e.g. "Toy Story" -> ["toy", "story"]."""
  return _TOKEN.findall(text.lower())


def stable_hash(token: str, num_buckets: int) -> int:
  """Bucket of `token` in `[0, num_buckets)`: crc32 of its UTF-8 bytes."""
  return zlib.crc32(token.encode("utf-8")) % num_buckets


def _rows_to_csr(ids_per_item: Sequence[Sequence[int]]) -> CSR:
  lengths = np.fromiter((len(ids) for ids in ids_per_item), dtype=np.int64,
                        count=len(ids_per_item))
  rows = np.repeat(np.arange(len(ids_per_item), dtype=np.int64), lengths)
  cols = np.fromiter((i for ids in ids_per_item for i in ids), dtype=np.int64,
                     count=int(lengths.sum()))
  return CSR.from_pairs(rows, cols, len(ids_per_item))


def hashed_text_feature(name: str, tokens_per_item: Sequence[Sequence[str]],
                        num_buckets: int) -> SparseFeature:
  """A "hashed_text" feature: token -> `stable_hash(token, num_buckets)`.

  Args:
    name: feature name ([A-Za-z0-9_]).
    tokens_per_item: `N` token lists (already tokenized).
    num_buckets: hash space size (the feature's `vocab_size`).
  """
  if num_buckets < 1:
    raise ValueError(f"num_buckets must be >= 1, got {num_buckets}.")
  cache: dict[str, int] = {}

  def bucket(token: str) -> int:
    b = cache.get(token)
    if b is None:
      b = cache[token] = stable_hash(token, num_buckets)
    return b

  values = _rows_to_csr([[bucket(t) for t in tokens] for tokens in tokens_per_item])
  return SparseFeature(name=name, kind="hashed_text", vocab_size=num_buckets, values=values)


def categorical_feature(name: str, labels_per_item: Sequence[Sequence[str]],
                        vocab: Sequence[str]) -> SparseFeature:
  """A "categorical" feature over a closed vocabulary.

  Args:
    name: feature name ([A-Za-z0-9_]).
    labels_per_item: `N` label lists; every label must be in `vocab`.
    vocab: the `V` label names; id `v` is `vocab[v]`.

  Raises:
    KeyError: a label is not in `vocab`.
  """
  index = {label: i for i, label in enumerate(vocab)}
  if len(index) != len(vocab):
    raise ValueError(f"feature {name}: vocab has duplicate labels.")
  values = _rows_to_csr([[index[label] for label in labels] for labels in labels_per_item])
  return SparseFeature(name=name, kind="categorical", vocab_size=len(vocab), values=values,
                       vocab=np.asarray(list(vocab), dtype=str))


def hashed_text_feature_from_tokens(name: str, words: np.ndarray, tokens: np.ndarray,
                                    num_buckets: int) -> SparseFeature:
  """`hashed_text_feature` of items given as indices into a word list.

  Args:
    name: feature name ([A-Za-z0-9_]).
    words: unicode `[W]` distinct words.
    tokens: int `[N, L]`, item i's tokens are `words[tokens[i]]`.
    num_buckets: hash space size.

  Returns:
    The same feature as `hashed_text_feature(name, words[tokens], num_buckets)`,
    hashing each distinct word once instead of each token.
  """
  if num_buckets < 1:
    raise ValueError(f"num_buckets must be >= 1, got {num_buckets}.")
  buckets = np.array([stable_hash(str(word), num_buckets) for word in words], dtype=np.int64)
  n, length = tokens.shape
  rows = np.repeat(np.arange(n, dtype=np.int64), length)
  values = CSR.from_pairs(rows, buckets[tokens.reshape(-1)], n)
  return SparseFeature(name=name, kind="hashed_text", vocab_size=num_buckets, values=values)


def categorical_feature_from_ids(name: str, ids: np.ndarray, vocab: Sequence[str]
                                 ) -> SparseFeature:
  """`categorical_feature` of items with one label each, given as ids `[N]` into `vocab`."""
  if len(set(vocab)) != len(vocab):
    raise ValueError(f"feature {name}: vocab has duplicate labels.")
  ids = np.asarray(ids, dtype=np.int64)
  if ids.size and (ids.min() < 0 or ids.max() >= len(vocab)):
    raise ValueError(f"feature {name}: ids must lie in [0, {len(vocab)}).")
  values = CSR.from_pairs(np.arange(ids.shape[0], dtype=np.int64), ids, ids.shape[0])
  return SparseFeature(name=name, kind="categorical", vocab_size=len(vocab), values=values,
                       vocab=np.asarray(list(vocab), dtype=str))
