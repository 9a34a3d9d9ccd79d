"""Tests of exports that reuse the previous version's graph (`export_models(reuse_graphs=True)`).

The module fixture builds a 40-item graph with dense features (so the
embedder has `embed_new_items`), a randomly initialised 2-layer model and
stand-in pivot embeddings, and exports version 1 of the three models. It then
grows the graph by one new item (on two existing pivots) and one new pivot,
recomputes tables and embeddings in full, and exports version 2 twice: reusing
version 1's graphs, and traced anew into another EXPORT_BASE. The reused
version must answer every signature as the traced one does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import pinsage_tf  # noqa: F401
import tensorflow as tf

from pinsage_tf import export
from pinsage_tf import graph as graph_lib
from pinsage_tf import inference
from pinsage_tf import model as model_lib
from pinsage_tf import neighborhoods as nb_lib
from pinsage_tf import pipeline
from pinsage_tf import refresh as refresh_lib
from pinsage_tf import retrieval_exact
from pinsage_tf.export import reuse
from pinsage_tf.export import warmup

_N, _M, _K = 40, 8, 5


def _graph() -> graph_lib.Graph:
  rng = np.random.default_rng(0)
  items, pivots = [], []
  for i in range(_N):
    for p in rng.choice(_M, size=1 + i % 3, replace=False):
      items.append(i)
      pivots.append(int(p))
  return graph_lib.build_graph(
      name="tiny", item_ids=[f"item{i}" for i in range(_N)],
      pivot_ids=[f"board{p}" for p in range(_M)],
      edge_items=np.array(items), edge_pivots=np.array(pivots),
      dense=rng.normal(size=(_N, 3)).astype(np.float32), dense_names=["a", "b", "c"])


def _deployment(model, graph: graph_lib.Graph) -> dict:
  nb = nb_lib.compute_neighborhoods(
      graph, nb_lib.NeighborhoodConfig(num_neighbors=3, num_walks=30, seed=0), num_threads=1)
  tables = pipeline.SamplingTables.build(graph, nb.ids, nb.weights)
  vectors, bias = inference.LayerwiseInference(model, tables).outputs()
  pivots = np.random.default_rng(graph.num_pivots).normal(
      size=(graph.num_pivots, vectors.shape[1])).astype(np.float32)
  return {"graph": graph, "tables": tables, "embeddings": vectors, "item_bias": bias,
          "pivot_embeddings": pivots}


def _export(base, model, deployment, reuse_graphs, config=None):
  config = config or export.ExportConfig(num_neighbors=_K, recall_queries=20,
                                         exact_block_size=16)
  return export.export_models(base, model=model, config=config, reuse_graphs=reuse_graphs,
                              update_index=reuse_graphs, **deployment)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  tf.keras.utils.set_random_seed(0)
  graph = _graph()
  model = model_lib.PinSageModel(model_lib.PinSageConfig(
      hidden_dim=16, embedding_dim=8, num_layers=2, item_bias=True,
      encoder=model_lib.EncoderConfig.from_graph(graph, dense_projection_dim=4)))
  model_lib.build_variables(model)
  root = tmp_path_factory.mktemp("reuse")
  base = str(root / "exports")
  before = _deployment(model, graph)
  first = _export(base, model, before, reuse_graphs=True)
  grown, _ = refresh_lib.append_edges(
      graph, ["board0", "board3", "board_new"], ["item_new", "item_new", "item2"],
      new_item_dense=np.ones((1, 3), np.float32))
  deployment = _deployment(model, grown)
  reused = _export(base, model, deployment, reuse_graphs=True)
  traced = _export(str(root / "traced"), model, deployment, reuse_graphs=False)
  return {"base": base, "first": first, "reused": reused, "traced": traced, "model": model,
          "before": before, "deployment": deployment, "grown": grown}


def test_every_model_reuses_the_previous_graph(setup):
  for name in export.ALL_MODELS:
    report = setup["reused"]["models"][name]["report"]
    assert report["graph"]["reused_from"] == os.path.join(setup["base"], name, "1"), name
    assert setup["first"]["models"][name]["report"]["graph"]["reused_from"] is None
    assert report["graph_spec"] == setup["traced"]["models"][name]["report"]["graph_spec"]
    assert report["signatures"] == setup["traced"]["models"][name]["report"]["signatures"]
    with open(os.path.join(setup["base"], name, "1", "saved_model.pb"), "rb") as f1, \
        open(os.path.join(setup["base"], name, "2", "saved_model.pb"), "rb") as f2:
      assert f1.read() == f2.read()
    assert report["num_items"] == _N + 1
    assert os.path.isfile(os.path.join(setup["base"], name, "2", "fingerprint.pb"))
  # Most rows of the 2-layer embeddings changed: the ScaNN index is trained anew.
  assert setup["reused"]["models"][export.RETRIEVAL]["report"]["search"]["index"] == {
      "trained": True}


def _load(summary, name):
  return tf.saved_model.load(summary["models"][name]["path"])


@pytest.mark.parametrize("name", [export.RETRIEVAL_EXACT, export.RETRIEVAL])
def test_reused_retrieval_answers_like_a_traced_one(setup, name):
  reused, traced = _load(setup["reused"], name), _load(setup["traced"], name)
  items = tf.constant(["item_new", "item2", "item0"])
  requests = {
      "related_items": {"item_ids": items},
      "related_items_by_embedding": {
          "embeddings": tf.constant(setup["deployment"]["embeddings"][-3:])},
      "items_for_pivot": {"pivot_ids": tf.constant(["board_new", "board0"])},
      "items_for_item_set": {"item_ids": tf.constant([["item_new", ""], ["item1", "item2"]])},
  }
  for signature, inputs in requests.items():
    got = reused.signatures[signature](**inputs)
    want = traced.signatures[signature](**inputs)
    np.testing.assert_array_equal(got["neighbor_ids"], want["neighbor_ids"])
    np.testing.assert_allclose(got["scores"], want["scores"], atol=1e-6)
  # The new item is in the corpus: it is its own best match by embedding.
  out = reused.signatures["related_items_by_embedding"](
      embeddings=tf.constant(setup["deployment"]["embeddings"][-1:]))
  assert out["neighbor_ids"][0, 0].numpy() == b"item_new"
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"unknown item_ids.*no_such_item"):
    reused.signatures["related_items"](item_ids=tf.constant(["no_such_item"]))


def test_reused_embedder_answers_like_a_traced_one(setup):
  reused, traced = _load(setup["reused"], export.EMBEDDER), _load(setup["traced"],
                                                                  export.EMBEDDER)
  got = reused.signatures["embed_items"](item_ids=tf.constant(["item_new", "item3"]))
  np.testing.assert_allclose(got["embeddings"],
                             setup["deployment"]["embeddings"][[_N, 3]], atol=1e-6)
  inputs = {"dense": tf.constant([[0.5, -1.0, 2.0]]),
            "pivot_ids": tf.constant([["board_new", "board3"]])}
  np.testing.assert_allclose(reused.signatures["embed_new_items"](**inputs)["embeddings"],
                             traced.signatures["embed_new_items"](**inputs)["embeddings"],
                             atol=1e-6)


def test_the_index_is_updated_when_few_rows_changed(setup, tmp_path):
  """Like a bounded refresh: old rows kept, the new item embedded on the grown tables."""
  base = str(tmp_path)
  config = export.ExportConfig(num_neighbors=_K, recall_queries=20,
                               models=(export.RETRIEVAL,))
  export.export_models(base, model=setup["model"], config=config, **setup["before"])
  grown = dict(setup["deployment"])
  for key in ("embeddings", "item_bias"):
    grown[key] = np.concatenate([setup["before"][key], setup["deployment"][key][_N:]])
  out = export.export_models(base, model=setup["model"], config=config, reuse_graphs=True,
                             update_index=True, fresh_items=np.array([_N]), **grown)
  report = out["models"][export.RETRIEVAL]["report"]
  assert report["search"]["index"] == {
      "trained": False, "updated_from": os.path.join(base, export.RETRIEVAL, "1", "assets.extra",
                                                     "scann", "index"),
      "previous_rows": _N, "changed_rows": 0, "new_rows": 1, "upserted_since_training": 1}
  assert report["check"][f"recall@{_K}"] >= 0.99
  loaded = tf.saved_model.load(out["models"][export.RETRIEVAL]["path"])
  found = loaded.signatures["related_items_by_embedding"](
      embeddings=tf.constant(grown["embeddings"][_N:]))
  assert found["neighbor_ids"][0, 0].numpy() == b"item_new"
  # The next update starts from version 2's index and counts its upserted row.
  out = export.export_models(base, model=setup["model"], config=config, reuse_graphs=True,
                             update_index=True, fresh_items=np.array([_N]), **grown)
  index = out["models"][export.RETRIEVAL]["report"]["search"]["index"]
  assert index["updated_from"].startswith(os.path.join(base, export.RETRIEVAL, "2"))
  assert (index["changed_rows"], index["new_rows"], index["upserted_since_training"]) == (0, 0, 1)


def test_other_settings_trace_a_new_graph(setup, tmp_path):
  config = export.ExportConfig(num_neighbors=_K + 1, recall_queries=10,
                               models=(export.RETRIEVAL_EXACT,))
  out = _export(setup["base"], setup["model"], setup["deployment"], reuse_graphs=True,
                config=config)
  report = out["models"][export.RETRIEVAL_EXACT]["report"]
  assert report["graph"]["reused_from"] is None and report["graph_spec"]["k"] == _K + 1
  loaded = tf.saved_model.load(out["models"][export.RETRIEVAL_EXACT]["path"])
  assert loaded.signatures["related_items"](item_ids=tf.constant(["item0"]))[
      "neighbor_ids"].shape == (1, _K + 1)


def test_a_graph_that_does_not_fit_is_refused_and_nothing_is_written(setup, tmp_path):
  previous = os.path.join(setup["base"], export.EMBEDDER, "1")
  vocab = tmp_path / "item_ids.txt"
  vocab.write_text("".join(f"item{i}\n" for i in range(_N)))
  plain = export.EmbedderModule(str(vocab), setup["deployment"]["embeddings"][:_N])
  dest = tmp_path / "dest"
  dest.mkdir()
  # The previous embedder has embed_new_items: its checkpoint holds the model.
  with pytest.raises(reuse.GraphMismatch, match="checkpoint keys differ"):
    reuse.write_version(previous, plain, str(dest))
  assert not os.listdir(dest)


def test_checkpoint_keys_are_the_ones_tf_saved_model_writes(setup, tmp_path):
  vocab = os.path.join(setup["first"]["models"][export.EMBEDDER]["path"], "assets",
                       "item_ids.txt")
  deployment = _deployment(setup["model"], _graph())
  module = export.EmbedderModule(vocab, deployment["embeddings"], model=setup["model"],
                                 transformed=export.layer_tables(setup["model"],
                                                                 deployment["tables"])[0],
                                 graph=deployment["graph"],
                                 pivot_vocab_file=os.path.join(
                                     os.path.dirname(vocab), "pivot_ids.txt"),
                                 num_neighbors=3)
  tf.saved_model.save(module, str(tmp_path), signatures=module.signatures())
  saved = {name for name, _ in tf.train.list_variables(str(tmp_path / "variables" / "variables"))}
  keys = set(reuse.checkpoint_variables(module))
  assert keys == saved - {"_CHECKPOINTABLE_OBJECT_GRAPH"}
  assert {"embeddings/.ATTRIBUTES/VARIABLE_VALUE",
          "layer_tables/1/.ATTRIBUTES/VARIABLE_VALUE"} < keys


def test_reused_exact_model_runs_in_a_tf1_session_without_scann(setup):
  """What stock TF Serving does: a session restores the checkpoint into the graph's variables.

  A fresh process that never imports scann loads the version with TensorFlow's v1 loader;
  the variables declared with an unknown row count take the grown corpus and the new
  vocabulary answers the new item.
  """
  code = ("import sys\nimport tensorflow as tf\n"
          "tf.compat.v1.disable_eager_execution()\n"
          "with tf.compat.v1.Session() as sess:\n"
          "  meta = tf.compat.v1.saved_model.loader.load(sess, ['serve'], sys.argv[1])\n"
          "  sig = meta.signature_def['related_items']\n"
          "  out = sess.run(sig.outputs['neighbor_ids'].name,\n"
          "                 {sig.inputs['item_ids'].name: [b'item_new', b'item0']})\n"
          "assert 'scann' not in sys.modules\n"
          "print(out.shape[0], out.shape[1], int(b'item_new' in out[1].tolist()))\n")
  path = setup["reused"]["models"][export.RETRIEVAL_EXACT]["path"]
  out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
  assert out.returncode == 0, out.stderr[-3000:]
  want = retrieval_exact.top_k(
      retrieval_exact.biased_queries(setup["deployment"]["embeddings"][[0]],
                                     setup["deployment"]["item_bias"]),
      retrieval_exact.biased_corpus(setup["deployment"]["embeddings"],
                                    setup["deployment"]["item_bias"]), _K, exclude=[[0]])[0]
  assert out.stdout.split() == ["2", str(_K), str(int(_N in want[0].tolist()))]


def test_reused_versions_are_checked_on_their_files_like_loaded_ones(setup, tmp_path):
  """The files answer the check queries as the loaded version does: the same recall."""
  for name in export.ALL_MODELS:
    assert setup["first"]["models"][name]["report"]["verification"] == "load"
    assert setup["reused"]["models"][name]["report"]["verification"] == "artifacts"
  base = str(tmp_path / "exports")
  shutil.copytree(os.path.join(setup["base"]), base)
  for name in export.ALL_MODELS:  # version 1 is the newest again
    for version in export.list_versions(os.path.join(base, name))[1:]:
      shutil.rmtree(os.path.join(base, name, str(version)))
  config = export.ExportConfig(num_neighbors=_K, recall_queries=20, exact_block_size=16,
                               verify_reused="load")
  loaded = _export(base, setup["model"], setup["deployment"], reuse_graphs=True, config=config)
  for name in export.ALL_MODELS:
    report = loaded["models"][name]["report"]
    assert report["verification"] == "load" and report["graph"]["reused_from"], name
    assert _flat(report["check"]) == pytest.approx(
        _flat(setup["reused"]["models"][name]["report"]["check"]), abs=1e-6), name


def _flat(check, prefix=""):
  """A check entry as {"signature/field": number}, without its largest score round-off."""
  out = {}
  for key, value in check.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}/"))
    elif key != "max_abs_score_diff":
      out[prefix + key] = value
  return out


def _corrupt_data_file(version_dir, module):
  del module
  path = os.path.join(version_dir, "variables", "variables.data-00000-of-00001")
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0xFF]))


def _change_module_after_writing(version_dir, module):
  del version_dir
  corpus = module.embeddings.numpy()
  corpus[3, 0] += 1.0
  module.embeddings.assign(corpus)


def _swap_rows_before_writing(module):
  corpus = module.embeddings.numpy()
  module.embeddings.assign(corpus[[1, 0, *range(2, corpus.shape[0])]])


def _swap_vocabulary_lines_before_writing(module):
  path = reuse.module_assets(module)["item_ids.txt"]
  with open(path, encoding="utf-8") as f:
    lines = f.read().split("\n")
  lines[0], lines[1] = lines[1], lines[0]
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))


@pytest.fixture(scope="module")
def exact_v1(setup, tmp_path_factory):
  """An EXPORT_BASE holding version 1 of the exact model alone."""
  base = str(tmp_path_factory.mktemp("exact_v1") / "exports")
  _export(base, setup["model"], setup["before"], reuse_graphs=True,
          config=export.ExportConfig(num_neighbors=_K, recall_queries=20, exact_block_size=16,
                                     models=(export.RETRIEVAL_EXACT,)))
  return base


@pytest.mark.parametrize("before, after, match", [
    (None, _corrupt_data_file, "checkpoint cannot be read"),
    (None, _change_module_after_writing,
     "checkpoint value embeddings/.ATTRIBUTES/VARIABLE_VALUE differs"),
    (_swap_rows_before_writing, None, "exact related_items disagrees with numpy"),
    (_swap_vocabulary_lines_before_writing, None,
     "item_ids variable and the item vocabulary differ"),
])
def test_a_wrong_file_fails_the_file_checks_and_publishes_nothing(setup, exact_v1, tmp_path,
                                                                  monkeypatch, before, after,
                                                                  match):
  """A corrupted or wrong value, row or vocabulary line of a reused version is caught."""
  base = str(tmp_path / "exports")
  shutil.copytree(exact_v1, base)
  write_version = reuse.write_version

  def faulty(previous_dir, module, dest_dir):
    if before:
      before(module)
    write_version(previous_dir, module, dest_dir)
    if after:
      after(dest_dir, module)

  monkeypatch.setattr(reuse, "write_version", faulty)
  config = export.ExportConfig(num_neighbors=_K, recall_queries=20, exact_block_size=16,
                               models=(export.RETRIEVAL_EXACT,))
  with pytest.raises(export.ExportError, match=match):
    _export(base, setup["model"], setup["deployment"], reuse_graphs=True, config=config)
  assert sorted(os.listdir(os.path.join(base, export.RETRIEVAL_EXACT))) == ["1"]
  monkeypatch.setattr(reuse, "write_version", write_version)
  out = _export(base, setup["model"], setup["deployment"], reuse_graphs=True, config=config)
  assert out["models"][export.RETRIEVAL_EXACT]["report"]["verification"] == "artifacts"


def test_a_warmup_request_the_version_cannot_answer_fails_the_export(setup, exact_v1, tmp_path,
                                                                    monkeypatch):
  base = str(tmp_path / "exports")
  shutil.copytree(exact_v1, base)
  write = warmup.write_warmup_requests

  def unknown_item(version_dir, model_name, requests):
    return write(version_dir, model_name, [("related_items", {"item_ids": np.array(
        [b"no_such_item"], object)})])

  monkeypatch.setattr(export.warmup, "write_warmup_requests", unknown_item)
  config = export.ExportConfig(num_neighbors=_K, recall_queries=20, exact_block_size=16,
                               models=(export.RETRIEVAL_EXACT,))
  with pytest.raises(export.ExportError, match=r"related_items: unknown item_ids.*no_such_item"):
    _export(base, setup["model"], setup["deployment"], reuse_graphs=True, config=config)
  assert sorted(os.listdir(os.path.join(base, export.RETRIEVAL_EXACT))) == ["1"]
