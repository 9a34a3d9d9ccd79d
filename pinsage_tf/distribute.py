"""Choosing a `tf.distribute` strategy by name (one helper, as TF Model Garden).

* "mirrored": synchronous data parallelism over all local GPUs; on a machine
  without GPUs over the CPU (or over `num_cpu_devices` logical CPUs, which is
  how multi-replica training is tested without accelerators).
* "one_device": a single device (the first GPU, else the CPU).
* "multi_worker_mirrored": synchronous training over several processes; the
  cluster comes from the `TF_CONFIG` environment variable, which TensorFlow's
  cluster resolver reads (not this library).

`configure_cpu_devices` must run before TensorFlow initialises its devices,
i.e. before the first op; it is idempotent for the same count.
"""

from __future__ import annotations

import tensorflow as tf

STRATEGIES = ("mirrored", "one_device", "multi_worker_mirrored")


def configure_cpu_devices(num_cpu_devices: int) -> None:
  """Splits the physical CPU into `num_cpu_devices` logical devices (if > 1)."""
  if num_cpu_devices < 1:
    raise ValueError(f"num_cpu_devices must be >= 1, got {num_cpu_devices}.")
  if num_cpu_devices == 1:
    return
  cpu = tf.config.list_physical_devices("CPU")[0]
  current = tf.config.get_logical_device_configuration(cpu)
  if current is not None and len(current) == num_cpu_devices:
    return
  try:
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * num_cpu_devices)
  except RuntimeError as e:
    raise RuntimeError(
        "configure_cpu_devices must run before TensorFlow creates its devices "
        "(call it before building any tensor or strategy).") from e


def get_strategy(name: str, num_cpu_devices: int = 1) -> tf.distribute.Strategy:
  """Returns the strategy called `name` (one of `STRATEGIES`).

  Args:
    name: "mirrored", "one_device" or "multi_worker_mirrored".
    num_cpu_devices: on a machine without GPUs, the number of logical CPU
      devices "mirrored" replicates over (testing multi-replica code).
  """
  if name not in STRATEGIES:
    raise ValueError(f"unknown strategy {name!r}; pass one of {', '.join(STRATEGIES)}.")
  if name == "multi_worker_mirrored":
    return tf.distribute.MultiWorkerMirroredStrategy()
  configure_cpu_devices(num_cpu_devices)
  gpus = tf.config.list_logical_devices("GPU")
  if name == "one_device":
    return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
  if gpus:
    return tf.distribute.MirroredStrategy([d.name for d in gpus])
  cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
  return tf.distribute.MirroredStrategy(cpus[:max(1, num_cpu_devices)])
