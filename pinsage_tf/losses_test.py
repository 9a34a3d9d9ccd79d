"""Tests of the losses on hand-computed 2-d embeddings."""

from __future__ import annotations

import pinsage_tf  # noqa: F401  (must precede tensorflow)

import numpy as np
import tensorflow as tf

from pinsage_tf import losses

# Two queries. Scores z_q . z:
#   query 0 = [1, 0]: positive [.8, .6] -> 0.8; shared negatives -> 0.6, 1.0, 0.0
#   query 1 = [0, 1]: positive [0, 1]   -> 1.0; shared negatives -> 0.8, 0.0, 1.0
Z_QUERY = np.array([[1., 0.], [0., 1.]], np.float32)
Z_POSITIVE = np.array([[.8, .6], [0., 1.]], np.float32)
Z_NEGATIVE = np.array([[.6, .8], [1., 0.], [0., 1.]], np.float32)
# Hard negatives, two slots per query:
#   query 0: [1, 0] -> 1.0 (used), [.6, .8] -> 0.6 (masked out)
#   query 1: [.6, .8] -> 0.8, [0, 1] -> 1.0 (both used)
Z_HARD = np.array([[[1., 0.], [.6, .8]], [[.6, .8], [0., 1.]]], np.float32)
HARD_MASK = np.array([[1., 0.], [1., 1.]], np.float32)


class MaxMarginLossTest(tf.test.TestCase):

  def test_shared_negatives(self):
    loss = losses.max_margin_loss(Z_QUERY, Z_POSITIVE, Z_NEGATIVE, margin=0.1)
    # query 0: hinges max(0, s_n - 0.8 + 0.1) = [0, 0.3, 0] -> mean 0.1
    # query 1: hinges max(0, s_n - 1.0 + 0.1) = [0, 0, 0.1] -> mean 0.1 / 3
    self.assertAllClose(loss, [0.1, 0.1 / 3])

  def test_hard_negatives_join_the_negative_set(self):
    loss = losses.max_margin_loss(Z_QUERY, Z_POSITIVE, Z_NEGATIVE, Z_HARD, HARD_MASK,
                                  margin=0.1)
    # query 0: shared hinges sum 0.3 + used hard hinge 0.3, over 3 + 1 negatives.
    # query 1: shared sum 0.1 + hard hinges [0, 0.1], over 3 + 2 negatives.
    self.assertAllClose(loss, [0.6 / 4, 0.2 / 5])

  def test_hard_mask_none_uses_every_hard_negative(self):
    loss = losses.max_margin_loss(Z_QUERY, Z_POSITIVE, Z_NEGATIVE, Z_HARD, margin=0.1)
    # query 0 now also counts the 0.6-score hard negative (hinge 0): 0.6 / 5.
    self.assertAllClose(loss, [0.6 / 5, 0.2 / 5])

  def test_negative_mask_drops_accidental_hits(self):
    mask = np.array([[1., 0., 1.], [1., 1., 1.]], np.float32)
    loss = losses.max_margin_loss(Z_QUERY, Z_POSITIVE, Z_NEGATIVE, negative_mask=mask,
                                  margin=0.1)
    # query 0 loses its only violating negative: hinges [0, 0] -> 0.
    self.assertAllClose(loss, [0., 0.1 / 3])

  def test_empty_negative_set_gives_zero(self):
    loss = losses.max_margin_loss(Z_QUERY, Z_POSITIVE, Z_NEGATIVE,
                                  negative_mask=np.zeros((2, 3), np.float32))
    self.assertAllEqual(loss, [0., 0.])

  def test_gradient_pushes_violating_negative_away(self):
    z_neg = tf.Variable(Z_NEGATIVE)
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(losses.max_margin_loss(Z_QUERY, Z_POSITIVE, z_neg, margin=0.1))
    grad = tape.gradient(loss, z_neg).numpy()
    # d/dz_n of mean hinge = z_q / 3 for each active hinge: negative 1 for
    # query 0 ([1, 0] / 3), negative 2 for query 1 ([0, 1] / 3); negative 0 inactive.
    self.assertAllClose(grad, [[0., 0.], [1 / 3, 0.], [0., 1 / 3]])

  def test_hard_mask_without_hard_negatives(self):
    with self.assertRaisesRegex(ValueError, "z_hard"):
      losses.max_margin_loss(Z_QUERY, Z_POSITIVE, Z_NEGATIVE, hard_mask=HARD_MASK)


