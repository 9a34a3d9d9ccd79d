"""The Beam pipeline computes the same embeddings as local layer-wise inference."""

from __future__ import annotations

import os

import numpy as np
import pytest

import pinsage_tf  # noqa: F401
import tensorflow as tf

from pinsage_tf import beam_inference
from pinsage_tf import graph as graph_lib
from pinsage_tf import inference
from pinsage_tf import model as model_lib
from pinsage_tf import neighborhoods as nb_lib
from pinsage_tf import pipeline

NUM_ITEMS = 60
T = 4
ISOLATED = 5  # no pivots and no neighbors
NB_CONFIG = nb_lib.NeighborhoodConfig(num_neighbors=T, num_walks=1, seed=7)


def _random_table(rng: np.random.Generator) -> nb_lib.Neighborhoods:
  """A valid random neighborhood table with padding, duplicates and an isolated row."""
  counts = rng.integers(1, T + 1, NUM_ITEMS).astype(np.int32)
  counts[ISOLATED] = 0
  counts[6] = 2  # partly padded row
  counts[7] = 3
  ids = rng.integers(0, NUM_ITEMS, (NUM_ITEMS, T)).astype(np.int32)
  ids[ids == ISOLATED] = 0  # nobody reaches the isolated item
  ids[7, :3] = [3, 3, 9]  # the same neighbor in two slots: two messages
  valid = np.arange(T)[None, :] < counts[:, None]
  ids[~valid] = -1
  weights = np.where(valid, rng.random((NUM_ITEMS, T)) + 0.1, 0).astype(np.float32)
  weights /= np.maximum(weights.sum(1, keepdims=True), 1e-12)
  return nb_lib.Neighborhoods(ids=ids, weights=weights.astype(np.float32), counts=counts,
                              config=NB_CONFIG)


@pytest.fixture(scope="module")
def graph_dir(tmp_path_factory):
  rng = np.random.default_rng(0)
  edge_items = rng.integers(0, NUM_ITEMS, 400)
  edge_items[edge_items == ISOLATED] = 0
  tokens = graph_lib.CSR.from_pairs(rng.integers(0, NUM_ITEMS, 150), rng.integers(0, 12, 150),
                                    NUM_ITEMS)
  g = graph_lib.build_graph(
      name="beam-test", item_ids=[f"i{i}" for i in range(NUM_ITEMS)],
      pivot_ids=[f"p{i}" for i in range(20)],
      edge_items=edge_items, edge_pivots=rng.integers(0, 20, 400),
      dense=rng.normal(size=(NUM_ITEMS, 3)).astype(np.float32), dense_names=("a", "b", "c"),
      sparse=[graph_lib.SparseFeature("tok", "hashed_text", 12, tokens)])
  directory = str(tmp_path_factory.mktemp("beam") / "graph")
  graph_lib.save_graph(g, directory)
  nb_lib.save_neighborhoods(directory, _random_table(rng))
  return directory


def _model(graph_dir, tmp_path, pooling, num_layers):
  tf.keras.utils.set_random_seed(1)
  g = graph_lib.load_graph(graph_dir)
  model = model_lib.PinSageModel(model_lib.PinSageConfig(
      hidden_dim=16, embedding_dim=8, num_layers=num_layers, pooling=pooling,
      encoder=model_lib.EncoderConfig.from_graph(g, use_id_embedding=True)))
  weights_dir = str(tmp_path / "model")
  model_lib.save_model(model, weights_dir)
  return g, model, weights_dir


def _local(g, model, graph_dir):
  nb = nb_lib.load_neighborhoods(graph_dir, NB_CONFIG)
  tables = pipeline.SamplingTables.build(g, np.asarray(nb.ids), np.asarray(nb.weights))
  return inference.layerwise_embeddings(model, tables, batch_size=16)


