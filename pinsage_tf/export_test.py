"""Tests of the SavedModel exports (in-process, on a tiny hand-built graph).

The module fixture builds a 40-item graph with features (items 36..39 have no
pivots), a randomly initialised 2-layer PinSage model, its neighborhood table
and layer-wise embeddings, and exports version 1 of the three models. The
end-to-end path (trained model, CLI, server) is tested in
`trainer/export_test.py`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import pinsage_tf  # noqa: F401
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from pinsage_tf import export
from pinsage_tf import graph as graph_lib
from pinsage_tf import inference
from pinsage_tf import model as model_lib
from pinsage_tf import neighborhoods as nb_lib
from pinsage_tf import pipeline
from pinsage_tf import retrieval_exact
from pinsage_tf import scann_index

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_N, _M, _K = 40, 8, 5
_ISOLATED = (36, 37, 38, 39)


def _tiny_graph() -> graph_lib.Graph:
  rng = np.random.default_rng(0)
  items, pivots = [], []
  for i in range(_N - len(_ISOLATED)):
    # Community structure: item i mostly on pivots of its community (i % 2).
    for p in rng.choice(np.arange(i % 2, _M, 2), size=1 + i % 3, replace=False):
      items.append(i)
      pivots.append(int(p))
  color = graph_lib.CSR.from_pairs(np.arange(_N), np.arange(_N) % 4, _N)
  return graph_lib.build_graph(
      name="tiny", item_ids=[f"item{i}" for i in range(_N)],
      pivot_ids=[f"board{p}" for p in range(_M)],
      edge_items=np.array(items), edge_pivots=np.array(pivots),
      dense=rng.normal(size=(_N, 3)).astype(np.float32), dense_names=["a", "b", "c"],
      sparse=[graph_lib.SparseFeature(name="color", kind="categorical", vocab_size=4,
                                      values=color, vocab=None)])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  tf.keras.utils.set_random_seed(0)
  graph = _tiny_graph()
  nb = nb_lib.compute_neighborhoods(
      graph, nb_lib.NeighborhoodConfig(num_neighbors=3, num_walks=30, seed=0), num_threads=1)
  tables = pipeline.SamplingTables.build(graph, nb.ids, nb.weights)
  model = model_lib.PinSageModel(model_lib.PinSageConfig(
      hidden_dim=16, embedding_dim=8, num_layers=2,
      encoder=model_lib.EncoderConfig.from_graph(graph, dense_projection_dim=4,
                                                 sparse_embedding_dim=4)))
  model_lib.build_variables(model)
  vectors = inference.layerwise_embeddings(model, tables)
  np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)  # no dead rows
  base = str(tmp_path_factory.mktemp("exports"))
  config = export.ExportConfig(num_neighbors=_K, recall_queries=_N, exact_block_size=16)
  summary = export.export_models(base, model=model, graph=graph, tables=tables,
                                 embeddings=vectors, config=config)
  loaded = {name: tf.saved_model.load(os.path.join(base, name, "1"))
            for name in export.ALL_MODELS}
  return {"graph": graph, "tables": tables, "model": model, "vectors": vectors,
          "base": base, "summary": summary, "loaded": loaded, "config": config}


def _ids_to_rows(ids: np.ndarray) -> np.ndarray:
  return np.vectorize(lambda b: int(b.decode()[len("item"):]), otypes=[np.int64])(ids)


# --- Graph pieces on hand-computed fixtures ------------------------------------


def test_first_traversal_neighborhoods_hand_computed():
  # pivot 0 -> items {0, 1, 2}; pivot 1 -> {2, 3}; 5 items.
  indptr = tf.constant([0, 3, 5], tf.int64)
  items = tf.constant([0, 1, 2, 2, 3], tf.int32)
  pivots = tf.constant([[0, 1], [0, -1], [-1, -1], [1, 1]], tf.int32)
  ids, weights = export.first_traversal_neighborhoods(pivots, indptr, items, 5, 2)
  # Row 0: P'=2; v(0)=v(1)=1/2*1/3=1/6, v(2)=1/6+1/2*1/2=5/12, v(3)=1/4 -> items 2, 3
  #        with weights (5/12, 3/12) / (8/12) = (5/8, 3/8).
  # Row 1: one pivot of 3 items: a three-way tie of 1/3 -> the two lowest ids.
  # Row 2: no pivot -> empty neighborhood.
  # Row 3: a duplicated pivot counts twice: items 2, 3 with 1/2 each.
  np.testing.assert_array_equal(ids.numpy(), [[2, 3], [0, 1], [-1, -1], [2, 3]])
  np.testing.assert_allclose(weights.numpy(), [[5 / 8, 3 / 8], [.5, .5], [0, 0], [.5, .5]],
                             atol=1e-7)


def test_exact_top_k_blocks_and_ties():
  corpus = np.array([[1, 0], [0, 1], [1, 0], [.5, .5], [1, 0], [-1, 0], [0, 1]], np.float32)
  block = 3
  padded = np.zeros((9, 2), np.float32)  # 3 blocks of 3 rows, 2 padding rows
  padded[:7] = corpus
  queries = tf.constant([[1, 0], [0, 1]], tf.float32)
  scores, index = export.exact_top_k(tf.constant(padded), 7, queries, 3, block,
                                     exclude=tf.constant([2, -1]))
  # Query 0 scores: items 0, 2, 4 tie at 1 (2 is excluded), then item 3 at 0.5.
  # Query 1: items 1, 6 tie at 1, then item 3 (0.5); padding rows never appear.
  np.testing.assert_array_equal(index.numpy(), [[0, 4, 3], [1, 6, 3]])
  np.testing.assert_allclose(scores.numpy(), [[1, 1, .5], [1, 1, .5]])


def test_exact_top_k_masks_several_rows_per_query():
  corpus = np.array([[1, 0], [.9, 0], [.8, 0], [.7, 0], [.6, 0]], np.float32)
  padded = np.zeros((8, 2), np.float32)  # 2 blocks of 4 rows, 3 padding rows
  padded[:5] = corpus
  queries = tf.constant([[1, 0], [1, 0], [1, 0]], tf.float32)
  # Query 0 masks items 0 and 4 (one per block); query 1 masks nothing;
  # query 2 masks 4 of the 5 items, so only item 2 is left: -1 / -inf after it
  # (never a masked or padding row).
  exclude = tf.constant([[4, -1, 0, -1], [-1, -1, -1, -1], [0, 1, 3, 4]])
  scores, index = export.exact_top_k(tf.constant(padded), 5, queries, 3, 4, exclude=exclude)
  np.testing.assert_array_equal(index.numpy(), [[1, 2, 3], [0, 1, 2], [2, -1, -1]])
  np.testing.assert_allclose(scores.numpy(), [[.9, .8, .7], [1, .9, .8],
                                              [.8, -np.inf, -np.inf]], rtol=1e-6)


def test_drop_excluded_keeps_the_first_k_others_in_order():
  scores = tf.constant([[.9, .8, .7], [.9, .8, .7]])
  index = tf.constant([[4, 7, 1], [3, 5, 6]])
  # One excluded row per query: the query item, or the last entry if absent.
  s, i = export.drop_excluded(scores, index, tf.constant([7, 9]), 2)
  np.testing.assert_array_equal(i.numpy(), [[4, 1], [3, 5]])
  np.testing.assert_allclose(s.numpy(), [[.9, .7], [.9, .8]])
  # Several per query (-1 = none, any order); too few left -> -1 / -inf.
  s, i = export.drop_excluded(scores, index, tf.constant([[1, -1, 4], [6, 3, 5]]), 2)
  np.testing.assert_array_equal(i.numpy(), [[7, -1], [-1, -1]])
  np.testing.assert_allclose(s.numpy(), [[.8, -np.inf], [-np.inf, -np.inf]])


# --- The exported models ---------------------------------------------------------


def test_layout_versions_and_model_configs(setup):
  base = setup["base"]
  for name in export.ALL_MODELS:
    assert os.listdir(os.path.join(base, name)) == ["1"], "no temporary directory left"
    report = json.load(open(os.path.join(base, name, "1", export.REPORT_FILE)))
    assert report["version"] == 1 and report["model"] == name
  assert sorted(os.listdir(base)) == sorted(
      [*export.ALL_MODELS, export.MODELS_CONFIG, export.MODELS_STOCK_CONFIG])
  for file, names in ((export.MODELS_CONFIG, export.ALL_MODELS),
                      (export.MODELS_STOCK_CONFIG, (export.EMBEDDER, export.RETRIEVAL_EXACT))):
    config = text_format.Parse(open(os.path.join(base, file)).read(),
                               model_server_config_pb2.ModelServerConfig())
    entries = config.model_config_list.config
    assert sorted(e.name for e in entries) == sorted(names)
    assert all(e.base_path == os.path.join(base, e.name) for e in entries)


def test_warmup_requests_cover_every_signature_and_run(setup):
  from tensorflow_serving.apis import prediction_log_pb2  # pylint: disable=g-import-not-at-top
  for name, signatures in ((export.RETRIEVAL, {"related_items", "related_items_by_embedding"}),
                           (export.RETRIEVAL_EXACT, {"related_items",
                                                     "related_items_by_embedding"}),
                           (export.EMBEDDER, {"embed_items", "embed_new_items"})):
    path = os.path.join(setup["base"], name, "1")
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
            for r in tf.data.TFRecordDataset(os.path.join(path, export.WARMUP_FILE))]
    assert {log.predict_log.request.model_spec.signature_name for log in logs} == signatures
    assert all(log.predict_log.request.model_spec.name == name for log in logs)
    assert export.replay_warmup_requests(path, setup["loaded"][name]) == len(signatures)


def test_exact_model_equals_numpy_exact_search(setup):
  vectors = setup["vectors"]
  fn = setup["loaded"][export.RETRIEVAL_EXACT].signatures["related_items"]
  out = fn(item_ids=tf.constant(setup["graph"].item_ids))
  want, want_scores = retrieval_exact.top_k(vectors, vectors, _K, exclude=np.arange(_N))
  np.testing.assert_array_equal(_ids_to_rows(out["neighbor_ids"].numpy()), want)
  np.testing.assert_allclose(out["scores"].numpy(), want_scores, atol=1e-6)
  # By embedding: nothing excluded, so each item is its own best match
  # (unit vectors; the model's embeddings are distinct).
  by = setup["loaded"][export.RETRIEVAL_EXACT].signatures["related_items_by_embedding"]
  rows = _ids_to_rows(by(embeddings=tf.constant(vectors))["neighbor_ids"].numpy())
  np.testing.assert_array_equal(rows, retrieval_exact.top_k(vectors, vectors, _K)[0])


def test_scann_brute_force_model_equals_exact_search(setup):
  vectors = setup["vectors"]
  report = setup["summary"]["models"][export.RETRIEVAL]["report"]
  assert report["search"]["scann"]["algorithm"] == "brute_force"  # 40 items < 20k
  assert report["check"][f"recall@{_K}"] == 1.0
  out = setup["loaded"][export.RETRIEVAL].signatures["related_items"](
      item_ids=tf.constant(setup["graph"].item_ids))
  got = _ids_to_rows(out["neighbor_ids"].numpy())
  want, want_scores = retrieval_exact.top_k(vectors, vectors, _K, exclude=np.arange(_N))
  np.testing.assert_allclose(out["scores"].numpy(), want_scores, atol=1e-6)
  # Identical lists, except that float round-off may swap items whose exact
  # scores differ by less than 1e-6.
  assert np.mean(np.all(got == want, axis=1)) > 0.9
  for q in np.nonzero(np.any(got != want, axis=1))[0]:
    assert set(got[q]) == set(want[q])
    for j in np.nonzero(got[q] != want[q])[0]:
      assert abs(vectors[q] @ vectors[got[q, j]] - want_scores[q, j]) < 1e-6, (q, j)


def _export_tree_scann(setup, base: str, scann: scann_index.ScannConfig) -> dict:
  config = export.ExportConfig(num_neighbors=_K, recall_queries=10, scann=scann,
                               models=(export.RETRIEVAL,))
  summary = export.export_models(base, model=setup["model"], graph=setup["graph"],
                                 tables=setup["tables"], embeddings=setup["vectors"],
                                 config=config)
  return summary["models"][export.RETRIEVAL]["report"]


def test_scann_export_tunes_to_the_target_recall_on_held_out_items(setup, tmp_path):
  report = _export_tree_scann(setup, str(tmp_path), scann_index.ScannConfig(
      algorithm="tree_ah", num_leaves=3, training_sample_size=40, target_recall=0.8,
      tuning_queries=20))
  search, tuning = report["search"], report["search"]["tuning"]
  chosen = tuning["chosen"]
  assert tuning["target_met"] and chosen["recall"] >= 0.8 and tuning["queries"] == 20
  # The served index searches the chosen point, recorded as its config.
  assert (search["scann"]["num_leaves_to_search"], search["scann"]["reorder_num_neighbors"]) == (
      chosen["leaves_to_search"], chosen["reorder_num_neighbors"])
  assert chosen["cost"] <= tuning["automatic"]["cost"]
  assert chosen["queries_per_second"] > 0 and tuning["automatic"]["queries_per_second"] > 0
  assert "outside the recall sample" in tuning["held_out"]
  # Held out: the 20 tuning items are not the check's 10 (40 items, seed 0).
  assert report["check"]["queries"] == 10
  # Re-measure the chosen point on the tuning items through the served model.
  loaded = tf.saved_model.load(os.path.join(str(tmp_path), export.RETRIEVAL, "1"))
  vectors = setup["vectors"]
  check_rows = np.sort(np.random.default_rng(0).choice(_N, 10, replace=False))
  held_out = np.setdiff1d(np.arange(_N), check_rows)
  rows = held_out[np.sort(np.random.default_rng(4).choice(held_out.size, 20, replace=False))]
  out = loaded.signatures["related_items"](item_ids=tf.constant(setup["graph"].item_ids[rows]))
  want, _ = retrieval_exact.top_k(vectors[rows], vectors, _K, exclude=rows)
  got = _ids_to_rows(out["neighbor_ids"].numpy())
  assert scann_index.recall_at_k(got, want) == pytest.approx(chosen["recall"])


def test_scann_export_keeps_explicit_search_knobs(setup, tmp_path):
  report = _export_tree_scann(setup, str(tmp_path), scann_index.ScannConfig(
      algorithm="tree_ah", num_leaves=4, num_leaves_to_search=1, reorder_num_neighbors=12,
      training_sample_size=40))
  assert (report["search"]["scann"]["num_leaves_to_search"],
          report["search"]["scann"]["reorder_num_neighbors"]) == (1, 12)
  assert "explicit" in report["search"]["tuning"]["skipped"]


def test_without_pivot_embeddings_only_the_item_signatures_are_exported(setup):
  for name in (export.RETRIEVAL, export.RETRIEVAL_EXACT):
    assert set(setup["loaded"][name].signatures) == {
        "serving_default", "related_items", "related_items_by_embedding"}
    report = setup["summary"]["models"][name]["report"]
    assert "pivots" not in report and set(report["check"]) == {
        "queries", f"recall@{_K}", "identical_lists"}


def test_query_item_is_excluded(setup):
  for name in (export.RETRIEVAL, export.RETRIEVAL_EXACT):
    out = setup["loaded"][name].signatures["related_items"](
        item_ids=tf.constant(setup["graph"].item_ids))
    rows = _ids_to_rows(out["neighbor_ids"].numpy())
    assert rows.shape == (_N, _K)
    assert not np.any(rows == np.arange(_N)[:, None]), name


def test_empty_batches_give_empty_results(setup):
  for name in (export.RETRIEVAL, export.RETRIEVAL_EXACT):
    out = setup["loaded"][name].signatures["related_items"](item_ids=tf.zeros([0], tf.string))
    assert out["neighbor_ids"].shape == (0, _K) and out["scores"].shape == (0, _K)
  fn = setup["loaded"][export.EMBEDDER].signatures["embed_new_items"]
  out = fn(dense=tf.zeros([0, 3]), sparse_color=tf.zeros([0, 1], tf.int32),
           pivot_ids=tf.zeros([0, 2], tf.string))
  assert out["embeddings"].shape == (0, 8)


@pytest.mark.parametrize("name,signature,key", [
    (export.RETRIEVAL, "related_items", "item_ids"),
    (export.RETRIEVAL_EXACT, "related_items", "item_ids"),
    (export.EMBEDDER, "embed_items", "item_ids"),
])
def test_unknown_item_id_is_an_error_naming_it(setup, name, signature, key):
  fn = setup["loaded"][name].signatures[signature]
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"unknown item_ids.*no_such_item"):
    fn(**{key: tf.constant(["item1", "no_such_item"])})


def test_embed_items_returns_the_embeddings(setup):
  fn = setup["loaded"][export.EMBEDDER].signatures["embed_items"]
  out = fn(item_ids=tf.constant(["item3", "item0", "item3"]))["embeddings"].numpy()
  np.testing.assert_array_equal(out, setup["vectors"][[3, 0, 3]])


def _new_items(setup, items):
  inputs = export.existing_item_inputs(setup["graph"], setup["tables"], np.asarray(items))
  fn = setup["loaded"][export.EMBEDDER].signatures["embed_new_items"]
  return fn(**{k: tf.constant(v) for k, v in inputs.items()})["embeddings"].numpy()


def test_embed_new_items_matches_the_model_on_the_one_hop_neighborhood(setup):
  model, graph, tables = setup["model"], setup["graph"], setup["tables"]
  items = np.array([0, 1, 5, 36])
  got = _new_items(setup, items)
  # The same computation written directly with the model: h^0 from the item's
  # features, neighborhoods from first_traversal_neighborhoods, each layer over
  # the other items' layer-wise representations, then the head.
  pivot_index = tf.constant(np.array(
      [np.pad(graph.pivots_of(i), (0, 3 - len(graph.pivots_of(i))), constant_values=-1)
       for i in items]), tf.int32)
  ids, weights = export.first_traversal_neighborhoods(
      pivot_index, tf.constant(graph.pivot_to_item.indptr),
      tf.constant(graph.pivot_to_item.indices), _N, tables.num_neighbors)
  node_inputs = pipeline.gather_node_inputs(tables, tf.constant(items, tf.int32))
  num_pivots = np.array([len(graph.pivots_of(i)) for i in items], np.float32)
  h = model.encode_inputs(node_inputs._replace(log_degree=tf.math.log1p(num_pivots)))
  h_all = inference.input_representations(model, tables)
  for k, conv in enumerate(model.convs):
    h = conv(h, tf.gather(h_all, tf.maximum(ids, 0)), weights)  # [U, T, d] neighbors
    if k + 1 < len(model.convs):
      h_all = inference.convolve_all(model, k, h_all, tables)
  np.testing.assert_allclose(got, model.head(h).numpy(), atol=1e-5)


def test_embed_new_items_on_existing_items_is_close_to_embed_items(setup):
  vectors = setup["vectors"]
  z = _new_items(setup, np.arange(_N))
  cos = np.sum(z * vectors, axis=1)
  # Isolated items have empty neighborhoods both ways and log_degree 0: the
  # two paths compute exactly the same function.
  np.testing.assert_allclose(cos[list(_ISOLATED)], 1.0, atol=1e-5)
  # Others differ only by the neighborhood (one-hop distribution that includes
  # the item itself vs the random-walk table): close, not equal. (Seeded
  # random weights here: mean 0.90, median 0.96; trainer/export_test.py checks
  # the trained model's own-vector rank instead.)
  connected = cos[:_ISOLATED[0]]
  assert connected.mean() > 0.85, connected
  assert np.median(connected) > 0.93, connected
  assert connected.max() < 1 - 1e-4  # and really not the same computation
  # Much closer to the item's own vector than to other items' (random initial
  # weights already map all items into a cone: about 0.68 here).
  other = (z @ vectors.T)[~np.eye(_N, dtype=bool)]
  assert connected.mean() > other.mean() + 0.15


def test_embed_new_items_without_pivots_gives_a_unit_vector(setup):
  fn = setup["loaded"][export.EMBEDDER].signatures["embed_new_items"]
  inputs = {"dense": tf.constant([[0.1, -0.2, 0.3], [-1.0, 0.5, 0.2]]),
            "sparse_color": tf.constant([[2, -1], [-1, -1]]),
            "pivot_ids": tf.constant([["", ""], ["", ""]])}
  z = fn(**inputs)["embeddings"].numpy()
  assert np.all(np.isfinite(z))
  np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
  # Zero-width pivot input means the same as all padding.
  z0 = fn(**{**inputs, "pivot_ids": tf.zeros([2, 0], tf.string)})["embeddings"].numpy()
  np.testing.assert_allclose(z0, z, atol=1e-6)


def test_embed_new_items_rejects_unknown_pivots_and_bad_sparse_ids(setup):
  fn = setup["loaded"][export.EMBEDDER].signatures["embed_new_items"]
  good = {"dense": tf.zeros([1, 3]), "sparse_color": tf.constant([[1]]),
          "pivot_ids": tf.constant([["board1", ""]])}
  assert fn(**good)["embeddings"].shape == (1, 8)
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"unknown pivot_ids.*board99"):
    fn(**{**good, "pivot_ids": tf.constant([["board1", "board99"]])})
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"sparse_color ids must be in "
                     r"\[0, vocab_size=4\) or -1 for padding.*7"):
    fn(**{**good, "sparse_color": tf.constant([[7]])})
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"sparse_color ids must be in.*-5"):
    fn(**{**good, "sparse_color": tf.constant([[-5]])})
  for bad in (np.nan, np.inf):
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"dense features must be finite"):
      fn(**{**good, "dense": tf.constant([[0.0, bad, 0.0]])})
  with pytest.raises(tf.errors.InvalidArgumentError, match="as many rows as pivot_ids"):
    fn(**{**good, "dense": tf.zeros([2, 3])})


@pytest.mark.parametrize("name", [export.RETRIEVAL, export.RETRIEVAL_EXACT])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_related_items_by_embedding_names_non_finite_queries(setup, name, bad):
  fn = setup["loaded"][name].signatures["related_items_by_embedding"]
  queries = np.full([2, 8], 8 ** -0.5, np.float32)
  assert fn(embeddings=tf.constant(queries))["neighbor_ids"].shape[0] == 2
  queries[1, 3] = bad
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"embeddings must be finite \(no NaN or Inf\).*\[1\]"):
    fn(embeddings=tf.constant(queries))


def _registered_in_fresh_tensorflow(ops):
  """Ops (of `ops`) unknown to a new Python process that never imports scann."""
  code = ("import json, sys\nimport pinsage_tf\nimport tensorflow\n"
          "from tensorflow.python.framework import op_def_registry\n"
          "assert 'scann' not in sys.modules\n"
          "print(json.dumps([op for op in json.loads(sys.argv[1]) "
          "if op_def_registry.get(op) is None]))\n")
  out = subprocess.run([sys.executable, "-c", code, json.dumps(ops)], check=True,
                       capture_output=True, text=True, cwd=_REPO_ROOT)
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_exact_and_embedder_use_only_core_tensorflow_ops(setup):
  ops = {name: export.saved_model_ops(os.path.join(setup["base"], name, "1"))
         for name in export.ALL_MODELS}
  # Sanity: the ScaNN model does use custom ops, so the check can fail.
  assert any(op.startswith("Scann>") for op in ops[export.RETRIEVAL])
  everything = sorted(set().union(*ops.values()))
  missing = set(_registered_in_fresh_tensorflow(everything))
  assert missing == {op for op in ops[export.RETRIEVAL] if op.startswith("Scann>")}
  for name in (export.RETRIEVAL_EXACT, export.EMBEDDER):
    assert not [op for op in ops[name] if "Scann" in op or op in missing], name
    assert setup["summary"]["models"][name]["report"]["custom_ops"] == []


# --- Versions and atomicity -------------------------------------------------------


def _export_again(setup, base, **kwargs):
  config = kwargs.pop("config", export.ExportConfig(
      num_neighbors=_K, recall_queries=10, models=(export.RETRIEVAL_EXACT,)))
  return export.export_models(base, model=setup["model"], graph=setup["graph"],
                              tables=setup["tables"],
                              embeddings=kwargs.pop("embeddings", setup["vectors"]),
                              config=config, **kwargs)


def _snapshot(base):
  return sorted((root, tuple(sorted(dirs)), tuple(sorted(files)))
                for root, dirs, files in os.walk(base))


def test_versions_increase_and_are_immutable(setup, tmp_path):
  base = str(tmp_path)
  assert export.next_version(base) == 1
  assert _export_again(setup, base)["version"] == 1
  os.makedirs(os.path.join(base, export.RETRIEVAL_EXACT, ".tmp-7-leftover"))  # ignored
  assert _export_again(setup, base)["version"] == 2
  assert _export_again(setup, base, version=5)["version"] == 5
  assert export.list_versions(os.path.join(base, export.RETRIEVAL_EXACT)) == [1, 2, 5]
  with pytest.raises(FileExistsError, match="already exists"):
    _export_again(setup, base, version=2)
  assert export.next_version(base) == 6


def test_failure_midway_publishes_nothing(setup, tmp_path, monkeypatch):
  base = str(tmp_path)
  config = export.ExportConfig(num_neighbors=_K, recall_queries=10)
  _export_again(setup, base, config=config)
  before = _snapshot(base)
  configs = open(os.path.join(base, export.MODELS_CONFIG)).read()

  def fail(*args, **kwargs):
    # The exact model and the embedder are built by now; ScaNN comes last.
    assert any(".tmp-2-" in d for _, dirs, _ in os.walk(base) for d in dirs)
    raise RuntimeError("simulated crash while building the ScaNN index")

  monkeypatch.setattr(scann_index, "build_state", fail)
  with pytest.raises(RuntimeError, match="simulated crash"):
    _export_again(setup, base, config=config)
  assert _snapshot(base) == before  # no version 2, no temporary left
  assert open(os.path.join(base, export.MODELS_CONFIG)).read() == configs


def test_embeddings_of_another_model_are_refused(setup, tmp_path):
  rng = np.random.default_rng(1)
  other = rng.normal(size=setup["vectors"].shape).astype(np.float32)
  other /= np.linalg.norm(other, axis=1, keepdims=True)
  with pytest.raises(ValueError, match="were they computed by this model"):
    _export_again(setup, str(tmp_path), embeddings=other,
                  config=export.ExportConfig(num_neighbors=_K, models=(export.EMBEDDER,)))
  assert not os.listdir(tmp_path)  # checked before anything is built


def test_consistency_is_checked_only_on_fresh_rows(setup, tmp_path):
  """A bounded refresh keeps some rows from older tables: only the fresh ones are checked."""
  stale = setup["vectors"].copy()
  stale[:10] = np.roll(stale[:10], 1, axis=0)  # rows 0..9 no longer match the tables
  config = export.ExportConfig(num_neighbors=_K, models=(export.EMBEDDER,))
  with pytest.raises(ValueError, match="were they computed by this model"):
    _export_again(setup, str(tmp_path / "all"), embeddings=stale, config=config)
  out = _export_again(setup, str(tmp_path / "fresh"), embeddings=stale, config=config,
                      fresh_items=np.arange(10, _N))
  report = out["models"][export.EMBEDDER]["report"]
  assert report["consistency_checked_rows"] == {"items": _N - 10, "of_items": _N,
                                                "pivots": _M, "of_pivots": _M}
  with pytest.raises(ValueError, match="fresh_items must be int rows"):
    _export_again(setup, str(tmp_path / "bad"), config=config, fresh_items=np.array([_N]))


def test_model_checks_can_query_only_the_fresh_rows(setup, tmp_path):
  config = export.ExportConfig(num_neighbors=_K, recall_queries=20,
                               models=(export.RETRIEVAL_EXACT, export.RETRIEVAL))
  fresh = np.arange(30, _N)
  out = _export_again(setup, str(tmp_path / "fresh"), config=config, fresh_items=fresh,
                      checks_on_fresh_rows=True)
  for name in (export.RETRIEVAL_EXACT, export.RETRIEVAL):
    report = out["models"][name]["report"]
    # 10 of 40 rows are fresh: 20 * 10 / 40 = 5 queries, raised to the floor of 64,
    # capped by the 20 asked for and by the 10 fresh rows.
    assert report["check_queries"] == {"items": 10, "drawn_from": "fresh rows"}
    assert report["check"]["queries"] == 10
  # Without fresh rows (every row recomputed) the sample is the usual one.
  out = _export_again(setup, str(tmp_path / "all"), config=config, checks_on_fresh_rows=True)
  report = out["models"][export.RETRIEVAL_EXACT]["report"]
  assert report["check_queries"] == {"items": 20, "drawn_from": "all rows"}


def test_bad_arguments_fail_before_writing(setup, tmp_path):
  with pytest.raises(ValueError, match="num_neighbors=40"):
    _export_again(setup, str(tmp_path), config=export.ExportConfig(num_neighbors=_N))
  with pytest.raises(ValueError, match="subset of"):
    export.ExportConfig(models=("nope",))
  assert not os.listdir(tmp_path)


def test_item_biases_are_added_to_retrieval_scores(setup, tmp_path):
  tf.keras.utils.set_random_seed(3)
  graph, tables = setup["graph"], setup["tables"]
  model = model_lib.PinSageModel(dataclasses.replace(setup["model"].config, item_bias=True))
  model_lib.build_variables(model)
  model.bias_output.kernel.assign(tf.random.normal(model.bias_output.kernel.shape))
  vectors, bias = inference.layerwise_outputs(model, tables)
  assert np.ptp(bias) > 0.1  # large enough to reorder the cosine lists
  config = export.ExportConfig(num_neighbors=_K, recall_queries=_N, exact_block_size=16,
                               models=(export.RETRIEVAL_EXACT, export.RETRIEVAL))
  summary = export.export_models(str(tmp_path / "b"), model=model, graph=graph, tables=tables,
                                 embeddings=vectors, config=config, item_bias=bias)
  assert summary["models"][export.RETRIEVAL]["report"]["item_bias"] is True
  queries = np.concatenate([vectors, np.ones((_N, 1), np.float32)], axis=1)
  index = np.concatenate([vectors, bias[:, None]], axis=1)
  want, want_scores = retrieval_exact.top_k(queries, index, _K, exclude=np.arange(_N))
  plain, _ = retrieval_exact.top_k(vectors, vectors, _K, exclude=np.arange(_N))
  assert np.any(want != plain)  # the bias changes the lists
  by_want, _ = retrieval_exact.top_k(queries, index, _K)
  for name in (export.RETRIEVAL_EXACT, export.RETRIEVAL):
    loaded = tf.saved_model.load(os.path.join(str(tmp_path / "b"), name, "1"))
    out = loaded.signatures["related_items"](item_ids=tf.constant(graph.item_ids))
    got = _ids_to_rows(out["neighbor_ids"].numpy())
    np.testing.assert_allclose(out["scores"].numpy(), want_scores, atol=1e-5)
    assert np.mean(np.all(got == want, axis=1)) > 0.9, name
    by = loaded.signatures["related_items_by_embedding"](embeddings=tf.constant(vectors))
    assert np.mean(np.all(_ids_to_rows(by["neighbor_ids"].numpy()) == by_want, axis=1)) > 0.9
  # The model and the biases must agree.
  with pytest.raises(ValueError, match="no item biases were given"):
    export.export_models(str(tmp_path / "c"), model=model, graph=graph, tables=tables,
                         embeddings=vectors, config=config)
  with pytest.raises(ValueError, match="model has no item_bias"):
    _export_again(setup, str(tmp_path / "d"), item_bias=bias)
  assert not os.path.exists(tmp_path / "c") and not os.path.exists(tmp_path / "d")


def _report_dir(export_base, version, scann):
  path = os.path.join(export_base, export.RETRIEVAL, str(version), "assets.extra")
  os.makedirs(path)
  with open(os.path.join(path, "export_report.json"), "w") as f:
    json.dump({"search": {"algorithm": "scann", "scann": scann}}, f)


def test_served_scann_settings_are_kept_unless_given(tmp_path):
  base = str(tmp_path)
  config = export.ExportConfig()
  assert export.served_scann_settings(base, config) == config  # nothing served yet
  _report_dir(base, 1, {"algorithm": "tree_ah", "num_leaves": 90, "num_leaves_to_search": 9,
                        "reorder_num_neighbors": 400})
  _report_dir(base, 2, {"algorithm": "tree_ah", "num_leaves": 100, "num_leaves_to_search": 3,
                        "reorder_num_neighbors": 220})
  kept = export.served_scann_settings(base, config).scann
  assert (kept.algorithm, kept.num_leaves, kept.num_leaves_to_search,
          kept.reorder_num_neighbors) == ("tree_ah", 100, 3, 220)
  explicit = export.ExportConfig(scann=dataclasses.replace(config.scann,
                                                               reorder_num_neighbors=50))
  assert export.served_scann_settings(base, explicit).scann.reorder_num_neighbors == 50
