"""PinSage's localized convolution (CONVOLVE, Algorithm 1 of the paper).

Ying et al., "Graph Convolutional Neural Networks for Web-Scale Recommender
Systems", KDD 2018 (https://arxiv.org/abs/1806.01973), Algorithm 1:

    n_u = gamma({ ReLU(Q h_v + q) | v in N(u) }, {alpha_v})   # neighbor pooling
    z_u = ReLU(W concat(h_u, n_u) + w)
    z_u = z_u / ||z_u||_2

`N(u)` are u's importance neighbors (the top-T items by random-walk visit
count) and `alpha` their L1-normalised visit counts. `gamma` is *importance
pooling*, the alpha-weighted sum; the paper's ablations also use an unweighted
mean and an elementwise max, selected here with `pooling=`.

Contract of `PinSageConv.call`:

* `self_h` float `[U, d_in]`: h_u of the nodes being computed;
* `neighbor_h` float `[U, T, d_in]`: h_v of each node's T neighbor slots, or,
  when `neighbor_index` int32 `[U, T]` is given, a table `[V, d_in]` whose row
  `neighbor_index[u, t]` is slot (u, t);
* `neighbor_weight` float `[U, T]`: alpha; a slot with weight 0 is padding and
  never contributes, whichever pooling is used. A row with no positive weight
  (an isolated item) pools to n_u = 0;
* returns float32 `[U, units]`, each row of unit L2 norm (or 0).

The signature is generic on purpose: the model gathers `neighbor_h` from the
previous level of a minibatch, and layer-wise inference calls the same layer
on all items with precomputed previous-layer vectors.
"""

from __future__ import annotations

import numbers
from typing import Any

import tensorflow as tf

POOLINGS = ("importance", "mean", "max")


