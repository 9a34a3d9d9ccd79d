"""Tests of the incremental refresh: tables and embeddings equal a full rebuild.

Fixture: a random bipartite graph of 120 items x 40 pivots (items 110..119
isolated, so the refresh also connects items that had no edge), chunks of 16
rows (the walk seeding unit, so several chunks are left alone), an untrained
2-layer model with item biases and pivot embeddings. "Full" = what the
batch jobs compute from scratch on the grown graph: `compute_neighborhoods`,
`compute_pivot_neighborhoods`, `LayerwiseInference`.
"""

from __future__ import annotations

import numpy as np
import pytest

import pinsage_tf  # noqa: F401
import tensorflow as tf

from pinsage_tf import graph as graph_lib
from pinsage_tf import inference
from pinsage_tf import model as model_lib
from pinsage_tf import neighborhoods as nb_lib
from pinsage_tf import pipeline
from pinsage_tf import refresh

_ITEM_CONFIG = nb_lib.NeighborhoodConfig(num_neighbors=4, num_walks=8, max_hops=2,
                                         chunk_size=16, seed=1)
_PIVOT_CONFIG = nb_lib.NeighborhoodConfig(num_neighbors=5, num_walks=8, max_hops=1,
                                          chunk_size=8, seed=2)


def _graph(dense_dim: int = 2) -> graph_lib.Graph:
  rng = np.random.default_rng(0)
  n, m = 120, 40
  items, pivots = [], []
  for p in range(m):
    # Pivot p links items of a local window, so walks stay local and some
    # chunks are out of reach of a small change.
    chosen = rng.choice(np.arange(3 * p % 100, 3 * p % 100 + 10), size=4, replace=False)
    items += chosen.tolist()
    pivots += [p] * 4
  heldout = graph_lib.HeldOut(
      validation=graph_lib.CSR.from_pairs(np.array([0, 1]), np.array([50, 60]), m),
      test=graph_lib.CSR.from_pairs(np.array([2]), np.array([70]), m))
  return graph_lib.build_graph(
      name="tiny", item_ids=[f"i{k}" for k in range(n)], pivot_ids=[f"p{k}" for k in range(m)],
      edge_items=np.array(items), edge_pivots=np.array(pivots),
      dense=rng.normal(size=(n, dense_dim)).astype(np.float32),
      dense_names=[f"f{k}" for k in range(dense_dim)], heldout=heldout)


def _model(graph, num_layers=2, id_embedding=False):
  tf.keras.utils.set_random_seed(0)
  config = model_lib.PinSageConfig(
      hidden_dim=12, embedding_dim=6, num_layers=num_layers, item_bias=True,
      encoder=model_lib.EncoderConfig.from_graph(graph, use_id_embedding=id_embedding))
  model = model_lib.PinSageModel(config)
  model_lib.build_variables(model)
  return model


def _full(model, graph, pivot=True):
  """Tables and embeddings computed from scratch on `graph`."""
  table = nb_lib.compute_neighborhoods(graph, _ITEM_CONFIG, num_threads=1)
  pivot_tables = {h: nb_lib.compute_pivot_neighborhoods(graph, _PIVOT_CONFIG, lists,
                                                        num_threads=1)
                  for h, lists in refresh.pivot_lists(graph).items()}
  tables = pipeline.SamplingTables.build(
      graph, table.ids, table.weights, pivot_neighbor_ids=pivot_tables["graph"].ids,
      pivot_neighbor_weights=pivot_tables["graph"].weights)
  runner = inference.LayerwiseInference(model, tables, batch_size=32)
  vectors, bias = runner.outputs()
  pivots = {h: runner.pivot_embeddings(t.ids, t.weights) for h, t in pivot_tables.items()}
  return table, pivot_tables, vectors, bias, pivots


# New edges: an existing pivot gains an existing item, an isolated item gets an
# edge, a new item joins an existing pivot and a new pivot, the new pivot also
# links an existing item.
_NEW_PIVOTS = ["p3", "p5", "p7", "pnew", "pnew"]
_NEW_ITEMS = ["i12", "i112", "inew", "inew", "i20"]


@pytest.fixture(scope="module")
def case():
  graph = _graph()
  model = _model(graph)
  table, pivot_tables, vectors, bias, pivots = _full(model, graph)
  result = refresh.refresh(
      model, graph, table, vectors, bias=bias, pivot_ids=_NEW_PIVOTS, item_ids=_NEW_ITEMS,
      new_item_dense=np.array([[0.5, -1.0]], np.float32),
      pivot_neighborhoods=pivot_tables["graph"], pivot_vectors=pivots, num_threads=1,
      batch_size=32)
  full = _full(model, result.graph)
  return {"graph": graph, "model": model, "before": (table, pivot_tables, vectors, bias, pivots),
          "result": result, "full": full}


