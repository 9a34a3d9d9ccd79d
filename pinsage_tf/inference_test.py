"""Layer-wise inference equals the model applied to training minibatches."""

from __future__ import annotations

import numpy as np
import pytest

import pinsage_tf  # noqa: F401
import tensorflow as tf

from pinsage_tf import inference
from pinsage_tf import model as model_lib
from pinsage_tf import pipeline
from pinsage_tf.pipeline_test import _levels, _random_setup


@pytest.mark.parametrize("pooling,num_layers", [("importance", 2), ("mean", 1), ("max", 3)])
def test_layerwise_equals_minibatch_forward(pooling, num_layers):
  tf.keras.utils.set_random_seed(0)
  g, ids, weights, hard = _random_setup()
  tables = pipeline.SamplingTables.build(g, ids, weights, hard_pool=hard)
  config = model_lib.PinSageConfig(
      hidden_dim=16, embedding_dim=8, num_layers=num_layers, pooling=pooling,
      encoder=model_lib.EncoderConfig.from_graph(g, use_id_embedding=True))
  model = model_lib.PinSageModel(config)
  model_lib.build_variables(model)
  # Without the leakage mask a training batch sees the full neighborhood table,
  # exactly what inference uses.
  cfg = pipeline.PipelineConfig(batch_size=6, num_negatives=4, num_layers=num_layers,
                                mask_pair_leakage=False)
  builder = pipeline.MinibatchBuilder(tables, cfg, 6)
  # Includes the isolated item 5 and item 6 with only two neighbors.
  query = tf.constant([5, 6, 7, 8, 9, 10], tf.int32)
  positive = tf.constant([11, 12, 13, 14, 15, 5], tf.int32)
  batch = builder(tf.constant([1, 2], tf.int64), query, positive)
  z_batch = model(batch).numpy()
  items_top = _levels(batch)[-1]
  real = batch.num_nodes.numpy()[-1]

  all_z = inference.layerwise_embeddings(model, tables, batch_size=37)  # odd blocks on purpose
  assert all_z.shape == (200, 8)
  np.testing.assert_allclose(all_z[items_top[:real]], z_batch[:real], atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(all_z, axis=1), 1.0, atol=1e-5)


def test_layerwise_item_biases_equal_the_minibatch_ones():
  tf.keras.utils.set_random_seed(1)
  g, ids, weights, hard = _random_setup()
  tables = pipeline.SamplingTables.build(g, ids, weights, hard_pool=hard)
  config = model_lib.PinSageConfig(
      hidden_dim=16, embedding_dim=8, item_bias=True,
      encoder=model_lib.EncoderConfig.from_graph(g, use_id_embedding=True))
  model = model_lib.PinSageModel(config)
  model_lib.build_variables(model)
  # Zero-initialised: give the bias unit random weights so the check means something.
  model.bias_output.kernel.assign(tf.random.normal(model.bias_output.kernel.shape))
  builder = pipeline.MinibatchBuilder(tables, pipeline.PipelineConfig(
      batch_size=6, num_negatives=4, mask_pair_leakage=False), 6)
  batch = builder(tf.constant([3, 4], tf.int64), tf.constant([5, 6, 7, 8, 9, 10], tf.int32),
                  tf.constant([11, 12, 13, 14, 15, 5], tf.int32))
  z_batch, b_batch = (t.numpy() for t in model.embed_with_bias(batch))
  items_top = _levels(batch)[-1]
  real = batch.num_nodes.numpy()[-1]
  all_z, all_b = inference.layerwise_outputs(model, tables, batch_size=37)
  assert all_b.shape == (200,) and np.ptp(all_b) > 1e-3
  np.testing.assert_allclose(all_z[items_top[:real]], z_batch[:real], atol=1e-5)
  np.testing.assert_allclose(all_b[items_top[:real]], b_batch[:real], atol=1e-5)
  assert inference.layerwise_outputs(model, tables, with_bias=False)[1] is None


def test_progress_is_reported_for_every_stage():
  g, ids, weights, _ = _random_setup()
  tables = pipeline.SamplingTables.build(g, ids, weights)
  model = model_lib.PinSageModel(model_lib.PinSageConfig(
      hidden_dim=8, embedding_dim=4, encoder=model_lib.EncoderConfig.from_graph(g)))
  model_lib.build_variables(model)
  seen = []
  inference.layerwise_embeddings(model, tables, batch_size=128,
                                 progress=lambda stage, done, total: seen.append((stage, done)))
  assert [s for s in seen if s[1] == 200] == [
      ("inputs", 200), ("layer 1", 200), ("layer 2", 200), ("head", 200)]