@tf.keras.utils.register_keras_serializable(package="pinsage_tf")
class PinSageConv(tf.keras.layers.Layer):
  """One PinSage convolution layer (Algorithm 1, CONVOLVE).

  Example:

    conv = PinSageConv(units=256)
    h1 = conv(h0_self, h0_neighbors, weights)  # [U, 256]
  """

  def __init__(
      self,
      units: int,
      *,
      neighbor_units: int | None = None,
      pooling: str = "importance",
      normalize: bool = True,
      dropout_rate: float = 0.0,
      kernel_initializer: Any = "glorot_uniform",
      kernel_regularizer: Any = None,
      **kwargs,
  ):
    """Initializes the layer.

    Args:
      units: width of the output z_u (W's output dimension).
      neighbor_units: width of the neighbor transform ReLU(Q h_v + q); None
        uses `units`.
      pooling: "importance" (alpha-weighted sum, the paper's method), "mean"
        (unweighted mean over valid neighbors) or "max" (elementwise max over
        valid neighbors).
      normalize: L2-normalise the output (line 3 of Algorithm 1).
      dropout_rate: dropout on the layer's inputs h_u and h_v in training.
      kernel_initializer: initializer of Q and W.
      kernel_regularizer: regularizer of Q and W.
      **kwargs: base `tf.keras.layers.Layer` arguments (name, dtype, ...).

    Raises:
      ValueError: `units`/`neighbor_units` not a positive int, an unknown
        `pooling`, or `dropout_rate` outside [0, 1).
    """
    super().__init__(**kwargs)
    if not _is_positive_int(units):
      raise ValueError(f"units must be a positive int (the output width), got {units!r}.")
    if neighbor_units is not None and not _is_positive_int(neighbor_units):
      raise ValueError(
          f"neighbor_units must be a positive int or None (= units), got {neighbor_units!r}.")
    if pooling not in POOLINGS:
      raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")
    if not 0.0 <= dropout_rate < 1.0:
      raise ValueError(f"dropout_rate must lie in [0, 1), got {dropout_rate!r}.")
    self.units = int(units)
    self.neighbor_units = int(neighbor_units) if neighbor_units is not None else self.units
    self.pooling = pooling
    self.normalize = bool(normalize)
    self.dropout_rate = float(dropout_rate)
    # Kept serialised: each Dense deserialises its own initializer instance,
    # since one unseeded instance called twice repeats its values.
    self._kernel_initializer = tf.keras.initializers.serialize(
        tf.keras.initializers.get(kernel_initializer))
    self._kernel_regularizer = tf.keras.regularizers.serialize(
        tf.keras.regularizers.get(kernel_regularizer))
    # Q, q of Algorithm 1.
    self.neighbor_dense = tf.keras.layers.Dense(
        self.neighbor_units, activation="relu", name="neighbor_dense",
        kernel_initializer=tf.keras.initializers.get(self._kernel_initializer),
        kernel_regularizer=tf.keras.regularizers.get(self._kernel_regularizer))
    # W, w of Algorithm 1.
    self.combine_dense = tf.keras.layers.Dense(
        self.units, activation="relu", name="combine_dense",
        kernel_initializer=tf.keras.initializers.get(self._kernel_initializer),
        kernel_regularizer=tf.keras.regularizers.get(self._kernel_regularizer))
    self._dropout = tf.keras.layers.Dropout(self.dropout_rate)

  def call(
      self,
      self_h: tf.Tensor,
      neighbor_h: tf.Tensor,
      neighbor_weight: tf.Tensor,
      neighbor_index: tf.Tensor | None = None,
      training: bool | None = None,
  ) -> tf.Tensor:
    """Computes z_u for U nodes.

    Args:
      self_h: float `[U, d_in]`, h_u.
      neighbor_h: float `[U, T, d_in]` neighbor representations, or a table
        `[V, d_in]` when `neighbor_index` is given.
      neighbor_weight: float `[U, T]` importance weights, 0 on padding.
      neighbor_index: optional int32 `[U, T]` rows of the `neighbor_h` table.
        The neighbor transform is then computed once per table row rather than
        once per (u, t) slot -- the same result (up to dropout noise, which is
        then drawn per row) for T times fewer matmuls when V ~ U.
      training: Keras training flag (enables dropout).

    Returns:
      float32 `[U, units]`.
    """
    transformed = self.transform_neighbors(neighbor_h, training=training)
    if neighbor_index is not None:
      transformed = tf.gather(transformed, neighbor_index)  # [U, T, neighbor_units]
    pooled = self.pool(transformed, neighbor_weight)  # [U, neighbor_units]
    return self.combine(self_h, pooled, training=training)

  def transform_neighbors(self, h: tf.Tensor, training: bool | None = None) -> tf.Tensor:
    """ReLU(Q h + q) for any leading shape: `[..., d_in]` -> `[..., neighbor_units]`."""
    h = self._dropout(tf.convert_to_tensor(h, self.compute_dtype), training=training)
    return self.neighbor_dense(h)

  def pool(self, transformed: tf.Tensor, neighbor_weight: tf.Tensor) -> tf.Tensor:
    """Pools transformed neighbors `[U, T, d]` with weights `[U, T]` -> `[U, d]`."""
    weight = tf.cast(neighbor_weight, transformed.dtype)
    valid = tf.cast(weight > 0, transformed.dtype)  # [U, T]
    if self.pooling == "importance":
      # Re-normalise over the valid slots so truncated or unnormalised rows
      # still give a convex combination; an all-padding row divides 0 by 0.
      weight = weight * valid
      weight = tf.math.divide_no_nan(weight, tf.reduce_sum(weight, axis=1, keepdims=True))
      return tf.einsum("ut,utd->ud", weight, transformed)
    if self.pooling == "mean":
      count = tf.reduce_sum(valid, axis=1, keepdims=True)
      return tf.math.divide_no_nan(tf.einsum("ut,utd->ud", valid, transformed), count)
    # max: `transformed` is a ReLU output (>= 0), so zeroing the padding slots
    # cannot raise the max of the valid ones, and an all-padding row gives 0
    # (the outer maximum only matters for T == 0, where reduce_max is -inf).
    return tf.maximum(tf.reduce_max(transformed * valid[:, :, None], axis=1), 0.0)

  def combine(self, self_h: tf.Tensor, pooled: tf.Tensor,
              training: bool | None = None) -> tf.Tensor:
    """normalize(ReLU(W concat(h_u, n_u) + w)): `[U, d_in]`, `[U, neighbor_units]` -> `[U, units]`.

    With `transform_neighbors` and `pool` this splits `call` into its three
    steps, so layer-wise inference can transform every item's h once and then
    pool and combine block by block.
    """
    self_h = self._dropout(tf.convert_to_tensor(self_h, self.compute_dtype), training=training)
    z = self.combine_dense(tf.concat([self_h, pooled], axis=-1))  # [U, units]
    if self.normalize:
      # l2_normalize divides by sqrt(max(||z||^2, eps)): a zero row stays 0.
      z = tf.math.l2_normalize(z, axis=-1, epsilon=1e-12)
    return z

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config.update({
        "units": self.units,
        "neighbor_units": self.neighbor_units,
        "pooling": self.pooling,
        "normalize": self.normalize,
        "dropout_rate": self.dropout_rate,
        "kernel_initializer": self._kernel_initializer,
        "kernel_regularizer": self._kernel_regularizer,
    })
    return config


def _is_positive_int(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0