class SampledSoftmaxLossTest(tf.test.TestCase):

  def test_shared_negatives(self):
    loss = losses.sampled_softmax_loss(Z_QUERY, Z_POSITIVE, Z_NEGATIVE, temperature=1.0)
    # query 0: logits [0.8 | 0.6, 1.0, 0.0] -> log(e^.8 + e^.6 + e^1 + 1) - 0.8
    #          = log(7.7659) - 0.8 = 1.2498
    # query 1: logits [1.0 | 0.8, 0.0, 1.0] -> log(e + e^.8 + 1 + e) - 1.0
    #          = log(8.6621) - 1.0 = 1.1590
    self.assertAllClose(loss, [1.2498, 1.1590], atol=1e-4)

  def test_temperature_scales_logits(self):
    loss = losses.sampled_softmax_loss(Z_QUERY, Z_POSITIVE, Z_NEGATIVE, temperature=0.5)
    expected0 = np.log(np.exp([1.6, 1.2, 2.0, 0.0]).sum()) - 1.6
    expected1 = np.log(np.exp([2.0, 1.6, 0.0, 2.0]).sum()) - 2.0
    self.assertAllClose(loss, [expected0, expected1], atol=1e-5)

  def test_masks_and_hard_negatives(self):
    mask = np.array([[1., 0., 1.], [1., 1., 1.]], np.float32)
    loss = losses.sampled_softmax_loss(Z_QUERY, Z_POSITIVE, Z_NEGATIVE, Z_HARD, HARD_MASK,
                                       negative_mask=mask, temperature=1.0)
    # query 0: positive 0.8, shared 0.6 and 0.0 (1.0 masked), hard 1.0 (0.6 masked).
    expected0 = np.log(np.exp([0.8, 0.6, 0.0, 1.0]).sum()) - 0.8
    # query 1: positive 1.0, shared 0.8, 0.0, 1.0, hard 0.8, 1.0.
    expected1 = np.log(np.exp([1.0, 0.8, 0.0, 1.0, 0.8, 1.0]).sum()) - 1.0
    self.assertAllClose(loss, [expected0, expected1], atol=1e-5)

  def test_no_negative_gives_zero_not_nan(self):
    loss = losses.sampled_softmax_loss(Z_QUERY, Z_POSITIVE, Z_NEGATIVE,
                                       negative_mask=np.zeros((2, 3), np.float32))
    self.assertAllClose(loss, [0., 0.])

  def test_log_count_correction_shifts_shared_logits_only(self):
    log_count = np.array([0.5, -1.0, 2.0], np.float32)
    mask = np.array([[1., 0., 1.], [1., 1., 1.]], np.float32)
    loss = losses.sampled_softmax_loss(Z_QUERY, Z_POSITIVE, Z_NEGATIVE, Z_HARD, HARD_MASK,
                                       negative_mask=mask, temperature=0.5,
                                       negative_log_count=log_count)
    # Logits are score / 0.5; shared negatives then lose their log count; the
    # positive and the hard negatives are not corrected; masked ones drop out.
    logits0 = [0.8 / .5, 0.6 / .5 - 0.5, 0.0 / .5 - 2.0, 1.0 / .5]
    logits1 = [1.0 / .5, 0.8 / .5 - 0.5, 0.0 / .5 + 1.0, 1.0 / .5 - 2.0, 0.8 / .5, 1.0 / .5]
    want = [np.log(np.exp(l).sum()) - l[0] for l in (logits0, logits1)]
    self.assertAllClose(loss, want, atol=1e-5)
    # A zero correction is no correction.
    self.assertAllClose(
        losses.sampled_softmax_loss(Z_QUERY, Z_POSITIVE, Z_NEGATIVE, temperature=0.5,
                                    negative_log_count=np.zeros(3, np.float32)),
        losses.sampled_softmax_loss(Z_QUERY, Z_POSITIVE, Z_NEGATIVE, temperature=0.5))

  def test_bad_temperature(self):
    with self.assertRaisesRegex(ValueError, "temperature"):
      losses.sampled_softmax_loss(Z_QUERY, Z_POSITIVE, Z_NEGATIVE, temperature=0.0)


