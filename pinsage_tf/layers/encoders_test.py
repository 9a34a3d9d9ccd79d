"""Tests of ItemEncoder and bag_embedding."""

from __future__ import annotations

import pinsage_tf  # noqa: F401  (must precede tensorflow)

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from pinsage_tf import minibatch
from pinsage_tf.layers import encoders

# Three nodes: two dense columns, a 4-word "genres" and a 6-bucket "title"
# feature with -1 padding; node 1 has no genre at all.
INPUTS = minibatch.NodeInputs(
    item=tf.constant([2, 0, 4]),
    dense=tf.constant([[1., 2.], [0., -1.], [3., 0.]]),
    log_degree=tf.constant([0., 1., 2.]),
    sparse=(tf.constant([[0, 2, -1], [-1, -1, -1], [3, -1, -1]]),
            tf.constant([[5, -1], [1, 2], [0, 0]])),
)
SPARSE = [("genres", 4), ("title", 6)]


class BagEmbeddingTest(tf.test.TestCase):

  def test_mean_over_valid_ids(self):
    embedding = tf.keras.layers.Embedding(3, 2)
    embedding.build(None)
    embedding.set_weights([np.array([[1., 2.], [3., 4.], [5., 6.]], np.float32)])
    ids = tf.constant([[0, 2, -1], [-1, -1, -1], [2, -1, 2], [1, 1, 0]])
    # row 0: mean([1, 2], [5, 6]) = [3, 4]; row 1: no valid id -> 0 (not NaN);
    # row 2: mean([5, 6], [5, 6]); row 3: mean([3, 4], [3, 4], [1, 2]) = [7/3, 10/3].
    self.assertAllClose(encoders.bag_embedding(embedding, ids),
                        [[3., 4.], [0., 0.], [5., 6.], [7 / 3, 10 / 3]])

  def test_padding_gets_no_gradient(self):
    embedding = tf.keras.layers.Embedding(3, 2)
    ids = tf.constant([[1, -1], [-1, -1]])
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(encoders.bag_embedding(embedding, ids))
    grad = tf.convert_to_tensor(tape.gradient(loss, embedding.embeddings)).numpy()
    # -1 is looked up as row 0 and masked: only row 1 may receive gradient.
    self.assertAllEqual(grad[0], [0., 0.])
    self.assertAllEqual(grad[1], [1., 1.])


