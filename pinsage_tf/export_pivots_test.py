"""Tests of the retrieval exports' pivot signatures (`items_for_pivot`,
`items_for_item_set`), in-process.

The module fixture generates a 60-item synthetic graph, trains a tiny model
with the pivot objective (item biases on) for 3 steps, embeds items and
pivots with `LayerwiseInference` as the inference job does, and exports
version 1 of both retrieval models with the pivot embeddings. Expected answers
are numpy exact search over the stored embeddings, and
`LayerwiseInference.pivot_embeddings` with hand-written weights for item sets.
Serving them over REST and gRPC is tested in `trainer/export_test.py`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import pinsage_tf  # noqa: F401
import tensorflow as tf

from data import synthetic
from pinsage_tf import distribute
from pinsage_tf import export
from pinsage_tf import graph as graph_lib
from pinsage_tf import inference
from pinsage_tf import model as model_lib
from pinsage_tf import neighborhoods as nb_lib
from pinsage_tf import pipeline
from pinsage_tf import positives as positives_lib
from pinsage_tf import retrieval_exact
from pinsage_tf import retrieval_pybind
from pinsage_tf import scann_index
from pinsage_tf import training

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_K = 5
_RETRIEVAL_MODELS = (export.RETRIEVAL_EXACT, export.RETRIEVAL)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  tf.keras.utils.set_random_seed(0)
  root = tmp_path_factory.mktemp("pivots")
  graph_dir, model_dir = str(root / "graph"), str(root / "model")
  graph_lib.save_graph(synthetic.generate(synthetic.SyntheticConfig(
      num_items=60, num_boards=20, num_communities=3, num_pairs=400, board_size_max=20,
      seed=3)), graph_dir)
  config = training.ExperimentConfig(
      neighborhoods=nb_lib.NeighborhoodConfig(num_neighbors=4, num_walks=10),
      pivot_neighborhoods=nb_lib.NeighborhoodConfig(num_neighbors=6, num_walks=20, max_hops=1),
      positives=positives_lib.PositivesConfig(pivot_pairs=True),
      pipeline=pipeline.PipelineConfig(batch_size=16, pivot_batch_size=16, num_negatives=8),
      model=model_lib.PinSageConfig(hidden_dim=16, embedding_dim=8, item_bias=True),
      train=training.TrainConfig(epochs=1, steps_per_epoch=3, warmup_steps=1,
                                 loss="sampled_softmax", validation_queries=0))
  assert config.learns_pivots
  training.train(graph_dir, model_dir, config, distribute.get_strategy("one_device"),
                 verbose=False)
  inputs = training.prepare_inputs(graph_dir, config, hard_negatives=False)
  model = model_lib.load_model(os.path.join(model_dir, training.MODEL_DIR))
  runner = inference.LayerwiseInference(model, inputs.tables)
  vectors, bias = runner.outputs()  # keeps h^{K-1} for pivot_embeddings
  pivots = runner.pivot_embeddings(np.asarray(inputs.pivot_neighborhoods.ids),
                                   np.asarray(inputs.pivot_neighborhoods.weights))
  base = str(root / "exports")
  export_config = export.ExportConfig(num_neighbors=_K, recall_queries=20, exact_block_size=16,
                                      models=_RETRIEVAL_MODELS)
  summary = export.export_models(base, model=model, graph=inputs.graph, tables=inputs.tables,
                                 embeddings=vectors, config=export_config, item_bias=bias,
                                 pivot_embeddings=pivots)
  loaded = {name: tf.saved_model.load(os.path.join(base, name, "1"))
            for name in _RETRIEVAL_MODELS}
  graph = inputs.graph
  return {"graph": graph, "tables": inputs.tables, "model": model, "runner": runner,
          "vectors": vectors, "bias": bias, "pivots": pivots, "summary": summary,
          "loaded": loaded, "base": base, "config": export_config,
          "row": {raw: i for i, raw in enumerate(graph.item_ids.tolist())},
          "corpus": retrieval_exact.biased_corpus(vectors, bias)}


def _rows(setup, ids: np.ndarray) -> np.ndarray:
  return np.vectorize(lambda b: setup["row"][b.decode()] if b else -1, otypes=[np.int64])(ids)


def _item_sets(setup, rows) -> np.ndarray:
  """bytes [B, L] raw ids of the given item rows, "" padded."""
  width = max(len(r) for r in rows)
  out = np.full((len(rows), width), b"", dtype=object)
  for b, r in enumerate(rows):
    out[b, :len(r)] = [setup["graph"].item_ids[i].encode() for i in r]
  return out


def _offline(setup, ids: np.ndarray, weights: np.ndarray) -> np.ndarray:
  """The offline pivot path with explicit weights: biased queries [B, dim + 1]."""
  z = setup["runner"].pivot_embeddings(np.asarray(ids), np.asarray(weights, np.float32))
  return retrieval_exact.biased_queries(z, setup["bias"])


def _check_lists(setup, out, queries, exclude, atol=1e-4):
  """`out` is numpy's exact top-k of `queries` with `exclude` masked, up to score ties."""
  got, scores = _rows(setup, out["neighbor_ids"].numpy()), out["scores"].numpy()
  want, want_scores = retrieval_exact.top_k(queries, setup["corpus"], _K, exclude=exclude)
  np.testing.assert_allclose(scores, want_scores, atol=atol)
  found = got >= 0
  np.testing.assert_array_equal(found, want >= 0)
  # Every returned item really has its score (so a differing slot is a tie).
  recomputed = np.einsum("qd,qkd->qk", queries, setup["corpus"][np.maximum(got, 0)])
  np.testing.assert_allclose(recomputed[found], scores[found], atol=atol)
  assert np.mean(np.all(got == want, axis=1)) > 0.9
  return got


