"""The Beam pipeline computes the same embeddings as local layer-wise inference."""

from __future__ import annotations

import dataclasses
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


def _model(graph_dir, tmp_path, pooling, num_layers, random_biases=False):
  tf.keras.utils.set_random_seed(1)
  g = graph_lib.load_graph(graph_dir)
  model = model_lib.PinSageModel(model_lib.PinSageConfig(
      hidden_dim=16, embedding_dim=8, num_layers=num_layers, pooling=pooling,
      encoder=model_lib.EncoderConfig.from_graph(g, use_id_embedding=True)))
  if random_biases:
    # Zero-initialised biases map zero inputs to 0; random ones make a
    # computation on zero inputs (a pivot without items) mean something.
    model_lib.build_variables(model)
    for variable in model.trainable_variables:
      if "bias" in variable.name:
        variable.assign(tf.random.normal(variable.shape, stddev=0.5))
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


def _saved_bias_model(g, tmp_path, seed, **config):
  """An item-bias model with random (not zero-initialised) bias weights, so the
  bias checks mean something, saved to tmp_path/model: (model, weights_dir)."""
  tf.keras.utils.set_random_seed(seed)
  model = model_lib.PinSageModel(model_lib.PinSageConfig(
      hidden_dim=16, embedding_dim=8, item_bias=True,
      encoder=model_lib.EncoderConfig.from_graph(g, use_id_embedding=True), **config))
  model_lib.build_variables(model)
  model.bias_output.kernel.assign(tf.random.normal(model.bias_output.kernel.shape))
  weights_dir = str(tmp_path / "model")
  model_lib.save_model(model, weights_dir)
  return model, weights_dir


def test_item_biases_equal_the_local_ones(graph_dir, tmp_path):
  g = graph_lib.load_graph(graph_dir)
  model, weights_dir = _saved_bias_model(g, tmp_path, seed=3)
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


# --- Pivots ------------------------------------------------------------------

TP = 3


def _hand_pivot_table() -> nb_lib.Neighborhoods:
  """Six pivots over Tp = 3 slots, unnormalised weights on purpose:
  0 full; 1 one item then padding; 2 no items (all padding); 3 the same item
  in two slots; 4 a zero-weight slot before padding; 5 the isolated item."""
  ids = np.array([[1, 2, 3], [8, -1, -1], [-1, -1, -1], [4, 4, 9], [10, 11, -1],
                  [ISOLATED, 12, -1]], np.int32)
  weights = np.array([[2.0, 1.0, 0.5], [0.7, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 2.0],
                      [1.0, 0.0, 0.0], [0.3, 0.6, 0.0]], np.float32)
  counts = (ids >= 0).sum(axis=1).astype(np.int32)
  return nb_lib.Neighborhoods(ids=ids, weights=weights, counts=counts,
                              config=nb_lib.NeighborhoodConfig(num_neighbors=TP))


@pytest.mark.parametrize("pooling,num_layers,args", [
    ("importance", 2, []),
    ("max", 1, ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]),
])
def test_pivot_embeddings_equal_the_local_ones(graph_dir, tmp_path, pooling, num_layers, args):
  g, model, weights_dir = _model(graph_dir, tmp_path, pooling, num_layers, random_biases=True)
  tables = {
      "graph": nb_lib.compute_pivot_neighborhoods(
          g, nb_lib.NeighborhoodConfig(num_neighbors=5, num_walks=5, seed=3)),
      "graph+validation": _hand_pivot_table(),
  }
  nb = nb_lib.load_neighborhoods(graph_dir, NB_CONFIG)
  local = inference.LayerwiseInference(
      model, pipeline.SamplingTables.build(g, np.asarray(nb.ids), np.asarray(nb.weights)),
      batch_size=16)
  want_items, _ = local.outputs()
  out_dir = str(tmp_path / "shards")
  got = beam_inference.run_layerwise_inference(
      _config(graph_dir, weights_dir), pivot_neighborhoods=tables, pipeline_args=args,
      output_dir=out_dir)
  np.testing.assert_allclose(got.vectors, want_items, atol=1e-5)
  assert got.bias is None and sorted(got.pivot_vectors) == sorted(tables)
  for history, table in tables.items():
    want = local.pivot_embeddings(table.ids, table.weights)
    assert got.pivot_vectors[history].shape == want.shape == (table.ids.shape[0], 8)
    np.testing.assert_allclose(got.pivot_vectors[history], want, atol=1e-5)
  pivots = got.pivot_vectors["graph+validation"]
  np.testing.assert_allclose(np.linalg.norm(pivots, axis=1), 1.0, atol=1e-5)
  # A pivot without items: weighted mean 0 and pooled 0 into the last layer,
  # i.e. head(combine(0, 0)); its neighbors matter for everyone else.
  conv = model.convs[-1]
  empty = model.head(conv.combine(tf.zeros([1, 16]), tf.zeros([1, conv.neighbor_units])))
  np.testing.assert_allclose(pivots[2], empty.numpy()[0], atol=1e-5)
  assert np.abs(pivots[1] - pivots[2]).max() > 1e-3
  # Pivot 3 holds item 4 in two slots of weight 1: the same as one slot of weight 2.
  np.testing.assert_allclose(
      pivots[3], local.pivot_embeddings(np.array([[4, 9, -1]]), np.array([[2.0, 2.0, 0.0]]))[0],
      atol=1e-5)
  # Kept layout: staged tables and tiled shards per history (6 pivots, shards of 17).
  directory = os.path.join(out_dir, "pivots", "graph+validation")
  assert sorted(os.listdir(directory)) == ["ids.npy", f"part-{0:012d}-{6:012d}.npy",
                                           "weights.npy"]
  np.testing.assert_array_equal(np.load(os.path.join(directory, "ids.npy")),
                                tables["graph+validation"].ids)