def test_append_edges_grows_the_graph_and_keeps_existing_rows(case):
  graph, new = case["graph"], case["result"].graph
  delta = case["result"].delta
  assert new.num_items == 121 and new.num_pivots == 41
  assert new.item_ids[-1] == "inew" and new.pivot_ids[-1] == "pnew"
  assert new.num_edges == graph.num_edges + 5 - int(12 in graph.items_of(3))
  np.testing.assert_array_equal(new.item_ids[:120], graph.item_ids)
  np.testing.assert_array_equal(new.features.dense[:120], graph.features.dense)
  np.testing.assert_array_equal(new.features.dense[120], [0.5, -1.0])
  assert set(delta.changed_items.tolist()) == {20, 112, 120} | (
      set() if 12 in graph.items_of(3) else {12})
  unchanged = np.setdiff1d(np.arange(120), delta.changed_items)
  np.testing.assert_array_equal(new.features.log_degree[unchanged],
                                graph.features.log_degree[unchanged])
  assert new.features.log_degree[112] == np.float32(np.log1p(1))
  # Held-out rows follow their pivots; the new pivot has none.
  assert new.heldout.validation.num_rows == 41 and new.heldout.validation.row(40).size == 0
  np.testing.assert_array_equal(new.heldout.test.row(2), graph.heldout.test.row(2))


def test_neighborhood_tables_equal_a_full_recompute_and_spare_some_chunks(case):
  result, (table, *_), (full_table, full_pivots, *_) = (
      case["result"], case["before"], case["full"])
  np.testing.assert_array_equal(result.neighborhoods.ids, full_table.ids)
  np.testing.assert_array_equal(result.neighborhoods.weights, full_table.weights)
  np.testing.assert_array_equal(result.neighborhoods.counts, full_table.counts)
  np.testing.assert_array_equal(result.pivot_neighborhoods.ids, full_pivots["graph"].ids)
  np.testing.assert_array_equal(result.pivot_neighborhoods.weights,
                                full_pivots["graph"].weights)
  stats = result.stats["items"]
  assert 0 < stats["walk_affected"] <= stats["walked"] < 121
  # The table did change where the new edges are.
  assert np.any(result.neighborhoods.ids[:120] != table.ids)


def test_walk_bound_is_not_vacuous():
  """Rows outside the bound in chunks without an affected row keep their old row
  in a full recompute; rows inside it whose walks read the changed pivot change."""
  graph = _graph()
  table = nb_lib.compute_neighborhoods(graph, _ITEM_CONFIG, num_threads=1)
  new, delta = refresh.append_edges(graph, ["p10"], ["i40"])
  affected = refresh.walk_affected_items(new, delta, _ITEM_CONFIG)
  full = nb_lib.compute_neighborhoods(new, _ITEM_CONFIG, num_threads=1)
  chunk = np.arange(120) // _ITEM_CONFIG.chunk_size
  spared = ~np.isin(chunk, chunk[affected])
  assert spared.sum() >= 32
  np.testing.assert_array_equal(full.ids[spared], table.ids[spared])
  np.testing.assert_array_equal(full.weights[spared], table.weights[spared])
  changed = np.any(full.ids != table.ids, axis=1) | np.any(full.weights != table.weights, axis=1)
  assert changed[affected].any()
  assert not changed[spared].any()


def test_embeddings_equal_full_layerwise_and_untouched_rows_are_bit_identical(case):
  result = case["result"]
  _, _, vectors, bias, pivots = case["before"]
  _, _, full_vectors, full_bias, full_pivots = case["full"]
  np.testing.assert_allclose(result.vectors, full_vectors, atol=1e-5)
  np.testing.assert_allclose(result.bias, full_bias, atol=1e-5)
  for history in ("graph", "graph+validation"):
    np.testing.assert_allclose(result.pivot_vectors[history], full_pivots[history], atol=1e-5)
  stats = result.stats["items"]
  assert 0 < stats["embedded"] < 120
  same = np.all(result.vectors[:120] == vectors, axis=1)
  assert same.sum() == 120 - (stats["embedded"] - 1)  # the new item is the one extra row
  np.testing.assert_array_equal(result.bias[:120][same], bias[same])
  assert result.stats["pivots"]["graph"]["embedded"] < 41


