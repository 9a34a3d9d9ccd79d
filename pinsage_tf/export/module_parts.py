"""Pieces the exported `tf.Module`s are built from.

`StringIndex` maps raw string ids to rows through a vocabulary asset and fails
the request, naming the ids, for an unknown one. `corpus_variable` holds a
table with one row per item (or pivot) under an unknown leading dimension.
`Untracked` lets a signature call a Keras model without `tf.Module`
serialising it: the exported module saves the model's variables as plain
variables instead.

Nothing the traced functions contain depends on the number of items or
pivots (sizes are read from the tensors at run time), so a saved graph
serves a grown corpus given new variable values and vocabularies
(`pinsage_tf.export.reuse`).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


class StringIndex(tf.Module):
  """Raw string id -> row index, from a vocabulary asset (one id per line).

  The vocabulary travels as a SavedModel asset (no 2 GB graph-constant limit)
  and initialises a `StaticHashTable` on load, in Python and in TF Serving.
  """

  def __init__(self, vocab_file: str, size: int, what: str, name: str | None = None):
    super().__init__(name=name)
    self._what = what
    self.vocabulary = tf.saved_model.Asset(vocab_file)
    # No vocab_size in the graph: a reused graph reads a longer vocabulary.
    self.table = tf.lookup.StaticHashTable(
        tf.lookup.TextFileInitializer(
            self.vocabulary, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
            tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER),
        default_value=-1)
    if int(self.table.size()) != int(size):
      raise ValueError(f"{vocab_file} holds {int(self.table.size())} {what}, expected {size} "
                       "(one per line, no duplicates).")

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
        [f"{where}: unknown {self._what} (not among the exported ids):", unknown],
        summarize=20, name="unknown_id")
    with tf.control_dependencies([check]):
      return tf.cast(tf.identity(index), tf.int32)


def corpus_variable(value: np.ndarray, name: str) -> tf.Variable:
  """A non-trainable variable holding `value` `[rows, ...]`, its row count left unknown."""
  value = np.asarray(value)
  return tf.Variable(value, trainable=False, name=name,
                     shape=tf.TensorShape([None, *value.shape[1:]]))


class Untracked:
  """Holds an object without `tf.Module` tracking it (no Keras serialisation)."""

  def __init__(self, value):
    self.value = value