def test_pivots_with_item_biases_and_a_kept_output_dir(graph_dir, tmp_path):
  # Pivots get the head only (no bias); the items' bias column is unaffected.
  g = graph_lib.load_graph(graph_dir)
  model, weights_dir = _saved_bias_model(g, tmp_path, seed=4, num_layers=1)
  nb = nb_lib.load_neighborhoods(graph_dir, NB_CONFIG)
  local = inference.LayerwiseInference(
      model, pipeline.SamplingTables.build(g, np.asarray(nb.ids), np.asarray(nb.weights)))
  want_z, want_b = local.outputs()
  table = _hand_pivot_table()
  out_dir = str(tmp_path / "out")
  got = beam_inference.run_layerwise_inference(_config(graph_dir, weights_dir),
                                               pivot_neighborhoods={"graph": table},
                                               output_dir=out_dir)
  np.testing.assert_allclose(got.vectors, want_z, atol=1e-5)
  np.testing.assert_allclose(got.bias, want_b, atol=1e-5)
  np.testing.assert_allclose(got.pivot_vectors["graph"],
                             local.pivot_embeddings(table.ids, table.weights), atol=1e-5)
  # A second run into the same directory would mix shards: refused.
  for name in os.listdir(out_dir):
    if name.startswith("part-"):
      os.remove(os.path.join(out_dir, name))
  with pytest.raises(FileExistsError, match="already holds"):
    beam_inference.run_layerwise_inference(_config(graph_dir, weights_dir),
                                           pivot_neighborhoods={"graph": table},
                                           output_dir=out_dir)


def test_bad_pivot_tables_fail_before_launch(graph_dir, tmp_path):
  _, _, weights_dir = _model(graph_dir, tmp_path, "importance", 1)
  table = _hand_pivot_table()

  def run(tables):
    return beam_inference.run_layerwise_inference(_config(graph_dir, weights_dir),
                                                  pivot_neighborhoods=tables)

  with pytest.raises(ValueError, match=r"ids must be item rows in \[0, 60\)"):
    run({"graph": dataclasses.replace(table, ids=np.where(table.ids == 8, NUM_ITEMS, table.ids))})
  with pytest.raises(ValueError, match="finite and >= 0"):
    run({"graph": dataclasses.replace(table, weights=-table.weights)})
  with pytest.raises(ValueError, match="history name"):
    run({"../graph": table})


def test_read_npy_rows_reads_a_row_range(tmp_path):
  # pylint: disable=protected-access
  array = np.arange(35, dtype=np.int32).reshape(7, 5)
  path = str(tmp_path / "a.npy")
  beam_inference._write_npy(path, array)
  assert os.listdir(tmp_path) == ["a.npy"]  # no temporary left
  np.testing.assert_array_equal(beam_inference._read_npy_rows(path, 2, 6), array[2:6])
  with pytest.raises(ValueError, match="shape"):
    beam_inference._read_npy_rows(path, 5, 9)


def test_lost_pivot_messages_stop_the_pipeline(graph_dir, tmp_path):
  # pylint: disable=protected-access
  _, _, weights_dir = _model(graph_dir, tmp_path, "importance", 1)
  fn = beam_inference._PivotFn(_config(graph_dir, weights_dir), TP)
  fn.setup()
  h = np.zeros(16, np.float32).tobytes()
  good = [(4, {"c": [2], "n": [(0, 0.5, h, h), (2, 0.5, h, h)]}), (5, {"c": [0], "n": []})]
  assert [p for p, _ in fn.process(good)] == [4, 5]
  with pytest.raises(RuntimeError, match="received 1 neighbor messages"):
    list(fn.process([(4, {"c": [2], "n": [(0, 0.5, h, h)]})]))
  with pytest.raises(RuntimeError, match="pivot 4: 0 neighbor counts"):
    list(fn.process([(4, {"c": [], "n": [(0, 0.5, h, h)]})]))
  # Messages for an item whose h^{K-1} never arrived.
  with pytest.raises(RuntimeError, match="item 3 has 0 h and 1 transformed"):
    list(beam_inference._send_to_pivots((3, {"h": [], "transformed": [h],
                                             "messages": [(4, 0, 0.5)]})))
