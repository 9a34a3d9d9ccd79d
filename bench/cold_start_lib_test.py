"""Tests of the cold-start split and the inductive embedding path.

A hand-made 5-item graph checks `hold_out_items` exactly; a small synthetic
graph (400 items) checks the invariants at scale and, with a seeded randomly
initialised 2-layer model, the inductive embeddings against the layer-wise
pass and the exported `embed_new_items` computation.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import numpy as np
import pytest

import pinsage_tf  # noqa: F401
import tensorflow as tf

from data import synthetic
from pinsage_tf import export
from pinsage_tf import graph as graph_lib
from pinsage_tf import inference
from pinsage_tf import model as model_lib
from pinsage_tf import neighborhoods as nb_lib
from pinsage_tf import pipeline
from pinsage_tf import retrieval_exact as rx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cold_start_lib  # noqa: E402

_T, _V, _S = graph_lib.Split.TRAIN, graph_lib.Split.VALIDATION, graph_lib.Split.TEST


def _hand_graph() -> graph_lib.Graph:
  # Pivots a=0, b=1, c=2. Item 0: {a, b}, 1: {a}, 2: {b, c}, 3: {c}, 4: no edge.
  # Validation/test queries with a different positive: 2, 4 (no edges) and 3;
  # item 1's only validation pair is a self-pair. So the eligible items are {2, 3}.
  pairs = [(0, 1, _T), (1, 2, _T), (2, 3, _T), (3, 0, _T), (0, 4, _T),
           (2, 1, _V), (4, 0, _V), (1, 1, _V), (3, 2, _S)]
  q, p, s = (np.array(x) for x in zip(*pairs))
  return graph_lib.build_graph(
      name="hand", item_ids=[f"i{i}" for i in range(5)], pivot_ids=["a", "b", "c"],
      edge_items=np.array([0, 0, 1, 2, 2, 3]), edge_pivots=np.array([0, 1, 0, 1, 2, 2]),
      dense=np.arange(10, dtype=np.float32).reshape(5, 2), dense_names=["x", "y"],
      pairs=graph_lib.ItemPairs(q.astype(np.int32), p.astype(np.int32), s.astype(np.int8),
                                # group = the pair's position, so kept pairs are traceable
                                np.arange(len(pairs), dtype=np.int32)))


def _rows(csr: graph_lib.CSR) -> list[list[int]]:
  return [csr.row(r).tolist() for r in range(csr.num_rows)]


def test_hold_out_on_a_hand_made_graph():
  graph = _hand_graph()
  np.testing.assert_array_equal(cold_start_lib.eligible_items(graph), [2, 3])
  split = cold_start_lib.hold_out_items(graph, fraction=0.9, seed=0)  # round(0.9 * 2) = 2 items
  reduced = split.graph
  np.testing.assert_array_equal(split.cold_items, [2, 3])
  assert split.cold_items.dtype == np.int32
  assert _rows(split.pivot_lists) == [[1, 2], [2]]  # what items 2 and 3 lost
  assert _rows(reduced.item_to_pivot) == [[0, 1], [0], [], [], []]
  assert _rows(reduced.pivot_to_item) == [[0, 1], [0], []]  # pivot c lost all its items
  np.testing.assert_allclose(reduced.features.log_degree, np.log1p([2, 1, 0, 0, 0]), rtol=1e-6)
  # Train pairs (1,2), (2,3), (3,0) touch a cold item; validation/test pairs stay.
  pairs = list(zip(reduced.pairs.query.tolist(), reduced.pairs.positive.tolist(),
                   reduced.pairs.split.tolist()))
  assert pairs == [(0, 1, 0), (0, 4, 0), (2, 1, 1), (4, 0, 1), (1, 1, 1), (3, 2, 2)]
  assert split.dropped_train_pairs == 3
  np.testing.assert_array_equal(reduced.pairs.group, [0, 4, 5, 6, 7, 8])  # groups follow
  # Rows, features and ids are untouched.
  np.testing.assert_array_equal(reduced.item_ids, graph.item_ids)
  np.testing.assert_array_equal(reduced.pivot_ids, graph.pivot_ids)
  np.testing.assert_array_equal(reduced.features.dense, graph.features.dense)
  assert reduced.metadata["cold_start"]["removed_edges"] == 3
  assert split.summary() == {"cold_items": 2, "eligible_items": 2, "removed_edges": 3,
                             "dropped_train_pairs": 3, "remaining_edges": 3,
                             "remaining_train_pairs": 2}
  # The input graph is not modified.
  assert graph.num_edges == 6 and graph.pairs.count(_T) == 5
  # One item (round(0.4 * 2) = 1) is one of the eligible two.
  one = cold_start_lib.hold_out_items(graph, fraction=0.4, seed=3)
  assert one.cold_items.shape == (1,) and int(one.cold_items[0]) in (2, 3)


def test_cold_query_pairs_keeps_the_splits_pairs_with_cold_queries():
  graph = _hand_graph()
  val = cold_start_lib.cold_query_pairs(graph, np.array([2, 3]), "validation")
  assert list(zip(val.pairs.query.tolist(), val.pairs.positive.tolist())) == [(2, 1)]
  test = cold_start_lib.cold_query_pairs(graph, np.array([2, 3]), "test")
  assert list(zip(test.pairs.query.tolist(), test.pairs.positive.tolist())) == [(3, 2)]
  assert test.num_edges == graph.num_edges
  with pytest.raises(ValueError, match="split must be one of"):
    cold_start_lib.cold_query_pairs(graph, np.array([2]), "train")


@pytest.mark.parametrize("kwargs,message", [
    (dict(fraction=0.0), "fraction must be"),
    (dict(fraction=1.0), "fraction must be"),
    (dict(fraction=float("nan")), "fraction must be"),
    (dict(fraction="0.1"), "fraction must be"),
    (dict(seed=-1), "seed must be"),
    (dict(seed=1.5), "seed must be"),
])
def test_hold_out_rejects_bad_arguments(kwargs, message):
  with pytest.raises(ValueError, match=message):
    cold_start_lib.hold_out_items(_hand_graph(), **kwargs)


def test_hold_out_needs_evaluable_items():
  graph = _hand_graph()
  only_train = dataclasses.replace(graph, pairs=graph_lib.ItemPairs(
      graph.pairs.query[:5], graph.pairs.positive[:5], graph.pairs.split[:5]))
  with pytest.raises(ValueError, match="no item with training edges"):
    cold_start_lib.hold_out_items(only_train)


@pytest.fixture(scope="module")
def synth():
  graph = synthetic.generate(synthetic.SyntheticConfig(
      num_items=400, num_boards=120, num_communities=8, num_pairs=3000, seed=1))
  split = cold_start_lib.hold_out_items(graph, fraction=0.1, seed=0)
  reduced = split.graph
  nb = nb_lib.compute_neighborhoods(
      reduced, nb_lib.NeighborhoodConfig(num_neighbors=5, num_walks=20), num_threads=1)
  tables = pipeline.SamplingTables.build(reduced, nb.ids, nb.weights)
  tf.keras.utils.set_random_seed(0)
  model = model_lib.PinSageModel(model_lib.PinSageConfig(
      hidden_dim=16, embedding_dim=8, num_layers=2,
      encoder=model_lib.EncoderConfig.from_graph(reduced, dense_projection_dim=8,
                                                 sparse_embedding_dim=8)))
  model_lib.build_variables(model)
  vectors = inference.layerwise_embeddings(model, tables)
  transformed, _ = export.layer_tables(model, tables)
  return {"graph": graph, "split": split, "tables": tables, "model": model,
          "vectors": vectors, "transformed": transformed}


def test_hold_out_invariants_on_synthetic(synth):
  graph, split = synth["graph"], synth["split"]
  reduced, cold = split.graph, split.cold_items
  eligible = cold_start_lib.eligible_items(graph)
  assert cold.shape == (round(0.1 * eligible.size),) and np.all(np.diff(cold) > 0)
  assert np.isin(cold, eligible).all()
  is_cold = np.zeros(graph.num_items, bool)
  is_cold[cold] = True
  # Edges: the cold items have none left, in either direction; nothing else changed.
  assert np.all(reduced.item_degrees()[cold] == 0)
  assert not is_cold[reduced.pivot_to_item.indices].any()
  assert reduced.num_edges == graph.num_edges - int(graph.item_degrees()[cold].sum())
  for i in np.flatnonzero(~is_cold):
    np.testing.assert_array_equal(reduced.pivots_of(i), graph.pivots_of(i))
  for c, item in enumerate(cold):
    np.testing.assert_array_equal(split.pivot_lists.row(c), graph.pivots_of(item))
  np.testing.assert_array_equal(
      reduced.features.log_degree,
      np.where(is_cold, 0.0, graph.features.log_degree).astype(np.float32))
  # Pairs: no train pair touches a cold item, the other train pairs and all
  # validation/test pairs are kept.
  q, p = reduced.pairs.of(_T)
  assert not (is_cold[q] | is_cold[p]).any()
  gq, gp = graph.pairs.of(_T)
  assert q.shape[0] == np.count_nonzero(~(is_cold[gq] | is_cold[gp])) > 0
  assert split.dropped_train_pairs == gq.shape[0] - q.shape[0] > 0
  for s in (_V, _S):
    for a, b in zip(reduced.pairs.of(s), graph.pairs.of(s)):
      np.testing.assert_array_equal(a, b)
  # Every cold item can be evaluated.
  val, test = (cold_start_lib.cold_query_pairs(reduced, cold, name)
               for name in ("validation", "test"))
  queries = np.concatenate([val.pairs.query, test.pairs.query])
  assert set(cold.tolist()) <= set(queries.tolist())


def test_hold_out_is_deterministic_per_seed(synth):
  graph = synth["graph"]
  again = cold_start_lib.hold_out_items(graph, fraction=0.1, seed=0)
  np.testing.assert_array_equal(again.cold_items, synth["split"].cold_items)
  assert again.graph.summary() == synth["split"].graph.summary()
  other = cold_start_lib.hold_out_items(graph, fraction=0.1, seed=1)
  assert not np.array_equal(other.cold_items, synth["split"].cold_items)


def test_saved_reduced_graph_round_trips(synth, tmp_path):
  path = str(tmp_path / "g")
  graph_lib.save_graph(synth["split"].graph, path)
  loaded = graph_lib.load_graph(path)
  assert loaded.summary() == synth["split"].graph.summary()
  assert loaded.metadata["cold_start"]["cold_items"] == synth["split"].cold_items.shape[0]


def _embed(synth, items, pivot_lists):
  return cold_start_lib.embed_inductively(
      synth["model"], synth["split"].graph, synth["tables"], items, pivot_lists,
      transformed=synth["transformed"], batch_size=7)  # several batches


def test_cold_items_without_pivots_get_their_layer_wise_embedding(synth):
  # No edges in the reduced graph and no pivots given: empty neighborhood and
  # log_degree 0 both ways, so the two paths compute the same function.
  cold = synth["split"].cold_items
  z = _embed(synth, cold, graph_lib.empty_csr(cold.shape[0]))
  assert z.shape == (cold.shape[0], 8) and z.dtype == np.float32
  np.testing.assert_allclose(z, synth["vectors"][cold], atol=1e-5)


def test_pivots_change_the_cold_embeddings(synth):
  split = synth["split"]
  with_pivots = _embed(synth, split.cold_items, split.pivot_lists)
  np.testing.assert_allclose(np.linalg.norm(with_pivots, axis=1), 1.0, atol=1e-5)
  without = synth["vectors"][split.cold_items]
  assert np.all(cold_start_lib.cosines(with_pivots, without) < 1 - 1e-4)
  # Deterministic: no sampling anywhere on this path.
  np.testing.assert_array_equal(_embed(synth, split.cold_items, split.pivot_lists), with_pivots)


def test_warm_items_are_close_to_their_layer_wise_embedding(synth):
  reduced = synth["split"].graph
  vectors = synth["vectors"]
  warm = np.flatnonzero(reduced.item_degrees() > 0)
  z = _embed(synth, warm, rx.take_rows(reduced.item_to_pivot, warm))
  cos = cold_start_lib.cosines(z, vectors[warm])
  # Close (one-hop neighborhood incl. the item itself vs the random-walk
  # table), not equal. Seeded random weights: mean 0.98, median 0.99.
  assert cos.mean() > 0.95 and np.median(cos) > 0.97, cos
  assert cos.max() < 1 - 1e-6
  # Much closer than to other items (random weights put all items in a cone,
  # ~0.85 here) and than without the pivots (~0.80).
  others = (z @ vectors[warm].T)[~np.eye(warm.shape[0], dtype=bool)]
  assert cos.mean() > others.mean() + 0.08
  bare = _embed(synth, warm, graph_lib.empty_csr(warm.shape[0]))
  assert cos.mean() > cold_start_lib.cosines(bare, vectors[warm]).mean() + 0.1


def test_equals_layer_wise_when_training_used_first_traversal_neighborhoods(synth):
  # If the training table IS the first-traversal table of every item's own
  # pivots, embedding an existing item through the cold-start path repeats
  # the layer-wise computation exactly.
  reduced, model = synth["split"].graph, synth["model"]
  pivot_index = reduced.item_to_pivot.to_padded(
      int(reduced.item_degrees().max()), pad=-1)
  ids, weights = export.first_traversal_neighborhoods(
      tf.constant(pivot_index), tf.constant(reduced.pivot_to_item.indptr),
      tf.constant(reduced.pivot_to_item.indices), reduced.num_items, 5)
  tables = pipeline.SamplingTables.build(reduced, ids.numpy(), weights.numpy())
  vectors = inference.layerwise_embeddings(model, tables)
  items = np.arange(reduced.num_items)
  z = cold_start_lib.embed_inductively(model, reduced, tables, items, reduced.item_to_pivot)
  np.testing.assert_allclose(z, vectors, atol=1e-5)


def test_matches_the_exported_embed_new_items(synth, tmp_path):
  split, tables, model = synth["split"], synth["tables"], synth["model"]
  reduced = split.graph
  vocab = {}
  for name, ids in (("items", reduced.item_ids), ("pivots", reduced.pivot_ids)):
    vocab[name] = os.path.join(tmp_path, f"{name}.txt")
    with open(vocab[name], "w") as f:
      f.write("".join(f"{raw}\n" for raw in ids.tolist()))
  module = export.EmbedderModule(
      vocab["items"], synth["vectors"], model=model, transformed=synth["transformed"],
      graph=reduced, pivot_vocab_file=vocab["pivots"], num_neighbors=tables.num_neighbors)
  cold = split.cold_items
  inputs = export.existing_item_inputs(reduced, tables, cold)
  padded = split.pivot_lists.to_padded(int(split.pivot_lists.degrees().max()), pad=-1)
  inputs["pivot_ids"] = np.where(padded >= 0, reduced.pivot_ids[np.maximum(padded, 0)], "")
  served = module.embed_new_items({k: tf.constant(v) for k, v in inputs.items()})
  np.testing.assert_allclose(_embed(synth, cold, split.pivot_lists),
                             served["embeddings"].numpy(), atol=1e-5)


def test_embed_inductively_rejects_bad_inputs(synth):
  split, tables = synth["split"], synth["tables"]
  reduced, cold = split.graph, split.cold_items

  def embed(**overrides):
    args = dict(model=synth["model"], graph=reduced, tables=tables, items=cold,
                pivot_lists=split.pivot_lists, transformed=synth["transformed"])
    args.update(overrides)
    return cold_start_lib.embed_inductively(**args)

  with pytest.raises(ValueError, match="one \\(possibly empty\\) pivot list per item"):
    embed(items=cold[:-1])
  with pytest.raises(ValueError, match=r"items must be rows in \[0, 400\)"):
    embed(items=np.where(np.arange(cold.size) == 0, 400, cold))
  bad_pivots = graph_lib.CSR(split.pivot_lists.indptr,
                             np.full_like(split.pivot_lists.indices, reduced.num_pivots))
  with pytest.raises(ValueError, match="column ids must lie in"):
    embed(pivot_lists=bad_pivots)
  with pytest.raises(ValueError, match="layer tables"):
    embed(transformed=synth["transformed"][:1])
  small = _hand_graph()
  with pytest.raises(ValueError, match="tables hold 400 items but the graph has 5"):
    embed(graph=small)
  id_model = model_lib.PinSageModel(dataclasses.replace(
      synth["model"].config, encoder=dataclasses.replace(synth["model"].config.encoder,
                                                         use_id_embedding=True)))
  with pytest.raises(ValueError, match="per-item id embedding"):
    embed(model=id_model)