# --- Signatures, report, warm-up -----------------------------------------------------


def test_retrieval_models_get_both_pivot_signatures_and_report_their_checks(setup):
  for name in _RETRIEVAL_MODELS:
    loaded = setup["loaded"][name]
    assert set(loaded.signatures) == {"serving_default", "related_items",
                                      "related_items_by_embedding", "items_for_pivot",
                                      "items_for_item_set"}
    report = json.load(open(os.path.join(setup["base"], name, "1", export.REPORT_FILE)))
    assert report["pivots"]["num_pivots"] == setup["graph"].num_pivots
    # The stored pivot embeddings were recomputed from the training table.
    assert report["pivots"]["stored_pivot_consistency_max_abs_diff"] < 1e-5
    assert 0 < report["pivots"]["item_set_cosine_to_stored_mean"] <= 1 + 1e-6
    assert report["signatures"]["items_for_item_set"]["input_specs"] == {
        "item_ids": "string [-1, -1]"}
    for signature in ("items_for_pivot", "items_for_item_set"):
      check = report["check"][signature]
      assert check["queries"] == 20 and check[f"recall@{_K}"] >= 0.99, (name, check)
      assert check["max_abs_score_diff"] < 1e-4
  assert setup["summary"]["models"][export.RETRIEVAL_EXACT]["report"]["custom_ops"] == []


def test_exact_model_with_pivots_loads_and_runs_without_scann(setup):
  # What stock TF Serving needs: only core ops (a fresh process, scann never imported).
  code = ("import sys\nimport pinsage_tf\nimport tensorflow as tf\n"
          "m = tf.saved_model.load(sys.argv[1])\n"
          "a = m.signatures['items_for_pivot'](pivot_ids=tf.constant([sys.argv[2]]))\n"
          "b = m.signatures['items_for_item_set'](item_ids=tf.constant([[sys.argv[3]]]))\n"
          "assert 'scann' not in sys.modules\n"
          "print(a['neighbor_ids'].shape[1], b['neighbor_ids'].shape[1])\n")
  out = subprocess.run(
      [sys.executable, "-c", code, os.path.join(setup["base"], export.RETRIEVAL_EXACT, "1"),
       setup["graph"].pivot_ids[0], setup["graph"].item_ids[0]],
      check=True, capture_output=True, text=True, cwd=_REPO_ROOT)
  assert out.stdout.split() == [str(_K), str(_K)]


def test_warmup_requests_include_the_pivot_signatures(setup):
  from tensorflow_serving.apis import prediction_log_pb2  # pylint: disable=g-import-not-at-top
  for name in _RETRIEVAL_MODELS:
    path = os.path.join(setup["base"], name, "1")
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
            for r in tf.data.TFRecordDataset(os.path.join(path, export.WARMUP_FILE))]
    assert [log.predict_log.request.model_spec.signature_name for log in logs] == [
        "related_items", "related_items_by_embedding", "items_for_pivot", "items_for_item_set"]
    assert export.replay_warmup_requests(path, setup["loaded"][name]) == 4


# --- items_for_pivot ---------------------------------------------------------------------


def test_items_for_pivot_is_numpy_top_k_of_the_stored_embedding(setup):
  graph = setup["graph"]
  queries = retrieval_exact.biased_queries(setup["pivots"], setup["bias"])
  for name in _RETRIEVAL_MODELS:
    out = setup["loaded"][name].signatures["items_for_pivot"](
        pivot_ids=tf.constant(graph.pivot_ids))
    got = _check_lists(setup, out, queries, graph.pivot_to_item, atol=1e-5)
    for p in range(graph.num_pivots):  # the pivot's own items are never returned
      assert not np.isin(got[p], graph.pivot_to_item.row(p)).any(), (name, p)
  # The exclusion matters: without it the pivots' own items come back.
  unmasked, _ = retrieval_exact.top_k(queries, setup["corpus"], _K)
  assert sum(np.isin(unmasked[p], graph.pivot_to_item.row(p)).any()
             for p in range(graph.num_pivots)) > graph.num_pivots // 2