def _config(graph_dir, weights_dir, **kwargs):
  # Odd sizes on purpose: read ranges, model batches and output shards all
  # straddle each other and the last ones are partial.
  options = dict(read_shard_size=13, batch_size=7, output_shard_size=17)
  options.update(kwargs)
  return beam_inference.BeamInferenceConfig(graph_dir=graph_dir, weights_dir=weights_dir,
                                            neighborhoods=NB_CONFIG, **options)


@pytest.mark.parametrize("pooling,num_layers,args", [
    ("importance", 2, []),
    ("max", 3, ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]),
])
def test_beam_equals_local_layerwise(graph_dir, tmp_path, pooling, num_layers, args):
  g, model, weights_dir = _model(graph_dir, tmp_path, pooling, num_layers)
  expected = _local(g, model, graph_dir)
  got = beam_inference.run_layerwise(_config(graph_dir, weights_dir), pipeline_args=args)
  assert got.shape == (NUM_ITEMS, 8) and got.dtype == np.float32
  np.testing.assert_allclose(got, expected, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_item_biases_equal_the_local_ones(graph_dir, tmp_path):
  tf.keras.utils.set_random_seed(3)
  g = graph_lib.load_graph(graph_dir)
  model = model_lib.PinSageModel(model_lib.PinSageConfig(
      hidden_dim=16, embedding_dim=8, item_bias=True,
      encoder=model_lib.EncoderConfig.from_graph(g, use_id_embedding=True)))
  model_lib.build_variables(model)
  # Zero-initialised: random bias weights, so the check means something.
  model.bias_output.kernel.assign(tf.random.normal(model.bias_output.kernel.shape))
  weights_dir = str(tmp_path / "model")
  model_lib.save_model(model, weights_dir)
  nb = nb_lib.load_neighborhoods(graph_dir, NB_CONFIG)
  tables = pipeline.SamplingTables.build(g, np.asarray(nb.ids), np.asarray(nb.weights))
  want_z, want_b = inference.layerwise_outputs(model, tables, batch_size=16)
  out_dir = str(tmp_path / "shards")
  got_z, got_b = beam_inference.run_layerwise_outputs(_config(graph_dir, weights_dir),
                                                      output_dir=out_dir)
  assert got_z.shape == (NUM_ITEMS, 8) and got_b.shape == (NUM_ITEMS,)
  assert np.ptp(got_b) > 1e-3
  np.testing.assert_allclose(got_z, want_z, atol=1e-5)
  np.testing.assert_allclose(got_b, want_b, atol=1e-5)
  # The shards carry the bias as a ninth column; without biases, run_layerwise
  # gives the embeddings only and run_layerwise_outputs None for the biases.
  np.testing.assert_allclose(beam_inference.assemble_shards(out_dir, NUM_ITEMS, 9)[:, 8], got_b)
  _, plain, plain_dir = _model(graph_dir, tmp_path / "plain", "importance", 1)
  z, bias = beam_inference.run_layerwise_outputs(_config(graph_dir, plain_dir))
  assert bias is None and z.shape == (NUM_ITEMS, 8)


def test_isolated_item_pools_to_zero(graph_dir, tmp_path):
  # With no neighbors every layer sees n_u = 0, so the embedding is
  # head(combine_2(combine_1(h0, 0), 0)), computed here without any table.
  g, model, weights_dir = _model(graph_dir, tmp_path, "importance", 2)
  got = beam_inference.run_layerwise(_config(graph_dir, weights_dir))
  tables = pipeline.SamplingTables.build(g, np.full((NUM_ITEMS, T), -1, np.int32),
                                         np.zeros((NUM_ITEMS, T), np.float32))
  h = model.encode_inputs(pipeline.gather_node_inputs(tables, tf.constant([ISOLATED])))
  for conv in model.convs:
    h = conv.combine(h, tf.zeros([1, conv.neighbor_units]))
  np.testing.assert_allclose(got[ISOLATED], model.head(h).numpy()[0], atol=1e-5)
  # Its neighbors matter for everyone else: item 7 differs from the same
  # computation without neighbors.
  h7 = model.encode_inputs(pipeline.gather_node_inputs(tables, tf.constant([7])))
  for conv in model.convs:
    h7 = conv.combine(h7, tf.zeros([1, conv.neighbor_units]))
  assert np.abs(got[7] - model.head(h7).numpy()[0]).max() > 1e-3


def test_shards_are_kept_tiled_and_checked(graph_dir, tmp_path):
  _, _, weights_dir = _model(graph_dir, tmp_path, "mean", 1)
  out_dir = str(tmp_path / "shards")
  got = beam_inference.run_layerwise(_config(graph_dir, weights_dir), output_dir=out_dir)
  names = sorted(f for f in os.listdir(out_dir) if not f.startswith("."))
  # 60 items in shards of 17 rows: [0,17) [17,34) [34,51) [51,60); no temporaries left.
  assert names == [f"part-{a:012d}-{b:012d}.npy" for a, b in
                   [(0, 17), (17, 34), (34, 51), (51, 60)]]
  assert sorted(os.listdir(out_dir)) == names
  np.testing.assert_array_equal(beam_inference.assemble_shards(out_dir, NUM_ITEMS, 8), got)
  with pytest.raises(FileExistsError, match="already holds"):
    beam_inference.run_layerwise(_config(graph_dir, weights_dir), output_dir=out_dir)
  os.remove(os.path.join(out_dir, names[1]))
  with pytest.raises(ValueError, match="expected a shard starting at 17"):
    beam_inference.assemble_shards(out_dir, NUM_ITEMS, 8)


def test_bad_inputs_fail_before_launch(graph_dir, tmp_path):
  _, _, weights_dir = _model(graph_dir, tmp_path, "importance", 1)
  with pytest.raises(FileNotFoundError, match="config.json"):
    beam_inference.run_layerwise(_config(graph_dir, str(tmp_path / "missing")))
  other = nb_lib.NeighborhoodConfig(num_neighbors=T, num_walks=2)
  with pytest.raises(FileNotFoundError, match="no neighborhoods table"):
    beam_inference.run_layerwise(beam_inference.BeamInferenceConfig(
        graph_dir=graph_dir, weights_dir=weights_dir, neighborhoods=other))
  with pytest.raises(ValueError, match="batch_size must be a positive int"):
    _config(graph_dir, weights_dir, batch_size=0)
  with pytest.raises(ValueError, match="multi_threading"):
    beam_inference.run_layerwise(_config(graph_dir, weights_dir), pipeline_args=[
        "--direct_num_workers=2", "--direct_running_mode=multi_threading"])


def test_lost_or_orphan_messages_stop_the_pipeline(graph_dir, tmp_path):
  # What a runner that drops elements would hand the reducer: item 7 has
  # c_u = 3 valid slots but only two messages arrived.
  _, _, weights_dir = _model(graph_dir, tmp_path, "importance", 2)
  # pylint: disable=protected-access
  fn = beam_inference._ConvolveFn(_config(graph_dir, weights_dir), 0, last=False)
  fn.setup()
  h = np.zeros(16, np.float32).tobytes()
  good = [(7, {"h": [(2, h)], "n": [(0, 0.5, h), (1, 0.5, h)]})]
  assert len(list(fn.process(good))) == 2  # (u, h^1) and the tagged t^1
  lost = [(7, {"h": [(3, h)], "n": [(0, 0.5, h), (1, 0.5, h)]})]
  with pytest.raises(RuntimeError, match="received 2 neighbor messages"):
    list(fn.process(lost))
  duplicated = [(7, {"h": [(2, h)], "n": [(0, 0.5, h), (0, 0.5, h)]})]
  with pytest.raises(RuntimeError, match="for 1 distinct slots"):
    list(fn.process(duplicated))
  # Messages for a neighbor whose vector never arrived.
  with pytest.raises(RuntimeError, match="neighbor 3 has 0 transformed vectors"):
    list(beam_inference._send((3, {"transformed": [], "messages": [(7, 0, 0.5)]})))


def test_shard_ranges_tile_the_items():
  assert beam_inference.shard_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
  assert beam_inference.shard_ranges(0, 4) == []
