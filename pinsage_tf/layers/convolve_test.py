"""Tests of PinSageConv on hand-computed inputs."""

from __future__ import annotations

import pinsage_tf  # noqa: F401  (must precede tensorflow)

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from pinsage_tf.layers import convolve

# Three nodes, d_in = 2, T = 2 neighbor slots.
SELF_H = np.array([[1., 0.], [0., 0.], [0., 1.]], np.float32)
NEIGHBOR_H = np.array([
    [[2., 0.], [0., 4.]],   # node 0: two real neighbors
    [[5., 5.], [7., 7.]],   # node 1: isolated (all-zero weights): values must not leak
    [[-1., 3.], [9., 9.]],  # node 2: one real neighbor, then a padding slot
], np.float32)
WEIGHTS = np.array([[0.25, 0.75], [0., 0.], [0.5, 0.]], np.float32)


def _conv(pooling="importance", normalize=True, combine_bias=(0., 0.)):
  """A conv with Q = I, q = 0 (so ReLU(Q h + q) = ReLU(h)) and W = [I; I].

  With W stacking two identities, z = ReLU(h_u + n_u + w).
  """
  conv = convolve.PinSageConv(2, pooling=pooling, normalize=normalize)
  conv(SELF_H, NEIGHBOR_H, WEIGHTS)  # creates the variables
  conv.neighbor_dense.set_weights([np.eye(2, dtype=np.float32), np.zeros(2, np.float32)])
  conv.combine_dense.set_weights([np.vstack([np.eye(2), np.eye(2)]).astype(np.float32),
                                  np.array(combine_bias, np.float32)])
  return conv


