"""Evaluator tests: hand-computed protocols, masking rules, naive cross-checks."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from pinsage_tf import baselines
from pinsage_tf import evaluation as ev
from pinsage_tf.graph import CSR, HeldOut, ItemPairs, build_graph


def _csr(rows):
  indptr = np.zeros(len(rows) + 1, np.int64)
  np.cumsum([len(r) for r in rows], out=indptr[1:])
  return CSR(indptr, np.asarray([x for r in rows for x in r], np.int32))


# Six items on the unit circle, at these angles (degrees). 0, 3 and 4 are the
# exact vectors (1, 0), (0, 1), (-1, 0) so their inner products are exact.
ANGLES = [0, 10, 20, 90, 180, 45]


def circle_vectors():
  v = np.array([[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in ANGLES],
               np.float32)
  v[[0, 3, 4]] = [[1, 0], [0, 1], [-1, 0]]
  return v


def hand_graph():
  """Pivots u0..u2 with training items u0 {0}, u1 {3, 4}, u2 {1, 2, 5}.

  Item pairs: test (0, 2), (0, 4), (3, 5), (3, 4) and the self pair (1, 1);
  validation (2, 1). Held-out: u0 validation {2}, test {1, 3}; u1 test {5}.
  """
  pairs = ItemPairs(
      query=np.array([0, 0, 3, 3, 1, 2], np.int32),
      positive=np.array([2, 4, 5, 4, 1, 1], np.int32),
      split=np.array([2, 2, 2, 2, 2, 1], np.int8))
  heldout = HeldOut(validation=_csr([[2], [], []]), test=_csr([[1, 3], [5], []]))
  return build_graph(
      name="hand", item_ids=[f"i{i}" for i in range(6)], pivot_ids=["u0", "u1", "u2"],
      edge_items=np.array([0, 3, 4, 1, 2, 5]), edge_pivots=np.array([0, 1, 1, 2, 2, 2]),
      pairs=pairs, heldout=heldout)


def test_item_protocol_by_hand():
  graph = hand_graph()
  scorer = baselines.EmbeddingScorer(circle_vectors(), name="circle")
  config = ev.EvalConfig(protocol="item", split="test", ks=(1, 2, 4), mrr_scale=2)
  result = ev.evaluate(graph, scorer, config)
  # From 0 (query masked): 1 (cos 10), 2 (cos 20), 5 (cos 45), 3 (0), 4 (-1):
  #   (0, 2) rank 2, (0, 4) rank 5.
  # From 3: 5 (cos 45), 2 (cos 70), 1 (cos 80), then 0 and 4 tie at exactly 0:
  #   (3, 5) rank 1, (3, 4) rank 4 or 5 (expected ties: each with prob 1/2).
  m = result["metrics"]
  assert m["hit_rate@1"] == pytest.approx(1 / 4)
  assert m["hit_rate@2"] == pytest.approx(2 / 4)
  assert m["hit_rate@4"] == pytest.approx((1 + 0 + 1 + 0.5) / 4)
  assert m["mrr"] == pytest.approx((1 / 2 + 1 / 5 + 1 + (1 / 4 + 1 / 5) / 2) / 4)
  # ceil(R / 2): 1, 3, 1, and {2, 3} for the tie -> (1 + 1/3 + 1 + (1/2 + 1/3)/2) / 4.
  assert m["scaled_mrr"] == pytest.approx(2.75 / 4)
  assert result["counts"]["pairs"] == 4
  assert result["counts"]["queries"] == 2
  assert result["counts"]["skipped_self_pairs"] == 1  # (1, 1)
  assert result["counts"]["ties_at_positive"] == 1
  optimistic = ev.evaluate(graph, scorer, ev.EvalConfig(protocol="item", ks=(4,), ties="optimistic"))
  assert optimistic["metrics"]["hit_rate@4"] == pytest.approx(3 / 4)
  # The validation split has the single pair (2, 1): seen from 2 (20 deg),
  # item 1 (cos 10) beats 5 (cos 25) and 0 (cos 20): rank 1.
  val = ev.evaluate(graph, scorer, ev.EvalConfig(protocol="item", split="validation", ks=(1,)))
  assert val["metrics"]["hit_rate@1"] == 1.0 and val["counts"]["pairs"] == 1


def test_item_protocol_query_is_excluded():
  # A positive identical to the query's vector must still rank 1: the query
  # itself (score 1 too) is masked and does not count as a tie.
  v = np.array([[1, 0], [1, 0], [0, 1]], np.float32)
  graph = build_graph(name="dup", item_ids=["a", "b", "c"], pivot_ids=["p"],
                      edge_items=np.array([0, 1, 2]), edge_pivots=np.array([0, 0, 0]),
                      pairs=ItemPairs(np.array([0], np.int32), np.array([1], np.int32),
                                      np.array([2], np.int8)))
  result = ev.evaluate(graph, baselines.EmbeddingScorer(v), ev.EvalConfig(ks=(1,)))
  assert result["protocol"] == "item"
  assert result["metrics"]["hit_rate@1"] == 1.0 and result["counts"]["ties_at_positive"] == 0


def test_user_protocol_by_hand_masks_train_and_validation():
  graph = hand_graph()
  scorer = baselines.EmbeddingScorer(circle_vectors())
  records = []
  result = ev.evaluate(graph, scorer, ev.EvalConfig(protocol="user", split="test", user_ks=(2,)),
                       sink=records.append)
  # u0: query = e0; train {0} and validation {2} masked; ranking 1 (cos 10),
  #   5 (cos 45), 3 (0), 4 (-1): top-2 [1, 5], test {1, 3}: recall 1/2,
  #   NDCG = 1 / (1 + 1/log2(3)) = 0.6131472.
  # u1: query = mean(e3, e4) = (-0.5, 0.5) (135 deg); train {3, 4} masked;
  #   5 (90 deg away, ~0) > 2 > 1 > 0: top-2 [5, 2], test {5}: recall 1, NDCG 1.
  # u2 has no held-out test item and is not evaluated.
  m = result["metrics"]
  assert result["counts"]["users"] == 2
  assert m["recall@2"] == pytest.approx((0.5 + 1) / 2)
  assert m["ndcg@2"] == pytest.approx((1 / (1 + 1 / math.log2(3)) + 1) / 2)
  assert m["precision@2"] == pytest.approx((1 / 2 + 1 / 2) / 2)
  assert [r["topk"] for r in records] == [["i1", "i5"], ["i5", "i2"]]
  assert records[0]["user"] == "u0" and records[0]["relevant"] == ["i1", "i3"]
  # On the validation split u0's target is 2 and only train items are masked:
  # top-2 [1, 2] -> hit at position 2: recall 1, NDCG = 1 / log2(3).
  val = ev.evaluate(graph, scorer, ev.EvalConfig(protocol="user", split="validation",
                                                  user_ks=(2,)))
  assert val["counts"]["users"] == 1
  assert val["metrics"]["ndcg@2"] == pytest.approx(1 / math.log2(3))


def test_test_split_history_includes_validation_items():
  # Item 2 moved next to item 3 (85 vs 90 degrees). u0's history is {0} plus,
  # on the test split by default, its validation item 2; "max" then ranks 3
  # first (cos 5 deg): top-2 [3, 1] = its test items, recall 1. With the
  # training items only it ranks 1 (30 deg) and 5 (45 deg): recall 1/2.
  # u1 (history {3, 4}, test {5}, no validation items) ranks [2, 5]: recall 1.
  angles = [0, 30, 85, 90, 180, 45]
  v = np.array([[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in angles],
               np.float32)
  graph, scorer = hand_graph(), baselines.EmbeddingScorer(v)
  config = ev.EvalConfig(protocol="user", split="test", user_ks=(2,), user_query="max")
  with_val = ev.evaluate(graph, scorer, config)
  assert with_val["user_history"] == "train+validation"
  assert with_val["metrics"]["recall@2"] == pytest.approx(1.0)
  train_only = ev.evaluate(
      graph, scorer, dataclasses.replace(config, test_history_includes_validation=False))
  assert train_only["user_history"] == "train"
  assert train_only["metrics"]["recall@2"] == pytest.approx(0.75)
  # The validation split never adds held-out items to the history.
  val = ev.evaluate(graph, scorer, dataclasses.replace(config, split="validation"))
  assert val["user_history"] == "train"


def _random_graph(seed, n=40, m=25):
  rng = np.random.default_rng(seed)
  ei, ep = rng.integers(0, n, 300), rng.integers(0, m, 300)
  q, p = rng.integers(0, n, 60), rng.integers(0, n, 60)
  pairs = ItemPairs(q.astype(np.int32), p.astype(np.int32), np.full(60, 2, np.int8))
  heldout = HeldOut(CSR.from_pairs(rng.integers(0, m, 15), rng.integers(0, n, 15), m),
                    CSR.from_pairs(rng.integers(0, m, 80), rng.integers(0, n, 80), m))
  return build_graph(name="random", item_ids=[str(i) for i in range(n)],
                     pivot_ids=[str(i) for i in range(m)], edge_items=ei, edge_pivots=ep,
                     pairs=pairs, heldout=heldout)


@pytest.mark.parametrize("how", ["mean", "max", "logsumexp"])
def test_user_protocol_matches_naive(how):
  graph = _random_graph(1)
  v = np.random.default_rng(2).normal(size=(40, 4)).astype(np.float32)
  scorer = baselines.EmbeddingScorer(v)
  tau = 0.3
  config = ev.EvalConfig(protocol="user", user_ks=(5, 10), user_query=how,
                         user_query_temperature=tau, max_block_elements=90)
  result = ev.evaluate(graph, scorer, config)
  got = result["metrics"]
  assert result["user_query"] == how and result["user_query_temperature"] == tau
  recalls, ndcgs, users = [], [], 0
  for u in range(graph.num_pivots):
    test = set(graph.heldout.test.row(u).tolist())
    if not test:
      continue
    users += 1
    train = graph.pivot_to_item.row(u)
    # On the test split the history is the training plus the validation items.
    history = np.concatenate([train, graph.heldout.validation.row(u)])
    sims = v[history] @ v.T
    if how == "logsumexp":
      s = tau * np.log(np.exp(sims.astype(np.float64) / tau).sum(0))
    else:
      s = sims.mean(0) if how == "mean" else sims.max(0)
    if history.size == 0:
      s = np.zeros(40)
    s = s.astype(np.float64)
    s[train] = -np.inf
    s[graph.heldout.validation.row(u)] = -np.inf
    top = [i for i in np.lexsort((np.arange(40), -s)) if np.isfinite(s[i])][:10]
    hits = [i in test for i in top]
    recalls.append(sum(hits) / len(test))
    dcg = sum(h / math.log2(p + 2) for p, h in enumerate(hits))
    ndcgs.append(dcg / sum(1 / math.log2(p + 2) for p in range(min(len(test), 10))))
  assert got["recall@10"] == pytest.approx(np.mean(recalls), rel=1e-6)
  assert got["ndcg@10"] == pytest.approx(np.mean(ndcgs), rel=1e-6)
  assert users > 10


def test_item_protocol_blocks_do_not_change_results():
  graph = _random_graph(3)
  scorer = baselines.ItemKNNScorer(graph)
  big = ev.evaluate(graph, scorer, ev.EvalConfig(protocol="item"))
  small = ev.evaluate(graph, scorer, ev.EvalConfig(protocol="item", max_block_elements=1))
  assert big["metrics"] == small["metrics"]


def test_max_queries_subsample_is_seeded():
  graph = _random_graph(4)
  scorer = baselines.PopularityScorer(graph)
  a = ev.evaluate(graph, scorer, ev.EvalConfig(protocol="item", max_queries=10, seed=1))
  b = ev.evaluate(graph, scorer, ev.EvalConfig(protocol="item", max_queries=10, seed=1))
  c = ev.evaluate(graph, scorer, ev.EvalConfig(protocol="user", max_queries=5))
  assert a["counts"]["pairs"] == 10 and a["metrics"] == b["metrics"]
  assert c["counts"]["users"] == 5


def test_protocol_resolution_and_config_errors():
  graph = hand_graph()
  # Both pairs and held-out users: the item protocol unless the data preparer
  # named another primary protocol.
  assert ev.resolve_protocol(graph, "auto", "test") == "item"
  user_first = dataclasses.replace(graph, metadata={"primary_protocol": "user (heldout ...)"})
  assert ev.resolve_protocol(user_first, "auto", "test") == "user"
  # Without held-out validation users, "auto" falls back to the validation pairs.
  no_val_users = dataclasses.replace(
      user_first, heldout=HeldOut(validation=_csr([[], [], []]), test=graph.heldout.test))
  assert ev.resolve_protocol(no_val_users, "auto", "validation") == "item"
  no_heldout = build_graph(name="pairs_only", item_ids=["a", "b"], pivot_ids=["p"],
                           edge_items=np.array([0, 1]), edge_pivots=np.array([0, 0]),
                           pairs=ItemPairs(np.array([0], np.int32), np.array([1], np.int32),
                                           np.array([2], np.int8)))
  assert ev.resolve_protocol(no_heldout, "auto", "test") == "item"
  with pytest.raises(ValueError, match="no held-out user interactions"):
    ev.resolve_protocol(no_heldout, "user", "test")
  with pytest.raises(ValueError, match="neither"):
    ev.resolve_protocol(no_heldout, "auto", "validation")
  with pytest.raises(ValueError, match="ties"):
    ev.EvalConfig(ties="random")
  with pytest.raises(ValueError, match="user_query_temperature"):
    ev.EvalConfig(user_query="logsumexp", user_query_temperature=0.0)
  with pytest.raises(ValueError, match="split"):
    ev.EvalConfig(split="train")
  with pytest.raises(ValueError, match="covers 3 items"):
    ev.evaluate(graph, baselines.EmbeddingScorer(np.eye(3, dtype=np.float32)), ev.EvalConfig())


def test_item_sink_records():
  graph = hand_graph()
  records = []
  ev.evaluate(graph, baselines.EmbeddingScorer(circle_vectors(), name="c"),
              ev.EvalConfig(protocol="item", ks=(3,)), sink=records.append)
  assert [r["query"] for r in records] == ["i0", "i3"]
  assert records[0] == {"method": "c", "query": "i0", "positives": ["i2", "i4"],
                        "topk": ["i1", "i2", "i5"], "scores": records[0]["scores"]}
  assert len(records[1]["scores"]) == 3


def test_format_table_lists_methods_and_metrics():
  table = ev.format_table({"a": {"metrics": {"recall@20": 0.5}, "wall_time_s": 1.0},
                           "bb": {"metrics": {"recall@20": 0.25}, "wall_time_s": 2.0}})
  lines = table.splitlines()
  assert "recall@20" in lines[0] and lines[2].startswith("a ") and "0.2500" in lines[3]


@pytest.mark.slow
def test_scann_brute_force_and_tree():
  pytest.importorskip("scann")  # part of the pinned environment; skipped only elsewhere
  graph = _random_graph(5, n=600, m=200)
  v = np.random.default_rng(0).normal(size=(600, 8)).astype(np.float32)
  v /= np.linalg.norm(v, axis=1, keepdims=True)
  scorer = baselines.EmbeddingScorer(v)
  config = ev.EvalConfig(protocol="user", user_ks=(10,))
  exact = ev.evaluate(graph, scorer, config)["metrics"]
  brute = ev.evaluate_scann(graph, scorer, config)
  assert brute["index"] == "brute_force"
  assert brute["recall@10_vs_exact"] == pytest.approx(1.0)
  assert brute["metrics"]["recall@10"] == pytest.approx(exact["recall@10"])
  tree = ev.evaluate_scann(graph, scorer, ev.EvalConfig(protocol="item", ks=(10, 50)),
                           ev.ScannConfig(brute_force_below=100, leaves_to_search_fraction=0.5))
  assert tree["index"] == "tree_ah_reorder"
  # Half the leaves searched and exact re-ordering: most of the exact top-10.
  assert 0.7 < tree["recall@10_vs_exact"] <= 1.0
  assert set(tree["metrics"]) == {"hit_rate@10", "hit_rate@50"}


def test_per_query_values_average_to_the_metrics_and_carry_groups():
  graph = _random_graph(5)
  rng = np.random.default_rng(6)
  groups = rng.integers(0, 7, graph.pairs.query.size).astype(np.int32)
  grouped = dataclasses.replace(graph, pairs=dataclasses.replace(graph.pairs, group=groups))
  scorer = baselines.ItemKNNScorer(grouped)
  config = ev.EvalConfig(protocol="item", ks=(1, 5, 10), max_queries=45, seed=2)
  result = ev.evaluate(grouped, scorer, config, keep_values=True)
  per = result["per_query"]
  assert per.cluster_by == "group" and set(per.values) == set(result["metrics"]) - {
      "mean_rank", "median_rank"}
  for name, values in per.values.items():
    assert values.shape == (result["counts"]["pairs"],)
    assert values.mean() == pytest.approx(result["metrics"][name])
  # Each value's cluster is its pair's group: recompute every pair's hit@5
  # by brute force and match them up by (query, positive, group).
  q, p, g, _ = ev.item_pairs(grouped, config)
  scores = scorer.score(q)
  scores[np.arange(q.size), q] = -np.inf
  pos = scores[np.arange(q.size), p]
  greater = (scores > pos[:, None]).sum(1)
  equal = (scores == pos[:, None]).sum(1) - 1
  hit5 = np.clip(5 - greater, 0, equal + 1) / (equal + 1)
  want = sorted(zip(g.tolist(), hit5.round(9).tolist()))
  got = sorted(zip(per.clusters.tolist(), per.values["hit_rate@5"].round(9).tolist()))
  assert got == want
  # Without groups every pair is its own cluster; without keep_values nothing extra.
  plain = ev.evaluate(graph, scorer, config, keep_values=True)["per_query"]
  assert plain.cluster_by == "pair" and sorted(plain.clusters.tolist()) == list(range(45))
  assert "per_query" not in ev.evaluate(graph, scorer, config)


def test_per_user_values_of_the_user_protocol():
  graph = _random_graph(7)
  scorer = baselines.PopularityScorer(graph)
  config = ev.EvalConfig(protocol="user", user_ks=(5, 10))
  result = ev.evaluate(graph, scorer, config, keep_values=True)
  per = result["per_query"]
  assert per.cluster_by == "user"
  np.testing.assert_array_equal(per.clusters, ev.heldout_users(graph, config))
  for name, value in result["metrics"].items():
    assert per.values[name].mean() == pytest.approx(value)


def _grouped_hand_graph(metadata=None):
  """`hand_graph` with pair groups (pivot rows): (0, 2) u1, (0, 4) u2, (3, 5) u0,
  (3, 4) u0, (1, 1) u0, validation (2, 1) u0."""
  g = hand_graph()
  pairs = dataclasses.replace(g.pairs, group=np.array([1, 2, 0, 0, 0, 0], np.int32))
  return build_graph(
      name="grouped", item_ids=g.item_ids, pivot_ids=g.pivot_ids,
      edge_items=np.array([0, 3, 4, 1, 2, 5]), edge_pivots=np.array([0, 1, 1, 2, 2, 2]),
      pairs=pairs, heldout=g.heldout, metadata=metadata)


def test_item_protocol_masks_the_groups_graph_items():
  scorer = baselines.EmbeddingScorer(circle_vectors(), name="circle")
  config = ev.EvalConfig(protocol="item", ks=(1, 2, 4), item_exclude="group_items")
  result = ev.evaluate(_grouped_hand_graph(), scorer, config)
  # (0, 2) with u1's {3, 4} masked: 1 (cos 10) then 2 -> rank 2.
  # (0, 4) with u2's {1, 2, 5} masked: 3 (cos 0) then 4 -> rank 2 (5 without the mask).
  # (3, 5) with u0's {0} masked: rank 1. (3, 4) with 0 masked: 5, 2, 1, 4 -> rank 4,
  #   no tie left (without the mask 0 and 4 tie at 0).
  m = result["metrics"]
  assert m["hit_rate@1"] == pytest.approx(1 / 4)
  assert m["hit_rate@2"] == pytest.approx(3 / 4)
  assert m["hit_rate@4"] == pytest.approx(1.0)
  assert m["mrr"] == pytest.approx((1 / 2 + 1 / 2 + 1 + 1 / 4) / 4)
  assert result["counts"]["queries"] == 3  # (0, u1), (0, u2), (3, u0)
  assert result["counts"]["ties_at_positive"] == 0
  assert result["item_exclude"] == "group_items"
  # "auto" follows the graph's metadata; without it only the query is masked.
  auto = ev.evaluate(_grouped_hand_graph({"item_protocol_exclude": "group_items"}), scorer,
                     ev.EvalConfig(protocol="item", ks=(1, 2, 4)))
  assert auto["metrics"] == m
  plain = ev.evaluate(_grouped_hand_graph(), scorer, ev.EvalConfig(protocol="item", ks=(2,)))
  assert plain["item_exclude"] == "query"
  assert plain["metrics"]["hit_rate@2"] == pytest.approx(2 / 4)
  records = []
  ev.evaluate(_grouped_hand_graph(), scorer, config, sink=records.append)
  by_user = {(r["query"], r["user"]): r["topk"] for r in records}
  assert by_user[("i0", "u2")] == ["i3", "i4"]


def test_group_exclusion_needs_groups_that_are_pivot_rows():
  scorer = baselines.EmbeddingScorer(circle_vectors())
  with pytest.raises(ValueError, match="needs pair groups"):
    ev.evaluate(hand_graph(), scorer, ev.EvalConfig(protocol="item", item_exclude="group_items"))
  g = hand_graph()
  bad = build_graph(
      name="bad", item_ids=g.item_ids, pivot_ids=g.pivot_ids,
      edge_items=np.array([0, 3, 4, 1, 2, 5]), edge_pivots=np.array([0, 1, 1, 2, 2, 2]),
      pairs=dataclasses.replace(g.pairs, group=np.array([0, 0, 7, 0, 0, 0], np.int32)),
      heldout=g.heldout)
  with pytest.raises(ValueError, match="pivot rows"):
    ev.evaluate(bad, scorer, ev.EvalConfig(protocol="item", item_exclude="group_items"))
  with pytest.raises(ValueError, match="item_exclude"):
    ev.EvalConfig(item_exclude="users")


def test_item_protocol_segments_by_items_without_edges():
  # Items 4 (180 deg) and 5 (45 deg) have no graph edge. Ranks (circle scores):
  # (0, 2) both warm: from 0, 1 then 2 -> rank 2; (0, 5) cold positive: rank 3;
  # (5, 2) cold query: 2 is closest to 45 deg -> rank 1; (4, 5) both cold:
  # from 180 deg, 3 (90) then 5 (45) -> rank 2.
  pairs = ItemPairs(query=np.array([0, 0, 5, 4], np.int32),
                    positive=np.array([2, 5, 2, 5], np.int32),
                    split=np.full(4, 2, np.int8))
  graph = build_graph(
      name="cold", item_ids=[f"i{i}" for i in range(6)], pivot_ids=["u0", "u1", "u2"],
      edge_items=np.array([0, 3, 1, 2]), edge_pivots=np.array([0, 1, 2, 2]), pairs=pairs)
  scorer = baselines.EmbeddingScorer(circle_vectors(), name="circle")
  result = ev.evaluate(graph, scorer, ev.EvalConfig(protocol="item", ks=(1, 2)))
  segments = result["segments"]
  assert list(segments) == list(ev.EDGE_SEGMENTS)
  assert all(s["pairs"] == 1 for s in segments.values())
  hit1 = {name: s["metrics"]["hit_rate@1"] for name, s in segments.items()}
  hit2 = {name: s["metrics"]["hit_rate@2"] for name, s in segments.items()}
  assert hit1 == {"both_have_edges": 0.0, "positive_without_edges": 0.0,
                  "query_without_edges": 1.0, "neither_has_edges": 0.0}
  assert hit2 == {"both_have_edges": 1.0, "positive_without_edges": 0.0,
                  "query_without_edges": 1.0, "neither_has_edges": 1.0}
  assert result["metrics"]["hit_rate@2"] == pytest.approx(3 / 4)
  table = ev.format_segments({"circle": result})
  assert "positive_without_edges (1 pairs)" in table and "wall_time_s" not in table
  # A graph whose pairs are all warm reports no segments.
  assert "segments" not in ev.evaluate(hand_graph(), scorer, ev.EvalConfig(protocol="item"))


class _AnyScorer(baselines.ItemScorer):
  """An embedding scorer seen as a generic one: scored through `[b, N]` blocks."""

  def __init__(self, inner):
    super().__init__(inner.name, inner.num_items)
    self.inner = inner

  def score(self, items):
    return self.inner.score(items)


@pytest.mark.parametrize("grouped", [False, True])
def test_embedding_tiles_equal_score_blocks(grouped):
  # The embedding path (tiles, one row per pair) and the generic block path
  # give the same ranks, top lists and per-pair values, with biases, repeated
  # queries, group masks and integer scores that tie.
  graph = _random_graph(5, n=300, m=25)
  rng = np.random.default_rng(6)
  if grouped:
    items, pivots = rng.integers(0, 300, 300), rng.integers(0, 25, 300)
    # Each pair's group: a drawn pivot whose items do not hold the positive.
    group = [next(g for g in rng.permutation(25) if not np.any(items[pivots == g] == positive))
             for positive in graph.pairs.positive]
    pairs = dataclasses.replace(graph.pairs, group=np.asarray(group, np.int32))
    graph = build_graph(name="random", item_ids=graph.item_ids, pivot_ids=graph.pivot_ids,
                        edge_items=items, edge_pivots=pivots, pairs=pairs, heldout=graph.heldout)
  scorer = baselines.EmbeddingScorer(rng.integers(-2, 3, (300, 4)).astype(np.float32),
                                     bias=rng.integers(0, 2, 300).astype(np.float32))
  config = ev.EvalConfig(protocol="item", item_exclude="group_items" if grouped else "query",
                         ks=(1, 10, 50), max_block_elements=3000)
  records = {"tiles": [], "blocks": []}
  results = {name: ev.evaluate_item_protocol(graph, s, config, sink=records[name].append,
                                             keep_values=True)
             for name, s in (("tiles", scorer), ("blocks", _AnyScorer(scorer)))}
  assert results["tiles"]["item_exclude"] == ("group_items" if grouped else "query")
  assert results["tiles"]["metrics"] == results["blocks"]["metrics"]
  assert results["tiles"]["counts"] == results["blocks"]["counts"]
  assert results["tiles"]["counts"]["ties_at_positive"] > 0  # ties are exercised
  for key, values in results["tiles"]["per_query"].values.items():
    np.testing.assert_array_equal(values, results["blocks"]["per_query"].values[key], key)
  assert records["tiles"] == records["blocks"] and len(records["tiles"]) > 40
