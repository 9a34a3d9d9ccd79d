"""Layer-wise embedding inference without recomputation (local runner).

The paper (section 3.3, "Efficient MapReduce inference") computes the final
embeddings of all items without the repeated work of applying the model to each
item's K-hop neighborhood separately: layer 1 is computed once for ALL items
from their neighbors' input representations, then layer 2 from the layer-1
results, and so on, then the dense head. Every item is computed exactly once
per layer.

Contract: `layerwise_embeddings(model, tables)` returns float32
`[num_items, embedding_dim]` L2-normalised embeddings, equal (up to float
round-off) to applying the model to any minibatch containing the item, because
the model's training-time computation graph uses the same neighborhood table.
`layerwise_outputs` also returns the item biases `[num_items]` of a model
with `PinSageConfig.item_bias` (from the same last-layer representations).
`LayerwiseInference` holds the traced stages for one model and table set,
for callers that embed again after every epoch.

Pivots. `LayerwiseInference.outputs` keeps h^{K-1} of every item
(`last_inputs`); `pivot_embeddings(ids, weights)` then embeds any number of
pivots from a pivot neighborhood table (`neighborhoods.compute_pivot_
neighborhoods`): the last layer's neighbor transform of all items once, then
per block of pivots the model's `pivot_hidden` and head -- equal to the
pivots' embeddings in a training minibatch with the same table.

`pinsage_tf.beam_inference` runs the same per-layer computation as an Apache
Beam pipeline; both call the model's `encode_inputs`, `convolve` and `head`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf

from pinsage_tf import pipeline

ProgressFn = Callable[[str, int, int], None]


def _blocks(n: int, batch_size: int):
  for start in range(0, n, batch_size):
    yield start, min(start + batch_size, n)


class LayerwiseInference:
  """The per-layer computation for one `(model, tables)`, traced once.

  Every stage is a `tf.function` built here, once: calling the same instance
  again (e.g. after every training epoch, on updated weights; variables are
  read at call time) re-uses the traces instead of tracing new functions.
  The module-level functions below build a throw-away instance.

  Args:
    model: a `PinSageModel` (`encode_inputs`, `convs`, `head`,
      `head_and_bias`, `config`).
    tables: the graph's `SamplingTables` (the training neighborhood table).
    batch_size: items per block; bounds memory per step.
  """

  def __init__(self, model, tables: pipeline.SamplingTables, *, batch_size: int = 8192):
    self.model, self.tables, self.batch_size = model, tables, batch_size
    constants = pipeline.table_constants(tables)
    self._encode = tf.function(lambda items: model.encode_inputs(
        pipeline.gather_node_inputs(tables, items, constants)), reduce_retracing=True)
    self._transform = [tf.function(conv.transform_neighbors, reduce_retracing=True)
                       for conv in model.convs]

    def make_step(conv):
      def step(self_h, nbr, w, transformed):
        return conv.combine(self_h, conv.pool(tf.gather(transformed, nbr), w))
      return tf.function(step, reduce_retracing=True)

    self._step = [make_step(conv) for conv in model.convs]
    self._head = tf.function(model.head, reduce_retracing=True)
    self._head_and_bias = tf.function(model.head_and_bias, reduce_retracing=True)

    def pivot_step(h_table, transformed, ids, weights):
      return model.head(model.pivot_hidden(h_table, ids, weights, transformed=transformed))

    self._pivot_step = tf.function(pivot_step, reduce_retracing=True)
    self.last_inputs: np.ndarray | None = None

  def input_representations(self, progress: ProgressFn | None = None) -> np.ndarray:
    """h^0 of every item: float32 `[N, hidden]` (the model's input encoder)."""
    n = self.tables.num_items
    out = None
    for start, stop in _blocks(n, self.batch_size):
      h = self._encode(tf.range(start, stop, dtype=tf.int32)).numpy()
      if out is None:
        out = np.empty((n, h.shape[1]), np.float32)
      out[start:stop] = h
      if progress:
        progress("inputs", stop, n)
    return out

  def convolve(self, layer: int, h_prev: np.ndarray,
               progress: ProgressFn | None = None) -> np.ndarray:
    """Applies convolution `layer` (0-based) to every item once: `[N, d_out]`.

    The neighbor transform ReLU(Q h + q) runs once per item over the whole
    previous layer; each block then gathers its neighbors' transformed rows,
    pools them with the importance weights and combines with its own h.
    """
    n, tables = self.tables.num_items, self.tables
    transformed = tf.constant(np.concatenate(
        [self._transform[layer](h_prev[start:stop]).numpy()
         for start, stop in _blocks(n, self.batch_size)]))
    out = None
    for start, stop in _blocks(n, self.batch_size):
      z = self._step[layer](h_prev[start:stop], tables.neighbor_ids[start:stop],
                            tables.neighbor_weights[start:stop], transformed).numpy()
      if out is None:
        out = np.empty((n, z.shape[1]), np.float32)
      out[start:stop] = z
      if progress:
        progress(f"layer {layer + 1}", stop, n)
    return out

  def head(self, h: np.ndarray, progress: ProgressFn | None = None) -> np.ndarray:
    """The dense head and L2 normalisation for every row of `h`."""
    parts = []
    for start, stop in _blocks(h.shape[0], self.batch_size):
      parts.append(self._head(h[start:stop]).numpy())
      if progress:
        progress("head", stop, h.shape[0])
    return np.concatenate(parts, axis=0).astype(np.float32)

  def head_and_bias(self, h: np.ndarray, progress: ProgressFn | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """`head` and the item biases float32 `[N]` in one pass (`model.head_and_bias`)."""
    vectors, biases = [], []
    for start, stop in _blocks(h.shape[0], self.batch_size):
      z, b = self._head_and_bias(h[start:stop])
      vectors.append(z.numpy())
      biases.append(b.numpy())
      if progress:
        progress("head", stop, h.shape[0])
    return (np.concatenate(vectors, axis=0).astype(np.float32),
            np.concatenate(biases, axis=0).astype(np.float32))

  def outputs(self, progress: ProgressFn | None = None, with_bias: bool = True
              ) -> tuple[np.ndarray, np.ndarray | None]:
    """All items' embeddings and (with `with_bias` and a bias model) biases.

    Keeps h^{K-1} of all items in `last_inputs` for `pivot_embeddings`.
    """
    h = self.input_representations(progress)
    for layer in range(self.model.config.num_layers):
      if layer == self.model.config.num_layers - 1:
        self.last_inputs = h
      h = self.convolve(layer, h, progress)
    if with_bias and getattr(self.model.config, "item_bias", False):
      return self.head_and_bias(h, progress)
    return self.head(h, progress), None

  def pivot_embeddings(self, neighbor_ids: np.ndarray, neighbor_weights: np.ndarray,
                       progress: ProgressFn | None = None) -> np.ndarray:
    """float32 `[P, embedding_dim]`: pivots embedded from their neighborhoods.

    Args:
      neighbor_ids: int `[P, Tp]` item rows, -1 on padding
        (`Neighborhoods.ids` of a pivot table).
      neighbor_weights: float `[P, Tp]` importance weights.
      progress: optional callback `(stage, done, total)`.

    Raises:
      ValueError: `outputs` has not run yet (it computes h^{K-1}).
    """
    if self.last_inputs is None:
      raise ValueError("pivot_embeddings needs the items' h^{K-1}: call outputs() first.")
    ids = np.asarray(neighbor_ids)
    weights = np.where(ids >= 0, np.asarray(neighbor_weights), 0.0).astype(np.float32)
    ids = np.maximum(ids, 0).astype(np.int32)
    h_table = tf.constant(self.last_inputs)
    transformed = tf.constant(np.concatenate(
        [self._transform[-1](self.last_inputs[start:stop]).numpy()
         for start, stop in _blocks(self.last_inputs.shape[0], self.batch_size)]))
    count = ids.shape[0]
    out = np.empty((count, self.model.config.embedding_dim), np.float32)
    for start, stop in _blocks(count, self.batch_size):
      out[start:stop] = self._pivot_step(h_table, transformed, ids[start:stop],
                                         weights[start:stop]).numpy()
      if progress:
        progress("pivots", stop, count)
    return out


def input_representations(model, tables: pipeline.SamplingTables, *, batch_size: int = 8192,
                          progress: ProgressFn | None = None) -> np.ndarray:
  """h^0 of every item: float32 `[N, hidden]` (the model's input encoder)."""
  return LayerwiseInference(model, tables, batch_size=batch_size).input_representations(progress)


def convolve_all(model, layer: int, h_prev: np.ndarray, tables: pipeline.SamplingTables, *,
                 batch_size: int = 8192, progress: ProgressFn | None = None) -> np.ndarray:
  """Applies convolution `layer` (0-based) to every item once (`LayerwiseInference.convolve`)."""
  return LayerwiseInference(model, tables, batch_size=batch_size).convolve(layer, h_prev,
                                                                           progress)


def layerwise_embeddings(model, tables: pipeline.SamplingTables, *, batch_size: int = 8192,
                         progress: ProgressFn | None = None) -> np.ndarray:
  """Final embeddings of all items, float32 `[N, embedding_dim]`.

  Args:
    model: a `PinSageModel` (anything with `encode_inputs`, `convs`,
      `head` and `config.num_layers`).
    tables: the graph's `SamplingTables` (the training neighborhood table).
    batch_size: items per block; bounds memory per step.
    progress: optional callback `(stage, done, total)`.
  """
  return layerwise_outputs(model, tables, batch_size=batch_size, progress=progress,
                           with_bias=False)[0]


def layerwise_outputs(model, tables: pipeline.SamplingTables, *, batch_size: int = 8192,
                      progress: ProgressFn | None = None, with_bias: bool = True
                      ) -> tuple[np.ndarray, np.ndarray | None]:
  """`layerwise_embeddings` and the item biases float32 `[N]`.

  The biases are None when the model has none (`PinSageConfig.item_bias`
  False) or `with_bias` is False. Repeated calls (every epoch) should keep a
  `LayerwiseInference` instead, so nothing is traced again.
  """
  return LayerwiseInference(model, tables, batch_size=batch_size).outputs(progress, with_bias)
