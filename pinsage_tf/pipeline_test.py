"""Tests of the tf.data producer (pinsage_tf.pipeline)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import pinsage_tf  # noqa: F401
import tensorflow as tf

from pinsage_tf import graph as graph_lib
from pinsage_tf import minibatch
from pinsage_tf import pipeline
from pinsage_tf import positives

def _random_setup(num_items=200, num_pivots=60, t=4, pool=6, seed=0):
  rng = np.random.default_rng(seed)
  edges_i = rng.integers(0, num_items, 1500)
  edges_p = rng.integers(0, num_pivots, 1500)
  tokens = graph_lib.CSR.from_pairs(rng.integers(0, num_items, 400),
                                    rng.integers(0, 30, 400), num_items)
  g = graph_lib.build_graph(
      name="random", item_ids=[f"i{i}" for i in range(num_items)],
      pivot_ids=[f"p{i}" for i in range(num_pivots)],
      edge_items=edges_i, edge_pivots=edges_p,
      dense=rng.normal(size=(num_items, 3)).astype(np.float32), dense_names=("a", "b", "c"),
      sparse=[graph_lib.SparseFeature("tok", "hashed_text", 30, tokens)])
  ids = rng.integers(0, num_items, (num_items, t)).astype(np.int32)
  # Item 5 is isolated (no neighbors); item 6 has only two.
  ids[5] = -1
  ids[6, 2:] = -1
  weights = rng.random((num_items, t)).astype(np.float32)
  weights[ids < 0] = 0
  weights /= np.maximum(weights.sum(1, keepdims=True), 1e-12)
  hard = rng.integers(0, num_items, (num_items, pool)).astype(np.int32)
  hard[7] = -1  # no hard candidates for item 7
  hard[8, 2:] = -1
  return g, ids, weights, hard


def _levels(batch):
  """Item ids of every level, reconstructed through the self indices."""
  levels = [batch.inputs.item.numpy()]
  for hop in batch.hops:
    levels.append(levels[-1][hop.self_index.numpy()])
  return levels


class TestMinibatchBuilder:

  def _build(self, query, positive, cfg, h=0):
    g, ids, weights, hard = _random_setup()
    tables = pipeline.SamplingTables.build(g, ids, weights, hard_pool=hard)
    builder = pipeline.MinibatchBuilder(tables, cfg, len(query), num_hard_negatives=h)
    batch = builder(tf.constant([3, 4], tf.int64), tf.constant(query, tf.int32),
                    tf.constant(positive, tf.int32))
    return g, ids, weights, hard, tables, batch

  def test_targets_neighbors_and_features_are_consistent(self):
    cfg = pipeline.PipelineConfig(batch_size=4, num_negatives=5, max_hard_negatives=3)
    query, positive = [5, 6, 7, 8], [9, 5, 10, 11]
    g, ids, weights, hard, tables, batch = self._build(query, positive, cfg, h=2)
    levels = _levels(batch)
    top = levels[-1]
    np.testing.assert_array_equal(top[batch.query.numpy()], query)
    np.testing.assert_array_equal(top[batch.positive.numpy()], positive)
    np.testing.assert_array_equal(minibatch.target_items(batch, batch.positive), positive)
    np.testing.assert_array_equal(minibatch.target_items(batch, batch.hard_negative),
                                  top[batch.hard_negative.numpy()])
    negatives = top[batch.negative.numpy()]
    assert negatives.shape == (5,) and negatives.min() >= 0 and negatives.max() < 200
    # Hard negatives come from the query's pool; item 7 has none (mask 0),
    # only the first h=2 of H=3 slots are active.
    mask = batch.hard_mask.numpy()
    np.testing.assert_array_equal(mask, [[1, 1, 0], [1, 1, 0], [0, 0, 0], [1, 1, 0]])
    hard_items = top[batch.hard_negative.numpy()]
    for row, q in enumerate(query):
      active = mask[row] > 0
      assert set(hard_items[row][active]) <= set(hard[q][hard[q] >= 0])
      # Inactive slots point at the query itself: they add no node.
      np.testing.assert_array_equal(hard_items[row][~active], q)
    assert set(hard_items[3][:2]) <= {hard[8, 0], hard[8, 1]}
    # Every real node of level k: its neighbors in level k-1 are its table row.
    real = batch.num_nodes.numpy()
    for k, hop in enumerate(batch.hops, start=1):
      below, here = levels[k - 1], levels[k]
      assert len(set(here[:real[k]])) == real[k], "level nodes must be unique"
      assert len(set(below[:real[k - 1]])) == real[k - 1]
      nbr_items = below[hop.neighbor_index.numpy()[:real[k]]]
      w = hop.neighbor_weight.numpy()[:real[k]]
      for row, item in enumerate(here[:real[k]]):
        valid = ids[item] >= 0
        np.testing.assert_array_equal(nbr_items[row][valid], ids[item][valid])
        np.testing.assert_allclose(w[row], weights[item], rtol=1e-6)
      np.testing.assert_array_equal(hop.neighbor_weight.numpy()[real[k]:], 0)
    # Isolated item 5 has an all-zero weight row at the last level.
    row5 = list(top).index(5)
    np.testing.assert_array_equal(batch.hops[-1].neighbor_weight.numpy()[row5], 0)
    # Level-0 features are the graph's rows.
    items0 = levels[0]
    np.testing.assert_allclose(batch.inputs.dense.numpy(), g.features.dense[items0])
    np.testing.assert_allclose(batch.inputs.log_degree.numpy(), g.features.log_degree[items0])
    np.testing.assert_array_equal(batch.inputs.sparse[0].numpy(), tables.sparse[0][items0])

  def test_static_shapes_match_level_sizes(self):
    cfg = pipeline.PipelineConfig(batch_size=8, num_negatives=6, max_hard_negatives=2)
    q = list(range(8))
    *_, batch = self._build(q, q[::-1], cfg)
    # targets = 2*8 + 6 + 8*2 = 38; level 1 = min(38*5, 200) = 190; level 0 = 200.
    assert [h.neighbor_index.shape[0] for h in batch.hops] == [190, 38]
    assert batch.inputs.item.shape == (200,)
    assert batch.hard_negative.shape == (8, 2)

  def test_inactive_hard_slots_add_no_nodes(self):
    # Epoch 1 of the curriculum (0 of H=3 slots active) computes exactly the
    # nodes of a batch without hard negatives; an active epoch adds some.
    query, positive = list(range(20, 36)), list(range(40, 56))
    sizes = {}
    for hmax, h in ((0, 0), (3, 0), (3, 3)):
      cfg = pipeline.PipelineConfig(batch_size=16, num_negatives=5, max_hard_negatives=hmax)
      *_, batch = self._build(query, positive, cfg, h=h)
      sizes[(hmax, h)] = batch.num_nodes.numpy()
    np.testing.assert_array_equal(sizes[(3, 0)], sizes[(0, 0)])
    assert sizes[(3, 3)][-1] > sizes[(0, 0)][-1]

  def test_rejects_hard_negatives_beyond_width(self):
    g, ids, weights, hard = _random_setup()
    tables = pipeline.SamplingTables.build(g, ids, weights, hard_pool=hard)
    cfg = pipeline.PipelineConfig(batch_size=4, max_hard_negatives=1)
    with pytest.raises(ValueError, match="num_hard_negatives"):
      pipeline.MinibatchBuilder(tables, cfg, 4, num_hard_negatives=2)


def _dataset_setup(**cfg_kwargs):
  g, ids, weights, hard = _random_setup()
  tables = pipeline.SamplingTables.build(g, ids, weights, hard_pool=hard)
  rng = np.random.default_rng(1)
  pairs = (rng.integers(0, 200, 256), rng.integers(0, 200, 256))
  cfg = pipeline.PipelineConfig(batch_size=32, num_negatives=8, max_hard_negatives=2,
                                **cfg_kwargs)
  return tables, pairs, cfg


def test_dataset_is_reproducible_for_a_seed_and_changes_with_epoch():
  tables, pairs, cfg = _dataset_setup(deterministic=True, seed=3)

  def first_items(epoch):
    batch = next(iter(pipeline.make_dataset(tables, pairs, cfg, epoch=epoch,
                                            num_hard_negatives=1)))
    top = _levels(batch)[-1]
    return top[batch.query.numpy()], top[batch.negative.numpy()]

  q1, n1 = first_items(1)
  q1b, n1b = first_items(1)
  q2, _ = first_items(2)
  np.testing.assert_array_equal(q1, q1b)
  np.testing.assert_array_equal(n1, n1b)
  assert not np.array_equal(q1, q2), "a new epoch must reshuffle"


def test_each_epoch_covers_every_pair_once():
  tables, pairs, cfg = _dataset_setup()
  seen = []
  for batch in pipeline.make_dataset(tables, pairs, cfg):
    top = _levels(batch)[-1]
    seen.extend(zip(top[batch.query.numpy()], top[batch.positive.numpy()]))
  assert len(seen) == 256  # 8 full batches of 32, nothing dropped
  assert sorted(seen) == sorted(zip(*pairs))


def test_dataset_graph_has_no_python_ops_and_detector_works():
  tables, pairs, cfg = _dataset_setup()
  ds = pipeline.make_dataset(tables, pairs, cfg)
  assert pipeline.forbidden_ops(ds) == []
  pipeline.assert_pure_tensorflow(ds)
  # Positive control: the detector must flag a py_function in a map.
  bad = ds.map(lambda b: tf.py_function(lambda x: x, [b.query], tf.int32))
  assert "EagerPyFunc" in pipeline.forbidden_ops(bad)
  with pytest.raises(ValueError, match="Python-calling"):
    pipeline.assert_pure_tensorflow(bad)


def _map_captures(dataset):
  """Captured inputs of the map function of `dataset` (found below prefetch)."""
  node = dataset
  while not hasattr(node, "_map_func"):
    node = node._input_dataset  # pylint: disable=protected-access
  return node._map_func.function.captured_inputs  # pylint: disable=protected-access


def test_datasets_share_the_tables_as_variables():
  tables, pairs, cfg = _dataset_setup()
  tensors = pipeline.table_tensors(tables)
  assert pipeline.table_tensors(tables) is tensors  # created once per tables
  assert all(isinstance(v, tf.Variable) and not v.trainable
             for v in tf.nest.flatten(tensors))
  np.testing.assert_array_equal(tensors["hard_pool"].numpy(), tables.hard_pool)
  # Every table a dataset uses is captured as a handle: no table-sized tensor is
  # copied into an epoch's dataset.
  for epoch in (1, 2):
    captures = _map_captures(pipeline.make_dataset(tables, pairs, cfg, epoch=epoch))
    sizes = [int(np.prod(c.shape)) for c in captures if c.dtype != tf.resource]
    assert max(sizes, default=0) < tables.num_items, sizes
    assert sum(c.dtype == tf.resource for c in captures) >= 4
  # A new `tables` value (e.g. `dataclasses.replace`) gets its own variables.
  other = dataclasses.replace(tables, hard_counts=tables.hard_counts.copy())
  assert pipeline.table_tensors(other) is not tensors


def test_table_tensors_refuse_to_be_mirrored():
  tables, _, _ = _dataset_setup()
  with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
    with pytest.raises(ValueError, match="before entering strategy.scope"):
      pipeline.table_tensors(tables)


def test_distributed_over_two_logical_cpus():
  devices = [d.name for d in tf.config.list_logical_devices("CPU")]
  assert len(devices) >= 2, devices
  strategy = tf.distribute.MirroredStrategy(devices[:2])
  assert strategy.num_replicas_in_sync == 2
  tables, pairs, cfg = _dataset_setup()
  dist = strategy.distribute_datasets_from_function(
      pipeline.make_distributed_dataset_fn(tables, pairs, cfg))
  batch = next(iter(dist))
  per_replica = strategy.experimental_local_results(batch.query)
  assert len(per_replica) == 2
  # Global batch 32 -> 16 pairs per replica, each with its own shared negatives.
  assert [q.shape[0] for q in per_replica] == [16, 16]
  assert [n.shape[0] for n in strategy.experimental_local_results(batch.negative)] == [8, 8]


def test_level_sizes():
  # 10 targets, T=3, K=2: U_2=10, U_1=40, U_0=min(160, 100)=100.
  assert pipeline.level_sizes(10, 3, 2, 100) == [100, 40, 10]


def test_bad_config_and_tables_are_rejected():
  with pytest.raises(ValueError, match="negative_sampling"):
    pipeline.PipelineConfig(negative_sampling="zipf")
  g, ids, weights, _ = _random_setup()
  with pytest.raises(ValueError, match="another graph"):
    pipeline.SamplingTables.build(g, ids[:10], weights[:10])


def test_batches_mix_the_whole_epoch_not_a_window_of_the_stored_order():
  # Pairs stored grouped (query-sorted, as prepared data is user-sorted), with a
  # shuffle buffer far smaller than the data: a buffer alone would fill the first
  # batch from the first ~buffer + batch pairs only.
  g, ids, weights, hard = _random_setup()
  tables = pipeline.SamplingTables.build(g, ids, weights, hard_pool=hard)
  query = np.repeat(np.arange(200, dtype=np.int32), 10)  # 2000 pairs, sorted by query
  positive = np.roll(query, 1)
  cfg = pipeline.PipelineConfig(batch_size=50, num_negatives=4, shuffle_buffer=16,
                                deterministic=True)
  ds = pipeline.make_dataset(tables, (query, positive), cfg)
  batch = next(iter(ds))
  first = _levels(batch)[-1][batch.query.numpy()]
  # Buffer-only would give queries < (16 + 50) / 10 < 7; a permutation spreads them.
  assert first.max() >= 100 and first.min() < 100, sorted(first)
  assert np.unique(first).shape[0] > 30
  # Still every pair exactly once per epoch (40 full batches).
  seen = []
  for b in ds:
    top = _levels(b)[-1]
    seen.extend(zip(top[b.query.numpy()], top[b.positive.numpy()]))
  assert sorted(seen) == sorted(zip(query.tolist(), positive.tolist()))


def _pivot_setup(tp=3):
  """`_random_setup` plus a pivot table: pivot p's neighbors are items 3p..3p+tp-1."""
  g, ids, weights, hard = _random_setup()
  pivot_ids = (3 * np.arange(g.num_pivots)[:, None] + np.arange(tp)[None, :]).astype(np.int32)
  pivot_weights = np.full(pivot_ids.shape, 1.0 / tp, np.float32)
  pivot_ids[4, 1:] = -1  # pivot 4 has one neighbor (12)
  pivot_weights[4] = [1.0, 0.0, 0.0]
  tables = pipeline.SamplingTables.build(g, ids, weights, hard_pool=hard,
                                         pivot_neighbor_ids=pivot_ids,
                                         pivot_neighbor_weights=pivot_weights)
  return g, ids, weights, tables, pivot_ids, pivot_weights