# --- items_for_item_set ------------------------------------------------------------------


def test_items_for_item_set_of_graph_pivots_equals_offline_uniform_embeddings(setup):
  graph = setup["graph"]
  rows = [graph.pivot_to_item.row(p) for p in range(graph.num_pivots)]
  width = max(len(r) for r in rows)
  ids = np.full((len(rows), width), -1)
  weights = np.zeros((len(rows), width))
  for p, r in enumerate(rows):
    ids[p, :len(r)] = r
    weights[p, :len(r)] = 1 / len(r)
  queries = _offline(setup, ids, weights)
  for name in _RETRIEVAL_MODELS:
    out = setup["loaded"][name].signatures["items_for_item_set"](
        item_ids=tf.constant(_item_sets(setup, rows)))
    got = _check_lists(setup, out, queries, rows)
    for p, r in enumerate(rows):
      assert not np.isin(got[p], r).any(), (name, p)


def test_item_set_weights_are_uniform_per_given_id(setup):
  # Row 0 gives items a, a, b: weights (2/3, 1/3) -- an item given twice
  # weighs twice, like an item listed twice in a pivot's walk start list.
  # Row 1 is the same set in another order with padding in between: the
  # same answer. Row 2 is a single item: weight 1.
  a, b, c = 3, 17, 42
  item = lambda i: setup["graph"].item_ids[i].encode()
  requests = np.array([[item(a), item(a), item(b), b""],
                       [item(b), b"", item(a), item(a)],
                       [item(c), b"", b"", b""]], dtype=object)
  queries = _offline(setup, [[a, b], [a, b], [c, -1]], [[2 / 3, 1 / 3], [2 / 3, 1 / 3], [1, 0]])
  # ... which is not the plain set {a, b}:
  assert not np.allclose(queries[0], _offline(setup, [[a, b]], [[.5, .5]])[0], atol=1e-3)
  for name in _RETRIEVAL_MODELS:
    out = setup["loaded"][name].signatures["items_for_item_set"](item_ids=tf.constant(requests))
    got = _check_lists(setup, out, queries, [[a, b], [a, b], [c]])
    np.testing.assert_array_equal(got[0], got[1])
    assert not np.isin(got[:2], [a, b]).any() and c not in got[2]


def test_fewer_eligible_items_than_k_pads_with_empty_ids(setup):
  n = setup["graph"].num_items
  left = [5, 30, 59]  # every other item is given, so only these can be returned
  given = [i for i in range(n) if i not in left]
  for name in _RETRIEVAL_MODELS:
    out = setup["loaded"][name].signatures["items_for_item_set"](
        item_ids=tf.constant(_item_sets(setup, [given])))
    got, scores = _rows(setup, out["neighbor_ids"].numpy()), out["scores"].numpy()
    assert sorted(got[0, :3]) == left and np.all(np.diff(scores[0, :3]) <= 0), name
    assert out["neighbor_ids"].numpy()[0, 3:].tolist() == [b"", b""]
    assert np.all(np.isneginf(scores[0, 3:]))


def test_scann_with_reordering_rescores_enough_candidates(setup, tmp_path):
  # Asymmetric hashing re-scores only reorder_num_neighbors (= k + 1 = 6
  # here) candidates by default; excluding 57 of 60 items needs all 60.
  config = export.ExportConfig(
      num_neighbors=_K, recall_queries=0, models=(export.RETRIEVAL,),
      scann=scann_index.ScannConfig(algorithm="ah", reorder_num_neighbors=_K + 1))
  summary = export.export_models(
      str(tmp_path), model=setup["model"], graph=setup["graph"], tables=setup["tables"],
      embeddings=setup["vectors"], item_bias=setup["bias"], pivot_embeddings=setup["pivots"],
      config=config)
  assert summary["models"][export.RETRIEVAL]["report"]["search"]["scann"][
      "reorder_num_neighbors"] == _K + 1
  loaded = tf.saved_model.load(os.path.join(str(tmp_path), export.RETRIEVAL, "1"))
  left = [5, 30, 59]
  given = [i for i in range(setup["graph"].num_items) if i not in left]
  out = loaded.signatures["items_for_item_set"](item_ids=tf.constant(_item_sets(setup, [given])))
  assert sorted(_rows(setup, out["neighbor_ids"].numpy())[0, :3]) == left


@pytest.mark.parametrize("scann", [None, scann_index.ScannConfig(
    algorithm="ah", reorder_num_neighbors=_K + 1)], ids=["default", "ah_short_reorder"])
