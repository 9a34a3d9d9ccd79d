"""Tests for pinsage_tf.retrieval_pybind: the pybind searcher answers as the SavedModel does.

Each case saves a `RetrievalModule` over 3,000 random items with item biases
(so queries carry the bias column), its index built by `scann_index.build_state`
into the artifacts `write_assets` moves into the version, then compares
`PybindRetrieval.run` with the loaded SavedModel's signatures on the same
inputs: identical ids, scores equal (brute force up to float round-off).
The pivot signature is compared in `export/..` tests through `export_models`
(`export_pivots_test.py`).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import pinsage_tf  # noqa: F401
import tensorflow as tf

from pinsage_tf import retrieval_pybind
from pinsage_tf import scann_index
from pinsage_tf.export import retrieval

_N, _DIM, _K = 3000, 8, 5
_CONFIGS = {
    "tree_ah": scann_index.ScannConfig(algorithm="tree_ah", num_leaves=30,
                                       num_leaves_to_search=4, reorder_num_neighbors=20),
    "ah": scann_index.ScannConfig(algorithm="ah", reorder_num_neighbors=_K + 1),
    "brute_force": scann_index.ScannConfig(algorithm="brute_force"),
}


def _save(root, config: scann_index.ScannConfig, with_assets: bool = True) -> str:
  rng = np.random.default_rng(0)
  vectors = rng.standard_normal((_N, _DIM)).astype(np.float32)
  vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
  bias = (0.1 * rng.standard_normal(_N)).astype(np.float32)
  ids = np.array([f"item_{i}" for i in range(_N)])
  vocab = os.path.join(root, "items.txt")
  with open(vocab, "w", encoding="utf-8") as f:
    f.write("\n".join(ids) + "\n")
  config = scann_index.resolve_config(_N, _K + 1, config)
  artifacts = os.path.join(root, "artifacts")
  corpus = np.concatenate([vectors, bias[:, None]], axis=1)
  state = scann_index.build_state(corpus, config, _K + 1, artifacts_dir=artifacts)
  module = retrieval.RetrievalModule(ids, vectors, vocab, _K, state, bias=bias,
                                     scann_reorder=config.reorder_num_neighbors,
                                     scann_leaves=config.num_leaves_to_search)
  path = os.path.join(root, "1")
  tf.saved_model.save(module, path, signatures=module.signatures(),
                      options=scann_index.SAVE_OPTIONS)
  if with_assets:
    retrieval_pybind.write_assets(path, artifacts, module.pybind_search())
  return path


@pytest.fixture(scope="module", params=sorted(_CONFIGS))
def saved(request, tmp_path_factory):
  path = _save(str(tmp_path_factory.mktemp(request.param)), _CONFIGS[request.param])
  loaded = tf.saved_model.load(path)
  return {"algorithm": request.param, "path": path, "loaded": loaded,
          "fast": retrieval_pybind.PybindRetrieval(path, loaded, num_threads=2)}


def _assert_same(saved, key, inputs):
  want = saved["loaded"].signatures[key](**{a: tf.constant(v) for a, v in inputs.items()})
  got = saved["fast"].run(key, inputs)
  assert got is not None
  assert sorted(got) == ["neighbor_ids", "scores"]
  assert got["neighbor_ids"].dtype == object and got["scores"].dtype == np.float32
  np.testing.assert_array_equal(got["neighbor_ids"], want["neighbor_ids"].numpy())
  if saved["algorithm"] == "brute_force":
    np.testing.assert_allclose(got["scores"], want["scores"].numpy(), rtol=1e-6, atol=1e-6)
  else:
    np.testing.assert_array_equal(got["scores"], want["scores"].numpy())


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_related_items_equal_the_saved_model(saved, batch):
  rows = np.random.default_rng(batch).choice(_N, batch, replace=False)
  ids = np.array([f"item_{i}".encode() for i in rows], dtype=object)
  for key in ("related_items", "serving_default"):
    _assert_same(saved, key, {"item_ids": ids})
  out = saved["fast"].run("related_items", {"item_ids": ids})
  assert not any(i in out["neighbor_ids"][b] for b, i in enumerate(ids))  # query excluded


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_related_items_by_embedding_equal_the_saved_model(saved, batch):
  queries = np.random.default_rng(batch).standard_normal((batch, _DIM)).astype(np.float32)
  _assert_same(saved, "related_items_by_embedding", {"embeddings": queries})


def test_requests_it_does_not_answer_return_none(saved):
  fast = saved["fast"]
  assert fast.signatures == {"related_items", "serving_default", "related_items_by_embedding"}
  assert fast.run("related_items", {"item_ids": np.array([b"item_1", b"nope"], object)}) is None
  assert fast.run("related_items", {"item_ids": np.zeros([0], object)}) is None
  bad = np.zeros((2, _DIM), np.float32)
  bad[1, 3] = np.nan
  assert fast.run("related_items_by_embedding", {"embeddings": bad}) is None


def test_str_ids_are_looked_up_as_their_utf8_bytes(saved):
  fast = saved["fast"]
  want = fast.run("related_items", {"item_ids": np.array([b"item_3", b"item_9"], object)})
  got = fast.run("related_items", {"item_ids": np.array(["item_3", "item_9"])})
  np.testing.assert_array_equal(got["neighbor_ids"], want["neighbor_ids"])
  np.testing.assert_array_equal(got["scores"], want["scores"])
  assert fast.run("related_items", {"item_ids": np.array(["item_3", "nope"])}) is None


# --- Turning the searcher's answer into results, on hand-made answers -------------
# k = 3: a query item searches k + 1 = 4. Rows best first, as ScaNN returns them.
_SCORES = np.array([[0.9, 0.8, 0.7, 0.6],
                    [0.5, 0.5, 0.4, 0.3],   # a tie: its order is kept
                    [0.9, 0.2, 0.2, 0.1],
                    [0.4, 0.3, 0.2, 0.1]], np.float32)
_INDEX = np.array([[10, 11, 12, 13], [20, 21, 22, 23], [30, 31, 32, 33], [40, 41, 42, 43]])
_KEEP = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])  # keep[j]: all columns but j
# Query items 12, 20 and 43 are found (in columns 2, 0 and 3) and dropped; 99 is
# not among row 2's results, which then keeps its first 3.
_EXCLUDE = np.array([[12], [20], [99], [43]])
_KEPT_COLUMNS = np.array([[0, 1, 3], [1, 2, 3], [0, 1, 2], [0, 1, 2]])


@pytest.mark.parametrize("rows", [[0], [1], [2], [3], [0, 1, 2, 3], [3, 2]])
def test_one_excluded_row_is_dropped_as_the_sort_drops_it(rows):
  want_index = np.take_along_axis(_INDEX, _KEPT_COLUMNS, 1)[rows]
  want_scores = np.take_along_axis(_SCORES, _KEPT_COLUMNS, 1)[rows]
  scores, index = retrieval_pybind._results(_SCORES[rows], _INDEX[rows], 4, _EXCLUDE[rows],
                                            3, _KEEP)
  np.testing.assert_array_equal(index, want_index)
  np.testing.assert_array_equal(scores, want_scores)
  scores, index = retrieval_pybind._padded_results(_SCORES[rows], _INDEX[rows], 4,
                                                   _EXCLUDE[rows], 3)  # the sort
  np.testing.assert_array_equal(index, want_index)
  np.testing.assert_array_equal(scores, want_scores)


def test_short_answers_are_padded_before_the_query_item_is_dropped():
  # Two results found, searched for 4: pybind pads with (0, NaN) or cuts the row.
  def padded():
    return np.array([[0.5, 0.25, np.nan, np.nan]], np.float32), np.array([[10, 12, 0, 0]])

  def cut():
    return np.array([[0.5, 0.25]], np.float32), np.array([[10, 12]])

  for answer in (padded, cut):
    scores, index = retrieval_pybind._results(*answer(), 4, np.array([[12]]), 3, _KEEP)
    np.testing.assert_array_equal(index, [[10, -1, -1]])
    np.testing.assert_array_equal(scores, [[0.5, -np.inf, -np.inf]])
  scores, index = retrieval_pybind._results(*padded(), 4, None, 4, _KEEP)
  np.testing.assert_array_equal(index, [[10, 12, -1, -1]])
  np.testing.assert_array_equal(scores, [[0.5, 0.25, -np.inf, -np.inf]])


def test_search_settings_round_trip(saved):
  with open(os.path.join(saved["path"], retrieval_pybind.ASSETS_DIR,
                         retrieval_pybind.SEARCH_FILE), encoding="utf-8") as f:
    search = json.load(f)
  config = scann_index.resolve_config(_N, _K + 1, _CONFIGS[saved["algorithm"]])
  assert search == {"format": retrieval_pybind.FORMAT, "k": _K, "dim": _DIM, "with_bias": True,
                    "num_items": _N, "pre_reorder": config.reorder_num_neighbors,
                    "leaves": config.num_leaves_to_search,
                    "signatures": {"related_items": "related_items",
                                   "serving_default": "related_items",
                                   "related_items_by_embedding": "related_items_by_embedding"}}
  assert retrieval_pybind.has_assets(saved["path"])


def test_state_from_artifacts_is_the_same_index(tmp_path):
  corpus = np.random.default_rng(1).standard_normal((2000, 6)).astype(np.float32)
  config = scann_index.resolve_config(2000, 4, scann_index.ScannConfig(
      algorithm="tree_ah", num_leaves=20, num_leaves_to_search=3, reorder_num_neighbors=12))
  state = scann_index.build_state(corpus, config, 4, artifacts_dir=str(tmp_path / "a"))
  os.rename(tmp_path / "a", tmp_path / "b")  # relative asset paths: the index can move
  searcher = scann_index.load_searcher(str(tmp_path / "b"), num_threads=2)
  queries = np.random.default_rng(2).standard_normal((30, 6)).astype(np.float32)
  scores, index = scann_index.search(state, tf.constant(queries), 4)
  got_index, got_scores = searcher.search_batched_parallel(queries, final_num_neighbors=4)
  np.testing.assert_array_equal(got_index, index.numpy())
  np.testing.assert_array_equal(got_scores, scores.numpy())
  with pytest.raises(ValueError, match="not empty"):
    scann_index.build_state(corpus, config, 4, artifacts_dir=str(tmp_path / "b"))
  with pytest.raises(ValueError, match="scann_assets.pbtxt is missing"):
    scann_index.load_searcher(str(tmp_path))


def test_without_assets_there_is_nothing_to_load(tmp_path):
  path = _save(str(tmp_path), _CONFIGS["ah"], with_assets=False)
  assert not retrieval_pybind.has_assets(path)
  with pytest.raises(FileNotFoundError):
    retrieval_pybind.PybindRetrieval(path, tf.saved_model.load(path), num_threads=1)