def test_new_items_of_an_id_embedding_model_get_a_zero_id_part():
  graph = _graph(dense_dim=0)
  model = _model(graph, num_layers=1, id_embedding=True)
  table, pivot_tables, vectors, bias, pivots = _full(model, graph)
  result = refresh.refresh(model, graph, table, vectors, bias=bias, pivot_ids=["p1", "p1"],
                           item_ids=["inew", "i3"], pivot_neighborhoods=pivot_tables["graph"],
                           pivot_vectors=pivots, num_threads=1)
  full_vectors = _full(model, result.graph)[2]
  np.testing.assert_allclose(result.vectors, full_vectors, atol=1e-5)
  assert np.isfinite(result.vectors[120]).all() and abs(np.linalg.norm(result.vectors[120]) - 1) < 1e-5


@pytest.mark.parametrize("pivots,items,match", [
    (["i1"], ["i2"], "both item and pivot"),
    (["p1"], ["p2"], "both item and pivot"),
    (["p1"], ["inew"], "dense features"),
])
def test_append_edges_rejects_clashes_and_missing_features(pivots, items, match):
  with pytest.raises(ValueError, match=match):
    refresh.append_edges(_graph(), pivots, items)


def test_embedding_closure_follows_the_table():
  # 0 <- 1 <- 2 (row r lists its neighbors); item 3 alone.
  ids = np.array([[0, 0], [0, 1], [1, 2], [3, 3]], np.int32)
  changed = np.array([True, False, False, False])
  none = np.zeros(4, bool)
  c = refresh.embedding_closure(ids, changed, none, 2)
  assert [m.tolist() for m in c] == [[True, False, False, False], [True, True, False, False],
                                     [True, True, True, False]]
  c = refresh.embedding_closure(ids, none, np.array([False, False, False, True]), 1)
  assert c[1].tolist() == [False, False, False, True]


def test_edges_already_in_the_graph_change_nothing():
  graph = _graph()
  model = _model(graph, num_layers=1)
  table, pivot_tables, vectors, bias, pivots = _full(model, graph)
  pivot, item = graph.pivot_ids[0], graph.item_ids[graph.items_of(0)[0]]
  result = refresh.refresh(model, graph, table, vectors, bias=bias, pivot_ids=[pivot],
                           item_ids=[item], pivot_neighborhoods=pivot_tables["graph"],
                           pivot_vectors=pivots, num_threads=1)
  assert result.stats["graph"]["new_edges"] == 0 and result.stats["items"]["embedded"] == 0
  np.testing.assert_array_equal(result.vectors, vectors)
  np.testing.assert_array_equal(result.pivot_vectors["graph"], pivots["graph"])


@pytest.fixture(scope="module")
def bounded_case():
  graph = _graph()
  model = _model(graph)
  table, pivot_tables, vectors, bias, pivots = _full(model, graph)
  scope = refresh.RefreshScope(mode="bounded", walk_traversals=0, embed_hops=1)
  result = refresh.refresh(
      model, graph, table, vectors, bias=bias, pivot_ids=_NEW_PIVOTS, item_ids=_NEW_ITEMS,
      new_item_dense=np.array([[0.5, -1.0]], np.float32),
      pivot_neighborhoods=pivot_tables["graph"], pivot_vectors=pivots, num_threads=1,
      batch_size=32, scope=scope)
  return {"graph": graph, "model": model, "before": (table, pivot_tables, vectors, bias, pivots),
          "result": result}


def test_bounded_refresh_walks_only_the_changed_items(bounded_case):
  result = bounded_case["result"]
  table = bounded_case["before"][0]
  walked = np.flatnonzero(refresh.bounded_walk_items(
      result.graph, result.delta, refresh.RefreshScope(mode="bounded")))
  # walk_traversals=0: the endpoints of new edges (the new item included).
  np.testing.assert_array_equal(walked, result.delta.changed_items)
  assert result.stats["items"]["walked"] == walked.size
  kept = np.setdiff1d(np.arange(120), walked)
  np.testing.assert_array_equal(result.neighborhoods.ids[kept], table.ids[kept])
  np.testing.assert_array_equal(result.neighborhoods.weights[kept], table.weights[kept])
  assert (result.neighborhoods.counts[walked] > 0).all()
  # The exact bound is wider: the bounded mode saves walks here.
  exact = refresh.walk_affected_items(result.graph, result.delta, _ITEM_CONFIG)
  assert exact.sum() > walked.size


