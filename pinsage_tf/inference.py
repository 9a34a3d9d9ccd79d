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


_ALIGN = 64  # bytes: TensorFlow shares a host buffer only at this alignment


def host_array(shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
  """An uninitialised C-ordered array that `shared_tensor` can hand to TensorFlow
  without a copy (its buffer is 64-byte aligned; numpy's large allocations are not)."""
  dtype = np.dtype(dtype)
  nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  raw = np.empty(nbytes + _ALIGN, np.uint8)
  offset = (-raw.ctypes.data) % _ALIGN
  return raw[offset:offset + nbytes].view(dtype).reshape(shape)


def shared_tensor(array: np.ndarray) -> tf.Tensor:
  """`array` as a tensor over the same buffer (DLPack) when it is aligned,
  writable and C-contiguous, else a copy. The caller must not write to
  `array` while the tensor is in use."""
  if (array.size and array.flags.c_contiguous and array.flags.writeable
      and array.ctypes.data % _ALIGN == 0):
    return tf.experimental.dlpack.from_dlpack(array.__dlpack__())
  return tf.constant(array)


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
    constants = pipeline.table_tensors(tables)
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
        out = host_array((n, h.shape[1]))
      out[start:stop] = h
      if progress:
        progress("inputs", stop, n)
    return out

  def convolve(self, layer: int, h_prev: np.ndarray,
               progress: ProgressFn | None = None, *, in_place: bool = False,
               transformed: np.ndarray | None = None) -> np.ndarray:
    """Applies convolution `layer` (0-based) to every item once: `[N, d_out]`.

    The neighbor transform ReLU(Q h + q) runs once per item over the whole
    previous layer; each block then gathers its neighbors' transformed rows,
    pools them with the importance weights and combines with its own h.
    With `in_place` (and `d_out == d_in`), the result overwrites `h_prev`
    (a block's own rows are read before they are written; its neighbors come
    from the transformed copy), so a layer holds two `[N, d]` arrays, not three.
    `transformed` passes `transform_all(layer, h_prev)` when the caller has it.
    """
    n = self.tables.num_items
    out = h_prev if in_place else None
    for start, stop, z in self._convolved_blocks(layer, h_prev, transformed):
      if out is None:
        out = host_array((n, z.shape[1]))
      elif out.shape[1] != z.shape[1]:
        raise ValueError(f"in_place needs d_out == d_in, got {z.shape[1]} != {out.shape[1]}.")
      out[start:stop] = z
      if progress:
        progress(f"layer {layer + 1}", stop, n)
    return out

  def _convolved_blocks(self, layer: int, h_prev: np.ndarray,
                        transformed: np.ndarray | None = None):
    """Yields `(start, stop, z)`: convolution `layer`'s output of each block of items."""
    n, tables = self.tables.num_items, self.tables
    if transformed is None:
      transformed = self.transform_all(layer, h_prev)
    transformed = shared_tensor(transformed)
    for start, stop in _blocks(n, self.batch_size):
      yield start, stop, self._step[layer](h_prev[start:stop], tables.neighbor_ids[start:stop],
                                           tables.neighbor_weights[start:stop],
                                           transformed).numpy()

  def transform_all(self, layer: int, h: np.ndarray) -> np.ndarray:
    """ReLU(Q h + q) of convolution `layer` for every row of `h`: `[N, neighbor_dim]`
    (a `host_array`)."""
    out = None
    for start, stop in _blocks(h.shape[0], self.batch_size):
      z = self._transform[layer](h[start:stop]).numpy()
      if out is None:
        out = host_array((h.shape[0], z.shape[1]))
      out[start:stop] = z
    return out if out is not None else np.zeros((0, 0), np.float32)

  def advance(self, layer: int, h: np.ndarray, progress: ProgressFn | None = None, *,
              transformed: np.ndarray | None = None) -> np.ndarray:
    """h^{layer+1} of every item from `h` = h^layer, which it consumes: written
    over in place when the widths allow (every convolution outputs hidden_dim)."""
    return self.convolve(layer, h, progress, transformed=transformed,
                         in_place=h.shape[1] == self.model.config.hidden_dim)

  def outputs(self, progress: ProgressFn | None = None, with_bias: bool = True
              ) -> tuple[np.ndarray, np.ndarray | None]:
    """All items' embeddings and (with `with_bias` and a bias model) biases.

    Keeps h^{K-1} of all items in `last_inputs` for `pivot_embeddings`.
    """
    h = self.input_representations(progress)
    last = self.model.config.num_layers - 1
    for layer in range(last):
      h = self.advance(layer, h, progress)
    self.last_inputs = h
    # The last layer goes through the head block by block: h^K is never held whole.
    n, dim = self.tables.num_items, self.model.config.embedding_dim
    bias = with_bias and getattr(self.model.config, "item_bias", False)
    vectors = np.empty((n, dim), np.float32)
    biases = np.empty(n, np.float32) if bias else None
    for start, stop, z in self._convolved_blocks(last, h):
      if bias:
        v, b = self._head_and_bias(z)
        biases[start:stop] = np.reshape(b.numpy(), [-1])
      else:
        v = self._head(z)
      vectors[start:stop] = v.numpy()
      if progress:
        progress(f"layer {last + 1}", stop, n)
        progress("head", stop, n)
    return vectors, biases

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
    h_table = shared_tensor(self.last_inputs)
    transformed = shared_tensor(self.transform_all(-1, self.last_inputs))
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