class TestLeakageMask:

  def _tables(self):
    g, ids, weights, hard = _random_setup()
    ids[20] = [21, 22, 23, 24]   # 20's neighbors hold its positive 21
    ids[21] = [25, 20, 26, 27]   # and 21's hold its query 20
    weights[20] = weights[21] = 0.25
    return pipeline.SamplingTables.build(g, ids, weights, hard_pool=hard), ids

  @pytest.mark.parametrize("mask", [True, False])
  def test_pair_items_leave_each_others_last_hop(self, mask):
    tables, ids = self._tables()
    cfg = pipeline.PipelineConfig(batch_size=2, num_negatives=3, mask_pair_leakage=mask)
    builder = pipeline.MinibatchBuilder(tables, cfg, 2)
    batch = builder(tf.constant([1, 2], tf.int64), tf.constant([20, 30], tf.int32),
                    tf.constant([21, 31], tf.int32))
    levels = _levels(batch)
    top, below = levels[-1], levels[-2]
    last = batch.hops[-1]
    for item, partner in ((20, 21), (21, 20)):
      row = list(top).index(item)
      items = below[last.neighbor_index.numpy()[row]]
      w = last.neighbor_weight.numpy()[row]
      np.testing.assert_array_equal(items, ids[item])
      expected = [0.0 if (mask and n == partner) else 0.25 for n in ids[item]]
      np.testing.assert_allclose(w, expected)
    # The first hop (level 0 -> 1) keeps its full rows: only the last hop is masked.
    first = batch.hops[0]
    row = list(levels[1]).index(20)
    np.testing.assert_allclose(first.neighbor_weight.numpy()[row], 0.25)