def test_bounded_refresh_embeds_exactly_on_its_tables_and_keeps_the_rest(bounded_case):
  result, model = bounded_case["result"], bounded_case["model"]
  _, pivot_tables, vectors, bias, pivots = bounded_case["before"]
  runner = inference.LayerwiseInference(model, result.tables, batch_size=32)
  on_tables, on_tables_bias = runner.outputs()
  changed_inputs = np.isin(np.arange(121), result.delta.changed_items)
  changed_nb = refresh.changed_rows(bounded_case["before"][0].ids,
                                    bounded_case["before"][0].weights,
                                    result.neighborhoods.ids, result.neighborhoods.weights)
  embedded = refresh.bounded_embedding_set(result.tables.neighbor_ids, changed_inputs,
                                           changed_nb, 1)
  assert result.stats["items"]["embedded"] == embedded.sum() < 121
  np.testing.assert_allclose(result.vectors[embedded], on_tables[embedded], atol=1e-5)
  np.testing.assert_allclose(result.bias[embedded], on_tables_bias[embedded], atol=1e-5)
  kept = np.flatnonzero(~embedded)
  np.testing.assert_array_equal(result.vectors[kept], vectors[kept])
  np.testing.assert_array_equal(result.bias[kept], bias[kept])
  # Somewhere outside the set the layer-wise result on the new tables differs:
  # the bound is an approximation, not exactness in disguise.
  assert np.abs(result.vectors[kept] - on_tables[kept]).max() > 1e-6
  # Pivots: the changed lists are embedded again from the refreshed table.
  changed = result.delta.changed_pivots
  table = result.pivot_neighborhoods
  expected = runner.pivot_embeddings(table.ids, table.weights)
  np.testing.assert_allclose(result.pivot_vectors["graph"][changed], expected[changed],
                             atol=1e-5)
  others = np.setdiff1d(np.arange(40), changed)
  np.testing.assert_array_equal(result.pivot_vectors["graph"][others], pivots["graph"][others])
  np.testing.assert_array_equal(result.pivot_vectors["graph+validation"][others],
                                pivots["graph+validation"][others])


def test_bounded_embedding_set_grows_by_neighbor_rows():
  # Row r's neighbors; item 0 changed. Hop 1 adds 1 (neighbor 0), hop 2 adds 2.
  neighbor_ids = np.array([[0, 0], [0, 1], [1, 2], [3, 3]], np.int32)
  changed = np.array([True, False, False, False])
  none = np.zeros(4, bool)
  np.testing.assert_array_equal(refresh.bounded_embedding_set(neighbor_ids, changed, none, 0),
                                [True, False, False, False])
  np.testing.assert_array_equal(refresh.bounded_embedding_set(neighbor_ids, changed, none, 1),
                                [True, True, False, False])
  np.testing.assert_array_equal(refresh.bounded_embedding_set(neighbor_ids, changed, none, 2),
                                [True, True, True, False])
  row3 = np.array([False, False, False, True])
  np.testing.assert_array_equal(refresh.bounded_embedding_set(neighbor_ids, none, row3, 0), row3)


@pytest.mark.parametrize("kwargs", [{"mode": "approx"}, {"walk_traversals": -1},
                                    {"embed_hops": 1.5}, {"embed_hops": True}])
def test_refresh_scope_rejects_bad_values(kwargs):
  with pytest.raises(ValueError, match="RefreshScope"):
    refresh.RefreshScope(**kwargs)


def test_recompute_rows_without_whole_chunks_walks_only_the_rows():
  graph = _graph()
  table = nb_lib.compute_neighborhoods(graph, _ITEM_CONFIG, num_threads=1)
  new, _ = refresh.append_edges(graph, ["p10"], ["i40"])
  out, recomputed = nb_lib.recompute_rows(new, table, np.array([40, 3, 40]), num_threads=1,
                                          whole_chunks=False)
  np.testing.assert_array_equal(recomputed, [3, 40])
  others = np.setdiff1d(np.arange(120), [3, 40])
  np.testing.assert_array_equal(out.ids[others], table.ids[others])
  # Row 40 is walked on the new graph: only the new graph links it to pivot 10's items.
  assert out.counts[40] > 0
  assert not set(table.ids[40].tolist()) & set(new.items_of(10).tolist()) - {40}
  assert set(out.ids[40][out.ids[40] >= 0].tolist()) & set(new.items_of(10).tolist())
