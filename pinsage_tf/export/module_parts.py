"""Pieces the exported `tf.Module`s are built from.

`StringIndex` maps raw string ids to rows through a vocabulary asset and fails
the request, naming the ids, for an unknown one. `Untracked` lets a signature
call a Keras model without `tf.Module` serialising it: the exported module
saves the model's variables as plain variables instead.
"""

from __future__ import annotations

import tensorflow as tf


class StringIndex(tf.Module):
  """Raw string id -> row index, from a vocabulary asset (one id per line).

  The vocabulary travels as a SavedModel asset (no 2 GB graph-constant limit)
  and initialises a `StaticHashTable` on load, in Python and in TF Serving.
  """

  def __init__(self, vocab_file: str, size: int, what: str, name: str | None = None):
    super().__init__(name=name)
    self._what = what
    self._size = int(size)
    self.vocabulary = tf.saved_model.Asset(vocab_file)
    self.table = tf.lookup.StaticHashTable(
        tf.lookup.TextFileInitializer(
            self.vocabulary, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
            tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER, vocab_size=self._size),
        default_value=-1)

  def lookup(self, ids: tf.Tensor, where: str, padding: str | None = None) -> tf.Tensor:
    """int32 indices of `ids` (any shape); fails naming unknown ids.

    Args:
      ids: string tensor.
      where: the signature name, prefixed to the error message.
      padding: a value that means "no id" and maps to -1 instead of failing.
    """
    index = self.table.lookup(ids)
    known = index >= 0
    if padding is not None:
      known = known | tf.equal(ids, padding)
    unknown = tf.boolean_mask(ids, tf.logical_not(known))
    check = tf.debugging.Assert(
        tf.equal(tf.size(unknown), 0),
        [f"{where}: unknown {self._what} (not among the {self._size} exported):", unknown],
        summarize=20, name="unknown_id")
    with tf.control_dependencies([check]):
      return tf.cast(tf.identity(index), tf.int32)


class Untracked:
  """Holds an object without `tf.Module` tracking it (no Keras serialisation)."""

  def __init__(self, value):
    self.value = value