class CandidateBiasTest(tf.test.TestCase):

  def test_bias_is_added_to_every_candidate_score(self):
    bias = losses.CandidateBias(positive=np.array([0.5, -0.2], np.float32),
                                negative=np.array([0.1, -1.0, 0.3], np.float32),
                                hard=np.array([[0.2, 9.0], [0.0, -0.4]], np.float32))
    loss = losses.sampled_softmax_loss(Z_QUERY, Z_POSITIVE, Z_NEGATIVE, Z_HARD, HARD_MASK,
                                       temperature=0.5, bias=bias)
    # query 0: positive .8+.5, shared .6+.1, 1-1, 0+.3, hard 1+.2 (the 9.0 slot is masked).
    logits0 = np.array([1.3, 0.7, 0.0, 0.3, 1.2]) / 0.5
    # query 1: positive 1-.2, shared .8+.1, 0-1, 1+.3, hard .8+0, 1-.4.
    logits1 = np.array([0.8, 0.9, -1.0, 1.3, 0.8, 0.6]) / 0.5
    want = [np.log(np.exp(l).sum()) - l[0] for l in (logits0, logits1)]
    self.assertAllClose(loss, want, atol=1e-5)
    margin = losses.max_margin_loss(Z_QUERY, Z_POSITIVE, Z_NEGATIVE, Z_HARD, HARD_MASK,
                                    margin=0.1, bias=bias)
    hinge = lambda l: np.maximum(0.0, l[1:] - l[0] + 0.1).mean()
    self.assertAllClose(margin, [hinge(logits0 * 0.5), hinge(logits1 * 0.5)], atol=1e-5)

  def test_zero_bias_changes_nothing_and_hard_bias_is_required(self):
    zero = losses.CandidateBias(np.zeros(2, np.float32), np.zeros(3, np.float32),
                                np.zeros((2, 2), np.float32))
    self.assertAllClose(
        losses.sampled_softmax_loss(Z_QUERY, Z_POSITIVE, Z_NEGATIVE, Z_HARD, HARD_MASK,
                                    bias=zero),
        losses.sampled_softmax_loss(Z_QUERY, Z_POSITIVE, Z_NEGATIVE, Z_HARD, HARD_MASK))
    with self.assertRaisesRegex(ValueError, "bias.hard"):
      losses.max_margin_loss(Z_QUERY, Z_POSITIVE, Z_NEGATIVE, Z_HARD, HARD_MASK,
                             bias=zero._replace(hard=None))


class ReductionTest(tf.test.TestCase):

  def test_divides_by_global_batch_size(self):
    self.assertAllClose(losses.average_loss([1., 2., 3., 4.], global_batch_size=8), 10 / 8)

  def test_default_is_local_mean_outside_a_strategy(self):
    self.assertAllClose(losses.average_loss([1., 2., 3., 4.]), 2.5)

  def test_replica_losses_sum_to_global_mean(self):
    # Two replicas of 2 examples each: with the global size their sum is the
    # mean over all 4 -- what MirroredStrategy's gradient all-reduce (a sum) needs.
    per_example = np.array([1., 2., 3., 6.], np.float32)
    replica_sum = (losses.average_loss(per_example[:2], global_batch_size=4)
                   + losses.average_loss(per_example[2:], global_batch_size=4))
    self.assertAllClose(replica_sum, per_example.mean())

  def test_sample_weight(self):
    self.assertAllClose(
        losses.average_loss([1., 2.], global_batch_size=2, sample_weight=[1., 0.]), 0.5)


class SharedNegativeMaskTest(tf.test.TestCase):

  def test_masks_own_query_and_positive(self):
    mask = losses.shared_negative_mask(query=tf.constant([0, 1]), positive=tf.constant([2, 3]),
                                       negative=tf.constant([3, 4, 0]))
    # query row 0 (items 0, 2): negative 0 is its query; row 1 (1, 3): negative 3.
    self.assertAllEqual(mask, [[1., 1., 0.], [0., 1., 1.]])

  def test_without_queries_only_the_positive_is_masked(self):
    # Pivot pairs: the query is not an item of the batch.
    mask = losses.shared_negative_mask(query=None, positive=tf.constant([2, 3]),
                                       negative=tf.constant([3, 4, 0, 2]))
    self.assertAllEqual(mask, [[1., 1., 1., 0.], [0., 1., 1., 1.]])


if __name__ == "__main__":
  tf.test.main()
