"""Shared pytest fixtures and the `slow` marker rule.

Importing trainer.startup and pinsage_tf first gives TensorFlow's C++ log level
its default and puts TF_USE_LEGACY_KERAS=1 in effect before any test module
imports TensorFlow.
"""

import os

import pytest

from trainer import startup  # noqa: F401
import pinsage_tf  # noqa: F401

REPO_ROOT = os.path.dirname(os.path.abspath(__file__))

# `slow` tests (skipped by `make test-fast`, i.e. `pytest -m "not slow"`): they
# start another process that loads TensorFlow (a job, the model server, Beam
# workers), which costs seconds each, or train a model until it beats a baseline.
# data/prepare_test.py runs its job in subprocesses too but stays fast:
# `python -m data.prepare` does not load TensorFlow.
_SLOW_MODULES = frozenset({
    "bench/quality_test.py",
    "serving/server_test.py",
    "trainer/evaluate_pivots_test.py",
    "trainer/evaluate_test.py",
    "trainer/export_test.py",
    "trainer/infer_test.py",
    "trainer/multi_worker_scale_test.py",
    "trainer/refresh_test.py",
    "trainer/train_test.py",
})
_SLOW_TESTS = frozenset({  # test function names, wherever their module moves
    "test_beam_equals_local_layerwise",  # one case runs 2 Beam worker processes
    "test_pivot_embeddings_equal_the_local_ones",  # likewise
    "test_pipeline_table_equals_the_local_walks",  # likewise (Beam hard negatives)
    "test_exact_and_embedder_use_only_core_tensorflow_ops",
    "test_exact_model_with_pivots_loads_and_runs_without_scann",
    "test_training_beats_popularity_on_synthetic",
})


def pytest_configure(config):
  """Splits the CPU into 2 logical devices before any test initialises TF.

  Multi-replica code (MirroredStrategy) is tested on CPU this way; it has to
  happen once, before TensorFlow creates its devices.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  cpus = tf.config.list_physical_devices("CPU")
  tf.config.set_logical_device_configuration(
      cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
  """Marks the tests listed in _SLOW_MODULES and _SLOW_TESTS as `slow`."""
  for item in items:
    module = item.path.relative_to(config.rootpath).as_posix()
    if module in _SLOW_MODULES or getattr(item, "originalname", None) in _SLOW_TESTS:
      item.add_marker(pytest.mark.slow)


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