class PinSageConvTest(tf.test.TestCase, parameterized.TestCase):

  def test_importance_pooling_unnormalized(self):
    z = _conv(normalize=False)(SELF_H, NEIGHBOR_H, WEIGHTS)
    # node 0: n = 0.25 * [2, 0] + 0.75 * [0, 4] = [0.5, 3]; z = [1, 0] + n.
    # node 1: no valid neighbor -> n = 0; z = ReLU(0) = 0.
    # node 2: ReLU([-1, 3]) = [0, 3]; its weight 0.5 re-normalises to 1 and the
    #         padding slot [9, 9] is ignored -> n = [0, 3]; z = [0, 1] + n.
    self.assertAllClose(z, [[1.5, 3.], [0., 0.], [0., 4.]])

  def test_importance_pooling_normalized(self):
    z = _conv()(SELF_H, NEIGHBOR_H, WEIGHTS)
    # [1.5, 3] / sqrt(1.5^2 + 3^2) = [1, 2] / sqrt(5); the zero row stays 0 (no NaN).
    self.assertAllClose(z, [[1 / np.sqrt(5), 2 / np.sqrt(5)], [0., 0.], [0., 1.]])
    self.assertFalse(np.any(np.isnan(z)))

  def test_importance_weights_are_renormalised(self):
    conv = _conv(normalize=False)
    # [1, 3] is [0.25, 0.75] before L1 normalisation.
    z = conv(SELF_H[:1], NEIGHBOR_H[:1], np.array([[1., 3.]], np.float32))
    self.assertAllClose(z, [[1.5, 3.]])

  def test_mean_pooling(self):
    z = _conv("mean", normalize=False)(SELF_H, NEIGHBOR_H, WEIGHTS)
    # node 0: unweighted mean([2, 0], [0, 4]) = [1, 2]; z = [2, 2].
    # node 2: only the valid slot counts: n = [0, 3]; z = [0, 4].
    self.assertAllClose(z, [[2., 2.], [0., 0.], [0., 4.]])

  def test_max_pooling(self):
    z = _conv("max", normalize=False)(SELF_H, NEIGHBOR_H, WEIGHTS)
    # node 0: max([2, 0], [0, 4]) = [2, 4]; z = [3, 4].
    # node 1: all padding -> 0 although the padded values are 5 and 7.
    # node 2: the padding slot [9, 9] would win the max if it were not masked.
    self.assertAllClose(z, [[3., 4.], [0., 0.], [0., 4.]])

  def test_combine_bias_and_relu(self):
    z = _conv(normalize=False, combine_bias=(-2., 0.))(SELF_H, NEIGHBOR_H, WEIGHTS)
    # node 0: ReLU([1.5 - 2, 3]) = [0, 3]; node 2: ReLU([0 - 2, 4]) = [0, 4].
    self.assertAllClose(z, [[0., 3.], [0., 0.], [0., 4.]])

  @parameterized.parameters("importance", "mean", "max")
  def test_table_path_matches_gathered_path(self, pooling):
    conv = convolve.PinSageConv(4, neighbor_units=3, pooling=pooling)
    rng = np.random.default_rng(0)
    table = rng.normal(size=(5, 2)).astype(np.float32)
    index = np.array([[1, 4], [0, 0], [3, 2]], np.int32)
    gathered = conv(SELF_H, table[index], WEIGHTS)
    from_table = conv(SELF_H, table, WEIGHTS, neighbor_index=index)
    self.assertAllClose(gathered, from_table)
    self.assertEqual(gathered.shape, (3, 4))

  def test_three_steps_compose_to_call(self):
    # What layer-wise inference does: transform every item once, then pool and
    # combine one block of items at a time.
    conv = convolve.PinSageConv(4, neighbor_units=3)
    rng = np.random.default_rng(1)
    table = rng.normal(size=(5, 2)).astype(np.float32)
    index = np.array([[1, 4], [0, 0], [3, 2]], np.int32)
    transformed = conv.transform_neighbors(table)  # [5, 3]
    block = conv.combine(SELF_H, conv.pool(tf.gather(transformed, index), WEIGHTS))
    self.assertAllClose(block, conv(SELF_H, table[index], WEIGHTS))

  def test_dropout_only_in_training(self):
    conv = convolve.PinSageConv(8, dropout_rate=0.5)
    x = np.ones((4, 2), np.float32)
    nbr = np.ones((4, 3, 2), np.float32)
    w = np.full((4, 3), 1 / 3, np.float32)
    inference = conv(x, nbr, w, training=False)
    self.assertAllClose(inference, conv(x, nbr, w))
    tf.random.set_seed(1)
    self.assertNotAllClose(inference, conv(x, nbr, w, training=True))

  def test_gradients_do_not_flow_from_padding(self):
    conv = convolve.PinSageConv(3)
    nbr = tf.constant(NEIGHBOR_H)
    with tf.GradientTape() as tape:
      tape.watch(nbr)
      loss = tf.reduce_sum(conv(SELF_H, nbr, WEIGHTS))
    grad = tape.gradient(loss, nbr).numpy()
    self.assertAllEqual(grad[1], np.zeros((2, 2)))  # isolated node
    self.assertAllEqual(grad[2, 1], np.zeros(2))  # padding slot
    self.assertFalse(np.any(np.isnan(grad)))

  def test_config_round_trip(self):
    conv = convolve.PinSageConv(5, neighbor_units=3, pooling="max", normalize=False,
                                dropout_rate=0.25, kernel_regularizer="l2", name="c")
    conv(SELF_H, NEIGHBOR_H, WEIGHTS)
    clone = convolve.PinSageConv.from_config(conv.get_config())
    self.assertEqual(clone.get_config(), conv.get_config())
    clone(SELF_H, NEIGHBOR_H, WEIGHTS)
    clone.set_weights(conv.get_weights())
    self.assertAllClose(clone(SELF_H, NEIGHBOR_H, WEIGHTS), conv(SELF_H, NEIGHBOR_H, WEIGHTS))
    # Registered, so generic Keras deserialisation finds the class.
    restored = tf.keras.layers.deserialize(tf.keras.layers.serialize(conv))
    self.assertIsInstance(restored, convolve.PinSageConv)

  def test_q_and_w_get_different_initial_values(self):
    conv = convolve.PinSageConv(2, neighbor_units=2)
    conv(np.ones((1, 2), np.float32), np.ones((1, 1, 2), np.float32), np.ones((1, 1), np.float32))
    q = conv.neighbor_dense.kernel.numpy()
    w = conv.combine_dense.kernel.numpy()
    self.assertNotAllClose(q, w[:2])

  @parameterized.named_parameters(
      ("zero_units", dict(units=0), "units"),
      ("float_units", dict(units=2.5), "units"),
      ("bad_neighbor_units", dict(units=2, neighbor_units=-1), "neighbor_units"),
      ("bad_pooling", dict(units=2, pooling="sum"), "importance"),
      ("bad_dropout", dict(units=2, dropout_rate=1.0), "dropout_rate"),
  )
  def test_invalid_arguments(self, kwargs, message):
    with self.assertRaisesRegex(ValueError, message):
      convolve.PinSageConv(**kwargs)


if __name__ == "__main__":
  tf.test.main()