class TestPivotPairs:

  def test_pivots_neighbors_and_positives(self):
    g, ids, weights, tables, pivot_ids, pivot_weights = _pivot_setup()
    cfg = pipeline.PipelineConfig(batch_size=2, pivot_batch_size=3, num_negatives=4)
    builder = pipeline.MinibatchBuilder(tables, cfg, 2, replica_pivot_batch_size=3)
    pivot, pivot_positive = [1, 4, 7], [4, 50, 22]   # pivot 1 = {3, 4, 5}: 4 is masked
    batch = builder(tf.constant([5, 6], tf.int64), tf.constant([100, 101], tf.int32),
                    tf.constant([102, 103], tf.int32), tf.constant(pivot, tf.int32),
                    tf.constant(pivot_positive, tf.int32))
    levels = _levels(batch)
    np.testing.assert_array_equal(levels[-1][batch.pivot_positive.numpy()], pivot_positive)
    np.testing.assert_array_equal(minibatch.target_items(batch, batch.pivot_positive),
                                  pivot_positive)
    nbr_items = levels[-2][batch.pivot_neighbor_index.numpy()]
    w = batch.pivot_neighbor_weight.numpy()
    np.testing.assert_array_equal(nbr_items[0], [3, 4, 5])
    np.testing.assert_allclose(w[0], [1 / 3, 0.0, 1 / 3], rtol=1e-6)  # the positive is out
    # Pivot 4 has one neighbor; padding repeats it with weight 0.
    np.testing.assert_array_equal(nbr_items[1], [12, 12, 12])
    np.testing.assert_allclose(w[1], [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(nbr_items[2], [21, 22, 23])
    np.testing.assert_allclose(w[2], [1 / 3, 0.0, 1 / 3], rtol=1e-6)
    # Shapes: targets 2*2 + 3 + 4 = 11; level 1 = 11*5 + 3*3 = 64; level 0 = 200.
    assert [h.neighbor_index.shape[0] for h in batch.hops] == [64, 11]
    assert batch.pivot_neighbor_index.shape == (3, 3)

  def test_rejects_pivot_pairs_without_a_pivot_table(self):
    g, ids, weights, hard = _random_setup()
    tables = pipeline.SamplingTables.build(g, ids, weights)
    cfg = pipeline.PipelineConfig(batch_size=0, pivot_batch_size=2)
    with pytest.raises(ValueError, match="pivot neighborhoods"):
      pipeline.MinibatchBuilder(tables, cfg, 0, replica_pivot_batch_size=2)
    with pytest.raises(ValueError, match="not both 0"):
      pipeline.PipelineConfig(batch_size=0, pivot_batch_size=0)
    with pytest.raises(ValueError, match="pivot_neighbor_ids must have shape"):
      pipeline.SamplingTables.build(g, ids, weights, pivot_neighbor_ids=np.zeros((3, 2)),
                                    pivot_neighbor_weights=np.zeros((3, 2)))

  @pytest.mark.parametrize("item_batch", [0, 16])
  def test_dataset_zips_the_streams_and_the_longer_sets_the_epoch(self, item_batch):
    g, ids, weights, tables, *_ = _pivot_setup()
    rng = np.random.default_rng(0)
    pairs = positives.EpochPairs(
        query=rng.integers(0, 200, 64).astype(np.int32),
        positive=rng.integers(0, 200, 64).astype(np.int32),
        pivot=rng.integers(0, 60, 160).astype(np.int32),
        pivot_positive=rng.integers(0, 200, 160).astype(np.int32))
    cfg = pipeline.PipelineConfig(batch_size=item_batch, pivot_batch_size=32, num_negatives=4,
                                  deterministic=True)
    # Pivot stream: 160 / 32 = 5 batches; item stream 64 / 16 = 4 (it repeats).
    assert pipeline.steps_per_epoch(pairs, cfg) == 5
    batches = list(pipeline.make_dataset(tables, pairs, cfg))
    assert len(batches) == 5
    seen = []
    for batch in batches:
      top = _levels(batch)[-1]
      assert batch.query.shape == (item_batch,)
      seen.extend(top[batch.pivot_positive.numpy()].tolist())
    # Every pivot pair once per epoch.
    assert sorted(seen) == sorted(pairs.pivot_positive.tolist())


def test_content_dropout_presents_targets_as_items_without_edges():
  g, ids, weights, _ = _random_setup()
  n = g.num_items
  # A content table unlike the importance table: i -> (i+1, i+2) weighted 0.6 / 0.4.
  content_ids = np.stack([(np.arange(n) + 1) % n, (np.arange(n) + 2) % n,
                          np.full(n, -1), np.full(n, -1)], axis=1).astype(np.int32)
  content_w = np.tile(np.array([0.6, 0.4, 0, 0], np.float32), (n, 1))
  tables = pipeline.SamplingTables.build(g, ids, weights, content_neighbor_ids=content_ids,
                                         content_neighbor_weights=content_w)
  query, positive = list(range(20, 36)), list(range(40, 56))
  cfg = pipeline.PipelineConfig(batch_size=16, num_negatives=8, mask_pair_leakage=False,
                                content_neighbors=True, content_dropout=0.5)
  batch = pipeline.MinibatchBuilder(tables, cfg, 16)(
      tf.constant([3, 4], tf.int64), tf.constant(query, tf.int32), tf.constant(positive, tf.int32))
  levels = _levels(batch)
  real = batch.num_nodes.numpy()
  targets = levels[-1][:real[-1]]
  position0 = {item: i for i, item in enumerate(levels[0][:real[0]])}
  log_degree = batch.inputs.log_degree.numpy()
  as_cold = []
  for k, hop in enumerate(batch.hops, start=1):
    below, here = levels[k - 1], levels[k]
    nbr_items = below[hop.neighbor_index.numpy()]
    w = hop.neighbor_weight.numpy()
    for row, item in enumerate(here[:real[k]]):
      cold = row < len(targets) and np.allclose(w[row], content_w[item])
      if cold:
        np.testing.assert_array_equal(nbr_items[row][:2], content_ids[item][:2])
        assert log_degree[position0[item]] == 0
      else:
        np.testing.assert_allclose(w[row], weights[item], rtol=1e-6)
        valid = ids[item] >= 0
        np.testing.assert_array_equal(nbr_items[row][valid], ids[item][valid])
      if row < len(targets):
        as_cold.append((k, item, cold))
  # The same targets are cold at both hops, and about half of them are.
  by_hop = [{item for kk, item, c in as_cold if kk == k and c} for k in (1, 2)]
  assert by_hop[0] == by_hop[1]
  assert 0.2 * len(targets) < len(by_hop[1]) < 0.8 * len(targets)
  warm = [position0[t] for t in targets if t not in by_hop[1]]
  np.testing.assert_allclose(log_degree[warm], g.features.log_degree[levels[0][warm]])
  # Content neighbors are not leakage-masked: with positive = query + 1 (the
  # query's first content neighbor), a cold query keeps weight 0.6 on it.
  masked = pipeline.MinibatchBuilder(tables, dataclasses.replace(cfg, mask_pair_leakage=True),
                                     16)(tf.constant([3, 4], tf.int64),
                                         tf.constant(query, tf.int32),
                                         tf.constant([q + 1 for q in query], tf.int32))
  top_hop = masked.hops[-1]
  kept = 0
  for row, item in enumerate(_levels(masked)[-1][:masked.num_nodes.numpy()[-1]]):
    if item in query and np.allclose(top_hop.neighbor_weight.numpy()[row], content_w[item]):
      kept += 1
  assert kept > 0
  # Without dropout the content table changes nothing.
  plain = pipeline.MinibatchBuilder(pipeline.SamplingTables.build(g, ids, weights),
                                    pipeline.PipelineConfig(batch_size=16, num_negatives=8), 16)
  again = pipeline.MinibatchBuilder(tables, pipeline.PipelineConfig(
      batch_size=16, num_negatives=8, content_neighbors=True), 16)
  args = (tf.constant([3, 4], tf.int64), tf.constant(query, tf.int32),
          tf.constant(positive, tf.int32))
  for a, b in zip(plain(*args).hops, again(*args).hops):
    np.testing.assert_array_equal(a.neighbor_index.numpy(), b.neighbor_index.numpy())
  with pytest.raises(ValueError, match="content_neighbor_ids"):
    pipeline.MinibatchBuilder(pipeline.SamplingTables.build(g, ids, weights), cfg, 16)
  with pytest.raises(ValueError, match="content_neighbors=True"):
    pipeline.PipelineConfig(content_dropout=0.3)
  with pytest.raises(ValueError, match=r"\[0, 1\)"):
    pipeline.PipelineConfig(content_neighbors=True, content_dropout=1.0)


def test_edges_negative_sampling_never_draws_items_without_edges():
  # Items 0-49 have edges, 50-99 none.
  rng = np.random.default_rng(3)
  g = graph_lib.build_graph(
      name="half", item_ids=[f"i{i}" for i in range(100)], pivot_ids=[f"p{i}" for i in range(10)],
      edge_items=np.arange(50).repeat(2), edge_pivots=rng.integers(0, 10, 100),
      dense=rng.normal(size=(100, 2)).astype(np.float32), dense_names=("a", "b"))
  ids = np.full((100, 3), -1, np.int32)
  weights = np.zeros((100, 3), np.float32)
  tables = pipeline.SamplingTables.build(g, ids, weights, negative_sampling="edges")
  np.testing.assert_allclose(np.exp(tables.negative_logits[:50]), 1 / 50, rtol=1e-6)
  assert np.all(np.isneginf(tables.negative_logits[50:]))
  cfg = pipeline.PipelineConfig(batch_size=4, num_negatives=400, negative_sampling="edges")
  batch = pipeline.MinibatchBuilder(tables, cfg, 4)(
      tf.constant([1, 2], tf.int64), tf.constant([0, 1, 2, 3], tf.int32),
      tf.constant([4, 5, 6, 7], tf.int32))
  negatives = _levels(batch)[-1][batch.negative.numpy()]
  assert negatives.max() < 50 and len(set(negatives)) > 40
  # Tables built for another distribution are refused.
  with pytest.raises(ValueError, match="negative_logits are for 'degree'"):
    pipeline.MinibatchBuilder(pipeline.SamplingTables.build(g, ids, weights), cfg, 4)
  with pytest.raises(ValueError, match="negative_sampling"):
    pipeline.SamplingTables.build(g, ids, weights, negative_sampling="zipf")
