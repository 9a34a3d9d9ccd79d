"""Tests of WarmupExponentialDecay."""

from __future__ import annotations

import pinsage_tf  # noqa: F401  (must precede tensorflow)

import tensorflow as tf
from absl.testing import parameterized

from pinsage_tf import schedules


class WarmupExponentialDecayTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.parameters(
      (0, 0.0),            # warm-up starts at 0
      (5, 0.5),            # halfway through the 10 warm-up steps
      (10, 1.0),           # peak
      (12, 0.5 ** 0.4),    # (12 - 10) / 5 of a halving: 0.7579
      (15, 0.5),           # one decay period after the peak
      (20, 0.25),
  )
  def test_continuous(self, step, expected):
    schedule = schedules.WarmupExponentialDecay(1.0, warmup_steps=10, decay_steps=5,
                                                decay_rate=0.5)
    self.assertAllClose(schedule(step), expected)

  @parameterized.parameters((9, 0.9), (12, 1.0), (17, 0.5), (20, 0.25))
  def test_staircase(self, step, expected):
    schedule = schedules.WarmupExponentialDecay(1.0, warmup_steps=10, decay_steps=5,
                                                decay_rate=0.5, staircase=True)
    self.assertAllClose(schedule(step), expected)

  def test_no_warmup(self):
    schedule = schedules.WarmupExponentialDecay(0.01, warmup_steps=0, decay_steps=10,
                                                decay_rate=0.1)
    self.assertAllClose(schedule(0), 0.01)
    self.assertAllClose(schedule(10), 0.001)

  def test_serialisation(self):
    schedule = schedules.WarmupExponentialDecay(0.2, warmup_steps=3, decay_steps=7,
                                                decay_rate=0.9, staircase=True, name="lr")
    restored = tf.keras.optimizers.schedules.deserialize(
        tf.keras.optimizers.schedules.serialize(schedule))
    self.assertIsInstance(restored, schedules.WarmupExponentialDecay)
    self.assertEqual(restored.get_config(), schedule.get_config())
    for step in (0, 2, 3, 11):
      self.assertAllClose(restored(step), schedule(step))

  def test_drives_an_optimizer(self):
    schedule = schedules.WarmupExponentialDecay(1.0, warmup_steps=4, decay_steps=1,
                                                decay_rate=0.5)
    optimizer = tf.keras.optimizers.SGD(learning_rate=schedule)
    variable = tf.Variable(0.0)
    for _ in range(3):  # steps 0, 1, 2 use rates 0, 0.25, 0.5 on a gradient of 1
      optimizer.apply_gradients([(tf.constant(1.0), variable)])
    self.assertAllClose(variable, -0.75)

  @parameterized.named_parameters(
      ("peak", dict(peak_learning_rate=0.0), "peak_learning_rate"),
      ("warmup", dict(warmup_steps=-1), "warmup_steps"),
      ("decay_steps", dict(decay_steps=0), "decay_steps"),
      ("decay_rate", dict(decay_rate=1.5), "decay_rate"),
  )
  def test_invalid_arguments(self, overrides, message):
    kwargs = dict(peak_learning_rate=0.1, warmup_steps=1, decay_steps=1, decay_rate=0.5)
    kwargs.update(overrides)
    with self.assertRaisesRegex(ValueError, message):
      schedules.WarmupExponentialDecay(**kwargs)


if __name__ == "__main__":
  tf.test.main()