def test_a_reused_runner_sees_new_weights_without_tracing_again():
  tf.keras.utils.set_random_seed(2)
  g, ids, weights, _ = _random_setup()
  tables = pipeline.SamplingTables.build(g, ids, weights)
  config = model_lib.PinSageConfig(hidden_dim=16, embedding_dim=8, item_bias=True,
                                   encoder=model_lib.EncoderConfig.from_graph(g))
  model = model_lib.PinSageModel(config)
  model_lib.build_variables(model)
  runner = inference.LayerwiseInference(model, tables, batch_size=37)
  first, _ = runner.outputs()
  functions = [runner._encode, runner._head_and_bias, *runner._transform, *runner._step]
  traces = [f.experimental_get_tracing_count() for f in functions]
  # A "training step": every weight moves. The same runner must see it.
  for v in model.trainable_variables:
    v.assign_add(0.1 * tf.random.normal(v.shape))
  second, bias = runner.outputs()
  assert np.abs(second - first).max() > 1e-3
  fresh, fresh_bias = inference.layerwise_outputs(model, tables, batch_size=37)
  np.testing.assert_allclose(second, fresh, atol=1e-6)
  np.testing.assert_allclose(bias, fresh_bias, atol=1e-6)
  assert [f.experimental_get_tracing_count() for f in functions] == traces


def test_layerwise_pivot_embeddings_equal_the_minibatch_ones():
  from pinsage_tf.pipeline_test import _pivot_setup
  tf.keras.utils.set_random_seed(3)
  g, ids, weights, tables, pivot_ids, pivot_weights = _pivot_setup()
  config = model_lib.PinSageConfig(
      hidden_dim=16, embedding_dim=8, item_bias=True,
      encoder=model_lib.EncoderConfig.from_graph(g, use_id_embedding=True))
  model = model_lib.PinSageModel(config)
  model_lib.build_variables(model)
  cfg = pipeline.PipelineConfig(batch_size=2, pivot_batch_size=4, num_negatives=3,
                                mask_pair_leakage=False)
  builder = pipeline.MinibatchBuilder(tables, cfg, 2, replica_pivot_batch_size=4)
  pivots = np.array([1, 4, 7, 30], np.int32)
  batch = builder(tf.constant([7, 8], tf.int64), tf.constant([10, 11], tf.int32),
                  tf.constant([12, 13], tf.int32), tf.constant(pivots),
                  tf.constant([0, 1, 2, 3], tf.int32))
  z, _, z_pivot = model.embed_batch(batch)
  runner = inference.LayerwiseInference(model, tables, batch_size=37)
  with pytest.raises(ValueError, match="outputs"):
    runner.pivot_embeddings(pivot_ids, pivot_weights)
  runner.outputs()
  all_pivots = runner.pivot_embeddings(pivot_ids, pivot_weights)
  assert all_pivots.shape == (60, 8)
  np.testing.assert_allclose(all_pivots[pivots], z_pivot.numpy(), atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(all_pivots, axis=1), 1.0, atol=1e-5)


def test_host_arrays_are_shared_with_tensorflow_without_a_copy():
  a = inference.host_array((1000, 3))
  assert a.ctypes.data % 64 == 0 and a.dtype == np.float32 and a.shape == (1000, 3)
  a[:] = 1.0
  shared = inference.shared_tensor(a)
  a[7, 2] = 5.0  # the tensor reads the same buffer
  assert float(shared[7, 2]) == 5.0
  # numpy's own (unaligned or read-only) arrays are copied instead.
  b = np.ones((1000, 3), np.float32)[:, :2]
  copied = inference.shared_tensor(b)
  b[0, 0] = 9.0
  assert float(copied[0, 0]) == 1.0


def test_convolve_in_place_equals_a_fresh_output():
  tf.keras.utils.set_random_seed(4)
  g, ids, weights, _ = _random_setup()
  tables = pipeline.SamplingTables.build(g, ids, weights)
  model = model_lib.PinSageModel(model_lib.PinSageConfig(
      hidden_dim=16, embedding_dim=8, encoder=model_lib.EncoderConfig.from_graph(g)))
  model_lib.build_variables(model)
  runner = inference.LayerwiseInference(model, tables, batch_size=37)
  h0 = runner.input_representations()
  fresh = runner.convolve(0, h0)
  assert fresh is not h0
  h0_copy = h0.copy()
  in_place = runner.convolve(0, h0_copy, in_place=True)
  assert in_place is h0_copy
  np.testing.assert_array_equal(in_place, fresh)