class ItemEncoderTest(tf.test.TestCase, parameterized.TestCase):

  def test_output_equals_manual_concatenation(self):
    encoder = encoders.ItemEncoder(8, dense_dim=2, sparse_features=SPARSE, num_items=5,
                                   use_id_embedding=True, log_degree_scale=0.5)
    out = encoder(INPUTS)
    self.assertEqual(out.shape, (3, 8))
    # The documented order: dense projection, sparse bags, log degree, id.
    parts = [
        encoder._dense_projection(INPUTS.dense),
        encoders.bag_embedding(encoder._sparse_embeddings[0], INPUTS.sparse[0]),
        encoders.bag_embedding(encoder._sparse_embeddings[1], INPUTS.sparse[1]),
        INPUTS.log_degree[:, None] * 0.5,
        encoder._id_embedding(INPUTS.item),
    ]
    expected = tf.nn.relu(tf.matmul(tf.concat(parts, 1), encoder._projection.kernel)
                          + encoder._projection.bias)
    self.assertAllClose(out, expected)

  def test_all_padding_row_is_finite(self):
    encoder = encoders.ItemEncoder(4, sparse_features=[("genres", 4)], use_log_degree=False)
    out = encoder(INPUTS._replace(sparse=(tf.fill([3, 3], -1),)))
    self.assertFalse(np.any(np.isnan(out)))
    # With only an all-padding bag the input is 0, so h = ReLU(bias) = 0.
    self.assertAllClose(out, np.zeros((3, 4)))

  def test_id_embedding_off_by_default_with_features(self):
    encoder = encoders.ItemEncoder(4, dense_dim=2, sparse_features=SPARSE, num_items=5)
    self.assertFalse(encoder.use_id_embedding)
    out = encoder(INPUTS)
    self.assertNotIn("id_embedding", " ".join(v.name for v in encoder.weights))
    # Inductive: a different item id with the same features gives the same output.
    self.assertAllClose(out, encoder(INPUTS._replace(item=tf.constant([1, 1, 1]))))

  def test_id_embedding_on_by_default_without_features(self):
    encoder = encoders.ItemEncoder(4, num_items=5, id_embedding_dim=3)
    self.assertTrue(encoder.use_id_embedding)
    inputs = INPUTS._replace(dense=tf.zeros([3, 0]), sparse=())
    out = encoder(inputs)
    self.assertIn("id_embedding", " ".join(v.name for v in encoder.weights))
    self.assertNotAllClose(out, encoder(inputs._replace(item=tf.constant([1, 1, 1]))))

  def test_items_past_num_items_get_a_zero_id_embedding(self):
    # Items appended after training (a refreshed graph) have no trained row.
    enc = encoders.ItemEncoder(4, num_items=3, use_id_embedding=True, use_log_degree=False)
    known = minibatch.NodeInputs(item=tf.constant([1, 2]), dense=tf.zeros((2, 0)),
                                 log_degree=tf.zeros(2), sparse=())
    before = enc(known).numpy()
    mixed = minibatch.NodeInputs(item=tf.constant([1, 7, 2]), dense=tf.zeros((3, 0)),
                                 log_degree=tf.zeros(3), sparse=())
    out = enc(mixed).numpy()
    np.testing.assert_array_equal(out[[0, 2]], before)  # bit-identical for known items
    projection = enc._projection
    zero_input = projection(tf.zeros((1, enc.id_embedding_dim))).numpy()[0]
    np.testing.assert_array_equal(out[1], zero_input)

  def test_config_round_trip(self):
    encoder = encoders.ItemEncoder(6, dense_dim=2, sparse_features=SPARSE, num_items=5,
                                   use_id_embedding=True, log_degree_scale=0.3,
                                   dense_projection_dim=3, sparse_embedding_dim=4,
                                   id_embedding_dim=2, name="enc")
    out = encoder(INPUTS)
    config = encoder.get_config()
    self.assertEqual(config["sparse_features"], [["genres", 4], ["title", 6]])
    clone = encoders.ItemEncoder.from_config(config)
    self.assertEqual(clone.get_config(), config)
    self.assertEqual(clone.sparse_features, (("genres", 4), ("title", 6)))
    clone(INPUTS)
    clone.set_weights(encoder.get_weights())
    self.assertAllClose(clone(INPUTS), out)
    restored = tf.keras.layers.deserialize(tf.keras.layers.serialize(encoder))
    self.assertIsInstance(restored, encoders.ItemEncoder)

  def test_wrong_number_of_sparse_features(self):
    encoder = encoders.ItemEncoder(4, sparse_features=[("genres", 4)])
    with self.assertRaisesRegex(ValueError, "NodeInputs.sparse has 2"):
      encoder(INPUTS)

  def test_wrong_dense_width(self):
    encoder = encoders.ItemEncoder(4, dense_dim=3, sparse_features=SPARSE)
    with self.assertRaisesRegex(ValueError, "dense_dim=3"):
      encoder(INPUTS)

  @parameterized.named_parameters(
      ("zero_hidden", dict(hidden_dim=0), "hidden_dim"),
      ("negative_dense", dict(hidden_dim=4, dense_dim=-1), "dense_dim"),
      ("bad_sparse", dict(hidden_dim=4, sparse_features=[("a", 0)]), "vocab_size"),
      ("duplicate_sparse", dict(hidden_dim=4, sparse_features=[("a", 2), ("a", 3)]), "unique"),
      ("id_without_items", dict(hidden_dim=4, use_id_embedding=True), "num_items"),
      ("no_input", dict(hidden_dim=4, use_log_degree=False, use_id_embedding=False), "no input"),
  )
  def test_invalid_arguments(self, kwargs, message):
    with self.assertRaisesRegex(ValueError, message):
      encoders.ItemEncoder(**kwargs)


if __name__ == "__main__":
  tf.test.main()
