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


def _clustered(n: int, d: int, seed: int) -> np.ndarray:
  """Unit vectors around 30 centers: a tree index needs a few leaves for high recall."""
  rng = np.random.default_rng(seed)
  centers = rng.standard_normal((30, d)).astype(np.float32)
  x = centers[rng.integers(0, 30, n)] + 0.6 * rng.standard_normal((n, d)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def tree_index():
  """A 3000 x 16 clustered corpus, a tree_ah index of 30 leaves and 200 fresh queries."""
  corpus = _clustered(3200, 16, 5)
  corpus, queries = corpus[:3000], corpus[3000:]
  requested = scann_index.ScannConfig(algorithm="tree_ah", num_leaves=30)
  config = scann_index.resolve_config(3000, 10, requested)
  state = scann_index.build_state(corpus, config, 10)
  exact, _ = retrieval_exact.top_k(queries, corpus, 10)
  return corpus, queries, requested, config, state, exact


@pytest.mark.parametrize("batch", [1, 2, 3, 7])
@pytest.mark.parametrize("shards", [2, 3])
def test_sharded_search_equals_one_search(tree_index, batch, shards):
  _, queries, _, _, state, _ = tree_index
  q = tf.constant(queries[:batch])
  want_scores, want = scann_index.search(state, q, 10, shards=1)
  scores, index = scann_index.search(state, q, 10, shards=shards)
  assert index.shape == (batch, 10)
  np.testing.assert_array_equal(index.numpy(), want.numpy())
  np.testing.assert_array_equal(scores.numpy(), want_scores.numpy())


def test_query_time_knobs_override_the_index(tree_index):
  _, queries, _, config, state, exact = tree_index
  q = tf.constant(queries)
  _, default = scann_index.search(state, q, 10)
  _, one_leaf = scann_index.search(state, q, 10, leaves=1, pre_reorder=10)
  _, every_leaf = scann_index.search(state, q, 10, leaves=config.num_leaves, pre_reorder=1000)
  one, full = (scann_index.recall_at_k(x.numpy(), exact) for x in (one_leaf, every_leaf))
  # One leaf of 30 misses most neighbors in other clusters; all leaves and
  # 100 k candidates re-scored exactly find (almost) all of them.
  assert one < 0.8 < 0.99 <= full
  assert scann_index.recall_at_k(default.numpy(), exact) > one


def test_tune_search_reaches_the_target_with_less_search(tree_index):
  _, queries, requested, config, state, exact = tree_index
  tuning = scann_index.tune_search(state, config, requested, queries, exact, 10)
  chosen = tuning.chosen
  assert tuning.target_met and chosen.recall >= 0.99
  assert (tuning.config.num_leaves_to_search, tuning.config.reorder_num_neighbors) == (
      chosen.leaves_to_search, chosen.reorder_num_neighbors)
  # The recorded recall is what the served search with these knobs returns.
  _, index = scann_index.search(state, tf.constant(queries), 10,
                                leaves=chosen.leaves_to_search,
                                pre_reorder=chosen.reorder_num_neighbors)
  assert scann_index.recall_at_k(index.numpy(), exact) == pytest.approx(chosen.recall)
  # The rules of thumb (3 of 30 leaves, 400 candidates) over-search this corpus:
  # a cheaper point reaches the target, and it is the cheapest one tried.
  assert (tuning.automatic.leaves_to_search, tuning.automatic.reorder_num_neighbors) == (3, 400)
  assert chosen.cost < tuning.automatic.cost
  assert chosen.cost == min(p.cost for p in tuning.points if p.recall >= 0.99)
  assert chosen.queries_per_second > 0 and tuning.automatic.queries_per_second > 0
  assert tuning.to_json()["chosen"]["leaves_to_search"] == chosen.leaves_to_search


def test_search_cost_hand_computed():
  tree = scann_index.ScannConfig(algorithm="tree_ah", num_leaves=30)
  # 3 of 30 leaves of 3000 points = 300 scored points, + 100 candidates x 100.
  assert scann_index.search_cost(tree, 3000, 3, 100) == 300 + 100 * 100
  assert scann_index.search_cost(scann_index.ScannConfig(algorithm="ah"), 3000, None, 20) == (
      3000 + 20 * 100)


def test_tune_search_excludes_the_query_row(tree_index):
  corpus, _, requested, config, state, _ = tree_index
  rows = np.arange(0, 3000, 30)
  exact, _ = retrieval_exact.top_k(corpus[rows], corpus, 10, exclude=rows)
  tuning = scann_index.tune_search(state, config, requested, corpus[rows], exact, 10,
                                   exclude=rows)
  # Without dropping the query itself (its own best match) recall could not
  # exceed 0.9; with it the target is reached.
  assert tuning.target_met and tuning.chosen.recall >= 0.99


def test_tune_search_keeps_explicit_knobs(tree_index):
  _, queries, _, _, state, exact = tree_index
  requested = scann_index.ScannConfig(algorithm="tree_ah", num_leaves=30, num_leaves_to_search=5)
  config = scann_index.resolve_config(3000, 10, requested)
  tuning = scann_index.tune_search(state, config, requested, queries, exact, 10)
  assert {p.leaves_to_search for p in tuning.points} == {5}
  assert tuning.config.num_leaves_to_search == 5


def test_tune_search_warns_when_the_target_is_out_of_reach(tree_index, caplog):
  _, queries, _, _, state, exact = tree_index
  # One leaf of 30: neighbors in other leaves are never found.
  requested = scann_index.ScannConfig(algorithm="tree_ah", num_leaves=30, num_leaves_to_search=1,
                                      target_recall=0.999)
  config = scann_index.resolve_config(3000, 10, requested)
  with caplog.at_level("WARNING"):
    tuning = scann_index.tune_search(state, config, requested, queries, exact, 10)
  assert not tuning.target_met and tuning.chosen.recall < 0.999
  assert tuning.chosen.recall == max(p.recall for p in tuning.points)
  assert "no setting tried reaches recall@10 0.9990" in caplog.text


def test_tuning_config_is_validated():
  with pytest.raises(ValueError, match="target_recall"):
    scann_index.ScannConfig(target_recall=1.5)
  with pytest.raises(ValueError, match="tuning_queries"):
    scann_index.ScannConfig(tuning_queries=0)


@pytest.fixture(scope="module")
def small_leaves():
  """40 unit vectors in a tree of 8 leaves (about 5 items each), k = 6 + 1."""
  corpus = _unit_vectors(40, 8, 0)
  requested = scann_index.ScannConfig(algorithm="tree_ah", num_leaves=8, training_sample_size=40,
                                      target_recall=0.3)
  config = scann_index.resolve_config(40, 7, requested)
  return corpus, requested, config, scann_index.build_state(corpus, config, 7)


def test_short_answers_are_padded_with_minus_one(small_leaves):
  corpus, _, _, state = small_leaves
  # One leaf of about 5 items cannot hold 7 results: ScaNN pads them with
  # index 0 and score NaN, which `search` turns into -1 / -inf.
  scores, index = scann_index.search(state, tf.constant(corpus), 7, leaves=1, pre_reorder=14)
  scores, index = scores.numpy(), index.numpy()
  short = index < 0
  assert short.any() and not np.isnan(scores).any()
  assert np.all(scores[short] == -np.inf) and np.all(np.isfinite(scores[~short]))
  # Every row is its found results first, then the padding.
  assert np.all(np.diff(short.astype(int), axis=1) >= 0)
  # Row 0 is never a filler: where it appears it is a real result (its score
  # is the exact inner product up to the quantised search's error).
  rows, cols = np.nonzero(index == 0)
  np.testing.assert_allclose(scores[rows, cols], corpus[rows] @ corpus[0], atol=0.3)


def test_tune_search_never_chooses_a_point_with_short_answers(small_leaves):
  corpus, requested, config, state = small_leaves
  rows = np.arange(0, 40, 2)
  exact, _ = retrieval_exact.top_k(corpus[rows], corpus, 6, exclude=rows)
  tuning = scann_index.tune_search(state, config, requested, corpus[rows], exact, 6, exclude=rows)
  # One leaf reaches recall 0.3 on its own but answers some queries short;
  # the chosen point answers every query in full.
  assert any(p.short_queries for p in tuning.points if p.recall >= 0.3)
  assert tuning.target_met and tuning.chosen.short_queries == 0
  assert tuning.to_json()["chosen"]["short_queries"] == 0
  _, index = scann_index.search(state, tf.constant(corpus[rows]), 7,
                                leaves=tuning.chosen.leaves_to_search,
                                pre_reorder=tuning.chosen.reorder_num_neighbors)
  assert np.all(index.numpy() >= 0)


@pytest.mark.parametrize("config", [
    scann_index.ScannConfig(algorithm="brute_force"),
    scann_index.ScannConfig(algorithm="ah", reorder_num_neighbors=100),
])
def test_update_state_upserts_changed_and_new_rows(tmp_path, config):
  corpus = _unit_vectors(3000, 16, 2)
  config = scann_index.resolve_config(3000, 10, config)
  scann_index.build_state(corpus, config, 10, artifacts_dir=tmp_path / "v1")
  grown = np.concatenate([corpus, _unit_vectors(20, 16, 5)])
  grown[[3, 7]] = _unit_vectors(2, 16, 6)  # two rows changed
  state, counts = scann_index.update_state(tmp_path / "v1", grown, tmp_path / "v2")
  assert counts == {"previous_rows": 3000, "changed_rows": 2, "new_rows": 20,
                    "upserted_since_training": 22}
  # Row i of the updated index is item i: the stored corpus is the new one.
  np.testing.assert_array_equal(np.load(tmp_path / "v2" / "dataset.npy"), grown)
  queries = grown[[3, 7, 3000, 3019]]
  _, index = scann_index.search(state, tf.constant(queries), 10)
  assert index.numpy()[:, 0].tolist() == [3, 7, 3000, 3019]
  want, _ = retrieval_exact.top_k(grown[:200], grown, 10)
  _, got = scann_index.search(state, tf.constant(grown[:200]), 10)
  assert scann_index.recall_at_k(got.numpy(), want) > 0.9
  # The pybind searcher of the same files answers alike.
  ids, _ = scann_index.load_searcher(tmp_path / "v2").search_batched(queries, 1)
  assert ids[:, 0].tolist() == [3, 7, 3000, 3019]


def test_update_state_declines_when_most_rows_changed_since_training(tmp_path):
  corpus = _unit_vectors(500, 8, 2)
  scann_index.build_state(corpus, scann_index.resolve_config(500, 5), 5,
                          artifacts_dir=tmp_path / "v1")
  assert scann_index.update_state(tmp_path / "v1", -corpus, tmp_path / "v2") is None
  assert scann_index.update_state(tmp_path / "v1", corpus[:400], tmp_path / "v3") is None
  # 10 changed rows are few, but not after 245 upserted by earlier updates (> 250 of 500).
  changed = corpus.copy()
  changed[:10] = -changed[:10]
  assert scann_index.update_state(tmp_path / "v1", changed, tmp_path / "v4",
                                  upserted_before=240) is not None
  assert scann_index.update_state(tmp_path / "v1", changed, tmp_path / "v5",
                                  upserted_before=245) is None
