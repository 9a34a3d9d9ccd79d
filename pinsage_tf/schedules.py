"""Learning-rate schedule: linear warm-up, then exponential decay.

PinSage trains with large minibatches on many replicas; the paper (after
Goyal et al., 2017) uses a gradual warm-up that raises the learning rate
linearly to its peak over the first epoch, then decays it exponentially. As a function of the
optimizer step s:

    lr(s) = peak * s / warmup_steps                                  s < warmup_steps
    lr(s) = peak * decay_rate ** ((s - warmup_steps) / decay_steps)  otherwise

(with `staircase=True` the exponent is floored, decaying in steps). The rate
is exactly 0 at step 0 and reaches `peak` at `warmup_steps`.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf


@tf.keras.utils.register_keras_serializable(package="pinsage_tf")
class WarmupExponentialDecay(tf.keras.optimizers.schedules.LearningRateSchedule):
  """Linear warm-up from 0 to `peak_learning_rate`, then exponential decay."""

  def __init__(
      self,
      peak_learning_rate: float,
      warmup_steps: int,
      decay_steps: int,
      decay_rate: float,
      staircase: bool = False,
      name: str | None = None,
  ):
    """Initializes the schedule.

    Args:
      peak_learning_rate: the rate reached at the end of the warm-up, > 0.
      warmup_steps: length of the linear warm-up, >= 0 (0 = no warm-up).
      decay_steps: steps over which the rate is multiplied by `decay_rate`, > 0.
      decay_rate: in (0, 1]; 1 keeps the peak rate after warm-up.
      staircase: decay at integer multiples of `decay_steps` only.
      name: optional name scope of the ops.

    Raises:
      ValueError: an argument is outside the range given above.
    """
    super().__init__()
    if not peak_learning_rate > 0:
      raise ValueError(f"peak_learning_rate must be > 0, got {peak_learning_rate!r}.")
    if int(warmup_steps) != warmup_steps or warmup_steps < 0:
      raise ValueError(f"warmup_steps must be an int >= 0 (0 = no warm-up), got {warmup_steps!r}.")
    if int(decay_steps) != decay_steps or decay_steps <= 0:
      raise ValueError(f"decay_steps must be an int > 0, got {decay_steps!r}.")
    if not 0 < decay_rate <= 1:
      raise ValueError(
          f"decay_rate must lie in (0, 1] (1 = constant after warm-up), got {decay_rate!r}.")
    self.peak_learning_rate = float(peak_learning_rate)
    self.warmup_steps = int(warmup_steps)
    self.decay_steps = int(decay_steps)
    self.decay_rate = float(decay_rate)
    self.staircase = bool(staircase)
    self.name = name

  def __call__(self, step: tf.Tensor) -> tf.Tensor:
    with tf.name_scope(self.name or "WarmupExponentialDecay"):
      step = tf.cast(step, tf.float32)
      warmup = tf.constant(float(self.warmup_steps))
      # max(warmup, 1) keeps warmup_steps == 0 free of a 0/0 (the branch is unused then).
      warm = self.peak_learning_rate * step / tf.maximum(warmup, 1.0)
      exponent = tf.maximum(step - warmup, 0.0) / float(self.decay_steps)
      if self.staircase:
        exponent = tf.floor(exponent)
      decayed = self.peak_learning_rate * tf.pow(self.decay_rate, exponent)
      return tf.where(step < warmup, warm, decayed)

  def get_config(self) -> dict[str, Any]:
    return {
        "peak_learning_rate": self.peak_learning_rate,
        "warmup_steps": self.warmup_steps,
        "decay_steps": self.decay_steps,
        "decay_rate": self.decay_rate,
        "staircase": self.staircase,
        "name": self.name,
    }