def test_pybind_search_answers_as_the_saved_model(setup, tmp_path, scann):
  # Every pivot at once (exclusions of every length) and every item, through
  # the pybind searcher and through the SavedModel's signatures.
  path = os.path.join(setup["base"], export.RETRIEVAL, "1")
  if scann is not None:
    config = export.ExportConfig(num_neighbors=_K, recall_queries=0, models=(export.RETRIEVAL,),
                                 scann=scann)
    export.export_models(str(tmp_path), model=setup["model"], graph=setup["graph"],
                         tables=setup["tables"], embeddings=setup["vectors"],
                         item_bias=setup["bias"], pivot_embeddings=setup["pivots"], config=config)
    path = os.path.join(str(tmp_path), export.RETRIEVAL, "1")
  assert retrieval_pybind.has_assets(path)
  loaded = tf.saved_model.load(path)
  fast = retrieval_pybind.PybindRetrieval(path, loaded, num_threads=2)
  assert "items_for_pivot" in fast.signatures and "items_for_item_set" not in fast.signatures
  graph = setup["graph"]
  requests = {
      "items_for_pivot": {"pivot_ids": np.array(
          [p.encode() for p in graph.pivot_ids.tolist()], object)},
      "related_items": {"item_ids": np.array([i.encode() for i in graph.item_ids.tolist()],
                                             object)},
      "related_items_by_embedding": {"embeddings": setup["pivots"][:7]}}
  for key, inputs in requests.items():
    want = loaded.signatures[key](**{a: tf.constant(v) for a, v in inputs.items()})
    got = fast.run(key, inputs)
    np.testing.assert_array_equal(got["neighbor_ids"], want["neighbor_ids"].numpy())
    np.testing.assert_allclose(got["scores"], want["scores"].numpy(), rtol=1e-6, atol=1e-6)
  assert fast.run("items_for_pivot", {"pivot_ids": np.array([b"no such pivot"], object)}) is None


def test_empty_batches_give_empty_results(setup):
  for name in _RETRIEVAL_MODELS:
    signatures = setup["loaded"][name].signatures
    out = signatures["items_for_pivot"](pivot_ids=tf.zeros([0], tf.string))
    assert out["neighbor_ids"].shape == (0, _K) and out["scores"].shape == (0, _K)
    out = signatures["items_for_item_set"](item_ids=tf.zeros([0, 3], tf.string))
    assert out["neighbor_ids"].shape == (0, _K) and out["scores"].shape == (0, _K)


# --- Bad requests and bad inputs ---------------------------------------------------------


@pytest.mark.parametrize("name", _RETRIEVAL_MODELS)
def test_bad_requests_are_invalid_argument_naming_the_field(setup, name):
  signatures = setup["loaded"][name].signatures
  pivot = setup["graph"].pivot_ids[0]
  item = setup["graph"].item_ids[0]
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"items_for_pivot: unknown pivot_ids.*no_such_board"):
    signatures["items_for_pivot"](pivot_ids=tf.constant([pivot, "no_such_board"]))
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"items_for_item_set: unknown item_ids.*ghost_item"):
    signatures["items_for_item_set"](item_ids=tf.constant([[item, "ghost_item"]]))
  # Row 1 has only padding; the message lists it.
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"(?s)items_for_item_set: every row of item_ids needs at least one "
                           r"item id.*\[1\]"):
    signatures["items_for_item_set"](item_ids=tf.constant([[item, ""], ["", ""]]))
  with pytest.raises(tf.errors.InvalidArgumentError, match="at least one item id"):
    signatures["items_for_item_set"](item_ids=tf.zeros([2, 0], tf.string))
  with pytest.raises(tf.errors.InvalidArgumentError, match="expected to be a string tensor"):
    signatures["items_for_item_set"](item_ids=tf.constant([[1, 2]]))


def test_pivot_embeddings_of_another_model_are_refused(setup, tmp_path):
  rng = np.random.default_rng(0)
  other = rng.normal(size=setup["pivots"].shape).astype(np.float32)
  other /= np.linalg.norm(other, axis=1, keepdims=True)
  kwargs = dict(model=setup["model"], graph=setup["graph"], tables=setup["tables"],
                embeddings=setup["vectors"], item_bias=setup["bias"], config=setup["config"])
  with pytest.raises(ValueError, match="pivot embeddings differ from the model's"):
    export.export_models(str(tmp_path / "a"), pivot_embeddings=other, **kwargs)
  with pytest.raises(ValueError, match=r"pivot_embeddings must be \[20, 8\]"):
    export.export_models(str(tmp_path / "b"), pivot_embeddings=other[:5], **kwargs)
  for base in ("a", "b"):  # nothing published
    assert not os.path.exists(tmp_path / base) or not os.listdir(tmp_path / base)
