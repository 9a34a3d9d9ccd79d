"""Shared pytest fixtures.

Importing pinsage_tf first puts TF_USE_LEGACY_KERAS=1 in effect before any test
module imports TensorFlow.
"""

import os

import pytest

import pinsage_tf  # noqa: F401

REPO_ROOT = os.path.dirname(os.path.abspath(__file__))


def pytest_configure(config):
  """Splits the CPU into 2 logical devices before any test initialises TF.

  Multi-replica code (MirroredStrategy) is tested on CPU this way; it has to
  happen once, before TensorFlow creates its devices.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  cpus = tf.config.list_physical_devices("CPU")
  tf.config.set_logical_device_configuration(
      cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)


def datasets_root() -> str:
  """The shared real datasets: $PINSAGE_DATASETS or ../shared/datasets."""
  return os.environ.get("PINSAGE_DATASETS",
                        os.path.join(REPO_ROOT, os.pardir, "shared", "datasets"))


@pytest.fixture(scope="session")
def datasets_dir() -> str:
  """Path of ../shared/datasets. Fails (never skips) when it is missing."""
  path = os.path.abspath(datasets_root())
  if not os.path.isdir(path):
    pytest.fail(f"real datasets not found at {path}; set PINSAGE_DATASETS "
                "or place the shared folder beside the checkout.")
  return path
