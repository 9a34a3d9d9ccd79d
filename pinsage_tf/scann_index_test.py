"""Tests of the ScaNN index: configuration rules, search results, SavedModel round trip."""

from __future__ import annotations

import numpy as np
import pytest

import pinsage_tf  # noqa: F401
import tensorflow as tf

from pinsage_tf import retrieval_exact
from pinsage_tf import scann_index


def _unit_vectors(n: int, d: int, seed: int) -> np.ndarray:
  x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("n,algorithm,leaves,to_search,reorder", [
    (1, "brute_force", None, None, None),
    (19_999, "brute_force", None, None, None),
    (20_000, "ah", None, None, 400),           # max(100, 40 * k) with k = 10
    (99_999, "ah", None, None, 400),
    (100_000, "tree_ah", 316, 32, 400),        # round(sqrt(N)), ceil(leaves / 10)
    (1_000_000, "tree_ah", 1000, 100, 400),
])
def test_resolve_config_follows_the_rules_of_thumb(n, algorithm, leaves, to_search, reorder):
  config = scann_index.resolve_config(n, 10)
  assert (config.algorithm, config.num_leaves, config.num_leaves_to_search,
          config.reorder_num_neighbors) == (algorithm, leaves, to_search, reorder)


def test_resolve_config_keeps_explicit_choices():
  config = scann_index.resolve_config(500, 2, scann_index.ScannConfig(
      algorithm="tree_ah", num_leaves=10, num_leaves_to_search=3, reorder_num_neighbors=50))
  assert (config.algorithm, config.num_leaves, config.num_leaves_to_search,
          config.reorder_num_neighbors) == ("tree_ah", 10, 3, 50)
  # A tiny k still gets at least 100 candidates re-scored.
  assert scann_index.resolve_config(30_000, 1).reorder_num_neighbors == 100
  with pytest.raises(ValueError, match="exceeds the corpus size"):
    scann_index.resolve_config(50, 10, scann_index.ScannConfig(algorithm="tree_ah",
                                                               num_leaves=60))


@pytest.mark.parametrize("kwargs,match", [
    ({"algorithm": "hnsw"}, "algorithm must be one of"),
    ({"num_leaves": 0}, "num_leaves must be a positive int"),
    ({"num_leaves": 10, "num_leaves_to_search": 20}, "exceeds num_leaves"),
    ({"dimensions_per_block": 0}, "dimensions_per_block"),
    ({"training_threads": -1}, "training_threads"),
])
def test_bad_config_is_rejected(kwargs, match):
  with pytest.raises(ValueError, match=match):
    scann_index.ScannConfig(**kwargs)


def test_recall_at_k_hand_computed():
  # Query 0 finds 2 of {1, 2, 4}; query 1 finds both of {7, 8} (the -1 pads).
  approx = np.array([[1, 2, 3], [8, 7, 9]])
  exact = np.array([[1, 2, 4], [7, 8, -1]])
  assert scann_index.recall_at_k(approx, exact) == pytest.approx(4 / 5)


def test_brute_force_equals_exact_search():
  corpus = _unit_vectors(500, 16, 0)
  queries = _unit_vectors(20, 16, 1)
  state = scann_index.build_state(corpus, scann_index.resolve_config(500, 5), 5)
  scores, index = scann_index.search(state, tf.constant(queries), 5)
  want, want_scores = retrieval_exact.top_k(queries, corpus, 5)
  np.testing.assert_array_equal(index.numpy(), want)
  np.testing.assert_allclose(scores.numpy(), want_scores, atol=1e-5)


@pytest.mark.parametrize("config", [
    scann_index.ScannConfig(algorithm="ah", reorder_num_neighbors=100),
    scann_index.ScannConfig(algorithm="tree_ah", num_leaves=20, num_leaves_to_search=10,
                            reorder_num_neighbors=100),
])
def test_approximate_configs_have_high_recall(config):
  corpus = _unit_vectors(3000, 16, 2)
  queries = _unit_vectors(50, 16, 3)
  config = scann_index.resolve_config(3000, 10, config)
  state = scann_index.build_state(corpus, config, 10)
  scores, index = scann_index.search(state, tf.constant(queries), 10)
  want, _ = retrieval_exact.top_k(queries, corpus, 10)
  assert scann_index.recall_at_k(index.numpy(), want) > 0.9
  assert np.all(np.diff(scores.numpy(), axis=1) <= 1e-6)  # descending


def test_empty_batch_and_saved_model_round_trip(tmp_path):
  corpus = _unit_vectors(100, 8, 4)
  state = scann_index.build_state(corpus, scann_index.resolve_config(100, 3), 3)

  class Module(tf.Module):

    def __init__(self):
      super().__init__()
      self.state = state

    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32)])
    def top3(self, queries):
      scores, index = scann_index.search(self.state, queries, 3)
      return {"scores": scores, "index": index}

  module = Module()
  empty = module.top3(tf.zeros([0, 8]))
  assert empty["index"].shape == (0, 3) and empty["scores"].dtype == tf.float32
  tf.saved_model.save(module, str(tmp_path), options=scann_index.SAVE_OPTIONS)
  loaded = tf.saved_model.load(str(tmp_path))
  queries = tf.constant(corpus[:4])
  np.testing.assert_array_equal(loaded.top3(queries)["index"].numpy(),
                                module.top3(queries)["index"].numpy())
  assert loaded.top3(queries)["index"].numpy()[:, 0].tolist() == [0, 1, 2, 3]
