"""Offline evaluation of one item scorer under the item or the user protocol.

`evaluate(graph, scorer, config)` scores held-out data of `config.split`
exactly (brute force over all items, `pinsage_tf.retrieval_exact`) in query
blocks of bounded size and returns a JSON-serialisable dict
{"protocol", "split", "metrics", "counts", "wall_time_s", ...}.

Item protocol (PinSage paper): the split's (query, positive) pairs of
`graph.pairs`. Each distinct query is scored once against all items, the
query item itself is masked, and the positive's rank counts give hit-rate@K,
MRR and the paper's scaled MRR (`pinsage_tf.metrics`, tie policy
`config.ties`). Pairs whose positive equals the query are skipped and counted.
When some pair has a query or a positive without graph edges (a new item),
"segments" repeats the metrics per `EDGE_SEGMENTS` group of pairs.
With `config.item_exclude="group_items"` (or "auto" on a graph whose
`metadata["item_protocol_exclude"]` says so, e.g. MovieLens' leave-last split,
DGL's PinSAGE protocol) each pair's group is a pivot row and that pivot's graph
items are masked too; queries are then scored once per (query, group).

User protocol (NGCF / LightGCN): every pivot (user) with >= 1 held-out item
in `graph.heldout` for the split. The user's scores come from
`scorer.score_users`: for item-item methods the mean (default), max or
temperature log-sum-exp over its history (`graph.pivot_to_item` row, plus on
the test split its validation items: `user_history`) of the item-item scores
(`config.user_query`); for learned pivot embeddings (`PivotScorer`) the
user's own embedding. Training items are masked, and, when scoring
the test split, so are the user's validation items (known positives that are
not targets); Recall/Precision/NDCG@K come from the top-K lists.

`config.max_queries` evaluates a seeded random subsample of pairs (item) or
users (user). `keep_values=True` adds the per-query metric values and their
clusters (`PerQuery`: the pair's user group, or the user) for paired
confidence intervals (`pinsage_tf.significance`). `sink`, when given, receives one record per evaluated query or
user with its top-`config.dump_k` raw item ids and scores, so the run can be
re-scored independently (hit-rate/recall from the lists; the evaluator's own
numbers use exact ranks and the tie policy, which differ from list-based
re-scoring only on ties).

`evaluate_scann` re-runs an `EmbeddingScorer` through a ScaNN index and
reports the approximate metrics and the index's recall@10 against exact
search (`import scann` is deferred to that call).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Mapping

import numpy as np

from pinsage_tf import metrics
from pinsage_tf import retrieval_exact as rx
from pinsage_tf.baselines import (DEFAULT_SET_TEMPERATURE, EmbeddingScorer, ItemScorer,
                                  SET_AGGREGATIONS)
from pinsage_tf.graph import CSR, Graph, Split

PROTOCOLS = ("item", "user", "auto")
ITEM_EXCLUDES = ("auto", "query", "group_items")
SPLITS = {"validation": Split.VALIDATION, "test": Split.TEST}
# Item-protocol pair segments by which side has no graph edge (`edge_segments`).
EDGE_SEGMENTS = ("both_have_edges", "positive_without_edges", "query_without_edges",
                 "neither_has_edges")

Progress = Callable[[int, int], None]
Sink = Callable[[dict], None]


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """What and how to evaluate.

  Attributes:
    protocol: "item", "user" or "auto" (see `resolve_protocol`).
    split: "validation" or "test".
    ks: hit-rate cutoffs of the item protocol.
    user_ks: Recall/Precision/NDCG cutoffs of the user protocol.
    mrr_scale: scale of the paper's scaled MRR.
    ties: tie policy of the item protocol ranks (`pinsage_tf.metrics.TIES`).
    user_query: "mean", "max" or "logsumexp" aggregation of a user's item
      scores (`pinsage_tf.baselines.ItemScorer.score_sets`).
    user_query_temperature: temperature of the "logsumexp" aggregation.
    test_history_includes_validation: on the test split, a user's history
      (the items whose scores are aggregated) is their training items plus
      their validation items: interactions known before the test, held out
      of the graph only for tuning (in the NGCF/LightGCN split both are
      `train.txt`). False = the training items only.
    max_queries: evaluate a seeded subsample of at most this many pairs /
      users; None = all.
    seed: seed of the subsample.
    max_block_elements: bound on the scores held at once: `query rows * num_items`
      per score block, or one tile of an embedding scorer (`retrieval_exact`).
    dump_k: length of the top lists sent to `sink` (default: max cutoff).
    item_exclude: what the item protocol masks: "query" (the query item), "group_items" (the query item and the
      graph items of the pair's group, a pivot row) or "auto" (the graph's
      `metadata["item_protocol_exclude"]`, default "query").
  """

  protocol: str = "auto"
  split: str = "test"
  ks: tuple[int, ...] = metrics.DEFAULT_ITEM_KS
  user_ks: tuple[int, ...] = metrics.DEFAULT_USER_KS
  mrr_scale: float = metrics.DEFAULT_MRR_SCALE
  ties: str = "expected"
  user_query: str = "mean"
  user_query_temperature: float = DEFAULT_SET_TEMPERATURE
  test_history_includes_validation: bool = True
  max_queries: int | None = None
  seed: int = 0
  max_block_elements: int = rx.DEFAULT_MAX_BLOCK_ELEMENTS
  dump_k: int | None = None
  item_exclude: str = "auto"

  def __post_init__(self):
    if self.item_exclude not in ITEM_EXCLUDES:
      raise ValueError(f"item_exclude must be one of {ITEM_EXCLUDES}, got "
                       f"{self.item_exclude!r}.")
    if self.protocol not in PROTOCOLS:
      raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}.")
    if self.split not in SPLITS:
      raise ValueError(f"split must be one of {tuple(SPLITS)}, got {self.split!r}.")
    for name in ("ks", "user_ks"):
      values = getattr(self, name)
      if not values or any(int(k) < 1 for k in values):
        raise ValueError(f"{name} must be a non-empty list of positive ints, got {values!r}.")
    if self.ties not in metrics.TIES:
      raise ValueError(f"ties must be one of {metrics.TIES}, got {self.ties!r}.")
    if self.user_query not in SET_AGGREGATIONS:
      raise ValueError(f"user_query must be one of {SET_AGGREGATIONS}, got {self.user_query!r}.")
    if not self.user_query_temperature > 0:
      raise ValueError(
          f"user_query_temperature must be > 0, got {self.user_query_temperature!r}.")
    if self.mrr_scale <= 0:
      raise ValueError(f"mrr_scale must be > 0, got {self.mrr_scale}.")
    if self.max_queries is not None and self.max_queries < 1:
      raise ValueError(f"max_queries must be >= 1 or None, got {self.max_queries}.")
    if self.dump_k is not None and self.dump_k < 1:
      raise ValueError(f"dump_k must be >= 1 or None, got {self.dump_k}.")


def resolve_protocol(graph: Graph, protocol: str, split: str) -> str:
  """"item" or "user": `protocol` checked against the graph's held-out data.

  "auto" picks the protocol named by `graph.metadata["primary_protocol"]`
  (a string starting with "item" or "user", as the data preparers write it)
  when the split has data for it; otherwise the item protocol (PinSage's own)
  when the split has item pairs, else the user protocol.
  """
  s = SPLITS[split]
  has = {"user": graph.heldout.of(s).nnz > 0, "item": graph.pairs.count(s) > 0}
  if protocol == "auto":
    primary = str(graph.metadata.get("primary_protocol", "")).strip().lower()
    for name in ("item", "user"):
      if primary.startswith(name) and has[name]:
        return name
    if has["item"]:
      return "item"
    if has["user"]:
      return "user"
    raise ValueError(f"graph {graph.name!r} has neither held-out user interactions nor item "
                     f"pairs for split {split!r}; nothing to evaluate.")
  if protocol == "user" and not has["user"]:
    raise ValueError(f"graph {graph.name!r} has no held-out user interactions for split "
                     f"{split!r} (heldout.{split} is empty); use --protocol=item.")
  if protocol == "item" and not has["item"]:
    raise ValueError(f"graph {graph.name!r} has no {split} item pairs; use --protocol=user.")
  return protocol


def resolve_item_exclude(graph: Graph, item_exclude: str) -> str:
  """"query" or "group_items" (see `EvalConfig.item_exclude`)."""
  if item_exclude == "auto":
    item_exclude = str(graph.metadata.get("item_protocol_exclude", "query"))
    if item_exclude not in ITEM_EXCLUDES[1:]:
      raise ValueError(f"graph {graph.name!r} metadata item_protocol_exclude must be one of "
                       f"{ITEM_EXCLUDES[1:]}, got {item_exclude!r}.")
  return item_exclude


def _subsample(count: int, max_queries: int | None, seed: int) -> np.ndarray:
  if max_queries is None or max_queries >= count:
    return np.arange(count)
  rng = np.random.default_rng(seed)
  return np.sort(rng.choice(count, size=max_queries, replace=False))


def item_pairs(graph: Graph, config: EvalConfig
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
  """(queries [P], positives [P], groups [P] or None, skipped self-pairs), subsampled."""
  split = SPLITS[config.split]
  q, p = graph.pairs.of(split)
  groups = graph.pairs.groups_of(split)
  q = np.asarray(q, np.int64)
  p = np.asarray(p, np.int64)
  keep = q != p
  pick = np.flatnonzero(keep)[_subsample(int(np.count_nonzero(keep)), config.max_queries,
                                         config.seed)]
  return (q[pick], p[pick], None if groups is None else np.asarray(groups)[pick],
          int(np.count_nonzero(~keep)))


def edge_segments(graph: Graph, queries: np.ndarray, positives: np.ndarray) -> np.ndarray:
  """int `[P]`: each pair's index into `EDGE_SEGMENTS` (which side has no graph edge)."""
  cold = graph.item_degrees() == 0
  return (cold[positives].astype(np.int64) + 2 * cold[queries].astype(np.int64))


def _segment_metrics(graph: Graph, queries: np.ndarray, positives: np.ndarray,
                     greater: np.ndarray, equal: np.ndarray, config: EvalConfig
                     ) -> dict[str, Any] | None:
  """Item metrics per `EDGE_SEGMENTS` segment, or None when every pair is warm."""
  segment = edge_segments(graph, queries, positives)
  if not np.any(segment):
    return None
  out = {}
  for s, name in enumerate(EDGE_SEGMENTS):
    mask = segment == s
    if np.any(mask):
      out[name] = {"pairs": int(np.count_nonzero(mask)),
                   "metrics": metrics.item_metrics(greater[mask], equal[mask], config.ks,
                                                   config.mrr_scale, config.ties)}
  return out


@dataclasses.dataclass(frozen=True)
class PerQuery:
  """Per-query metric values of one evaluation, for paired comparisons.

  Attributes:
    values: {metric: float64 [P]} in a fixed query order (the same for every
      scorer under one graph and config).
    clusters: int [P] the correlated unit of each query: the pair's group
      (user) under the item protocol when the graph records one, else the
      pair itself; the user under the user protocol.
    cluster_by: "group", "pair" or "user".
  """

  values: Mapping[str, np.ndarray]
  clusters: np.ndarray
  cluster_by: str


def heldout_users(graph: Graph, config: EvalConfig) -> np.ndarray:
  """Pivot ids with >= 1 held-out item in the split, subsampled, ascending."""
  users = np.flatnonzero(graph.heldout.of(SPLITS[config.split]).degrees() > 0)
  return users[_subsample(users.shape[0], config.max_queries, config.seed)]


def _history_has_validation(graph: Graph, config: EvalConfig) -> bool:
  return bool(config.test_history_includes_validation and SPLITS[config.split] == Split.TEST
              and graph.heldout.validation.nnz)


def history_name(graph: Graph, config: EvalConfig) -> str:
  """Which item history `user_history` uses: "graph" or "graph+validation"
  (the name of the matching pivot embeddings, `embeddings_io.PIVOT_HISTORIES`)."""
  return "graph+validation" if _history_has_validation(graph, config) else "graph"


def user_history(graph: Graph, users: np.ndarray, config: EvalConfig) -> CSR:
  """The items a user's scores aggregate: training items, plus validation items on test."""
  history = rx.take_rows(graph.pivot_to_item, users)
  if _history_has_validation(graph, config):
    history = rx.concat_rows(history, rx.take_rows(graph.heldout.validation, users))
  return history


def user_exclusions(graph: Graph, users: np.ndarray, split: str) -> CSR:
  """Items masked for `users`: training items, plus validation items on test."""
  parts = [rx.take_rows(graph.pivot_to_item, users)]
  if SPLITS[split] == Split.TEST and graph.heldout.validation.nnz:
    parts.append(rx.take_rows(graph.heldout.validation, users))
  return rx.concat_rows(*parts)


class _Ticker:
  """Calls `progress(done, total)` at most every `interval` seconds, and at the end."""

  def __init__(self, progress: Progress | None, total: int, interval: float = 5.0):
    self.progress, self.total, self.interval = progress, total, interval
    self.last = time.monotonic()

  def __call__(self, done: int) -> None:
    if self.progress is None:
      return
    now = time.monotonic()
    if done >= self.total or now - self.last >= self.interval:
      self.last = now
      self.progress(done, self.total)


def _raw(ids: np.ndarray, table: np.ndarray) -> list[str]:
  """Raw ids of the valid (>= 0) row indices `ids`, in order."""
  ids = np.asarray(ids)
  return np.asarray(table[ids[ids >= 0]]).astype(str).tolist()


def _rounded(scores: np.ndarray) -> list[float]:
  """Finite scores rounded to 6 decimals (padding -inf dropped)."""
  scores = np.asarray(scores, np.float64)
  return np.round(scores[np.isfinite(scores)], 6).tolist()


def evaluate_item_protocol(graph: Graph, scorer: ItemScorer, config: EvalConfig,
                           progress: Progress | None = None,
                           sink: Sink | None = None,
                           keep_values: bool = False) -> dict[str, Any]:
  """Hit-rate@K / MRR / scaled MRR over the split's item pairs (see module doc)."""
  _check_scorer(graph, scorer)
  queries, positives, groups, skipped = item_pairs(graph, config)
  by_group = resolve_item_exclude(graph, config.item_exclude) == "group_items"
  if by_group:
    if groups is None:
      raise ValueError(f"item_exclude='group_items' needs pair groups, but graph "
                       f"{graph.name!r} records none.")
    if groups.size and int(groups.max()) >= graph.num_pivots:
      raise ValueError(f"item_exclude='group_items' needs pair groups that are pivot rows; "
                       f"graph {graph.name!r} has group {int(groups.max())} >= "
                       f"{graph.num_pivots} pivots.")
    keys = queries * np.int64(graph.num_pivots) + groups
  else:
    keys = queries
  uniq_keys, inverse = np.unique(keys, return_inverse=True)
  uniq = uniq_keys // graph.num_pivots if by_group else uniq_keys
  order = np.argsort(inverse, kind="stable")
  queries, positives, inverse = queries[order], positives[order], inverse[order]
  pair_start = np.searchsorted(inverse, np.arange(uniq.shape[0] + 1))
  dump_k = config.dump_k or max(config.ks)
  # The masked items of each distinct query: itself, and its group's items.
  masked = _one_per_row(uniq)
  if by_group:
    masked = rx.concat_rows(masked, rx.take_rows(graph.pivot_to_item,
                                                 uniq_keys % graph.num_pivots))
  if isinstance(scorer, EmbeddingScorer):
    greater, equal, top = _item_ranks_by_inner_products(
        scorer, uniq, inverse, positives, masked, config, dump_k if sink else None, progress)
  else:
    greater, equal, top = _item_ranks_by_score_blocks(
        scorer, uniq, pair_start, inverse, positives, masked, config,
        dump_k if sink else None, progress)
  if sink is not None:
    for r, q in enumerate(uniq):
      pos = positives[pair_start[r]:pair_start[r + 1]]
      record = {"method": scorer.name, "query": str(graph.item_ids[q]),
                "positives": _raw(pos, graph.item_ids), "topk": _raw(top[0][r], graph.item_ids),
                "scores": _rounded(top[1][r])}
      if by_group:
        record["user"] = str(graph.pivot_ids[uniq_keys[r] % graph.num_pivots])
      sink(record)
  result = {
      "protocol": "item",
      "split": config.split,
      "metrics": metrics.item_metrics(greater, equal, config.ks, config.mrr_scale, config.ties),
      "counts": {"pairs": int(queries.shape[0]), "queries": int(uniq.shape[0]),
                 "skipped_self_pairs": skipped,
                 "pairs_in_split": int(graph.pairs.count(SPLITS[config.split])),
                 "ties_at_positive": int(np.count_nonzero(equal))},
      "ties": config.ties,
      "mrr_scale": config.mrr_scale,
      "item_exclude": "group_items" if by_group else "query",
  }
  segments = _segment_metrics(graph, queries, positives, greater, equal, config)
  if segments is not None:
    result["segments"] = segments
  if keep_values:
    values = metrics.item_metric_values(greater, equal, config.ks, config.mrr_scale,
                                        config.ties)
    values.pop("rank")
    result["per_query"] = PerQuery(
        values=values,
        clusters=np.arange(queries.shape[0]) if groups is None else groups[order],
        cluster_by="pair" if groups is None else "group")
  return result


def _one_per_row(rows: np.ndarray) -> CSR:
  """One id per row: row r holds `rows[r]`."""
  return CSR(indptr=np.arange(rows.shape[0] + 1, dtype=np.int64),
             indices=np.asarray(rows, np.int32))


def _item_ranks_by_inner_products(scorer: EmbeddingScorer, uniq: np.ndarray, inverse: np.ndarray,
                                  positives: np.ndarray, masked: CSR, config: EvalConfig,
                                  dump_k: int | None, progress: Progress | None):
  """(greater, equal, top lists or None) of an embedding scorer, in cache-sized tiles.

  One query row per pair (the pair's distinct query's vector and masks), so
  the score matrix is never held whole (`retrieval_exact.rank_counts`).
  """
  corpus = scorer.index_vectors()
  pair_masks = rx.take_rows(masked, inverse)
  tick = _Ticker(progress, int(positives.shape[0]))
  greater, equal = rx.rank_counts(scorer.query_vectors(scorer.vectors[uniq[inverse]]), corpus,
                                  positives, pair_masks,
                                  max_block_elements=config.max_block_elements, progress=tick)
  top = None
  if dump_k is not None:
    top = rx.top_k(scorer.query_vectors(scorer.vectors[uniq]), corpus, dump_k, masked,
                   max_block_elements=config.max_block_elements)
  return greater, equal, top


def _item_ranks_by_score_blocks(scorer: ItemScorer, uniq: np.ndarray, pair_start: np.ndarray,
                                inverse: np.ndarray, positives: np.ndarray, masked: CSR,
                                config: EvalConfig, dump_k: int | None,
                                progress: Progress | None):
  """(greater, equal, top lists or None) of any scorer, from `[b, N]` score blocks."""
  rows = rx.rows_per_block(scorer.num_items, config.max_block_elements)
  greater = np.zeros(positives.shape[0], np.int64)
  equal = np.zeros(positives.shape[0], np.int64)
  top = None
  if dump_k is not None:
    top = (np.empty((uniq.shape[0], dump_k), np.int32),
           np.empty((uniq.shape[0], dump_k), np.float32))
  tick = _Ticker(progress, int(uniq.shape[0]))
  for start, stop in rx.blocks(uniq.shape[0], rows):
    scores = scorer.score(uniq[start:stop])
    rx.mask_rows(scores, masked, start)
    lo, hi = pair_start[start], pair_start[stop]
    for a, b in rx.blocks(hi - lo, rows):
      sel = slice(lo + a, lo + b)
      greater[sel], equal[sel] = rx.rank_counts_of_scores(
          scores[inverse[sel] - start], positives[sel])
    if top is not None:
      top[0][start:stop], top[1][start:stop] = rx.top_k_of_scores(scores, dump_k)
    tick(stop)
  return greater, equal, top


def evaluate_user_protocol(graph: Graph, scorer: ItemScorer, config: EvalConfig,
                           progress: Progress | None = None,
                           sink: Sink | None = None,
                           keep_values: bool = False) -> dict[str, Any]:
  """Recall/Precision/NDCG@K over the split's test users (see module doc)."""
  _check_scorer(graph, scorer)
  users = heldout_users(graph, config)
  relevant = rx.take_rows(graph.heldout.of(SPLITS[config.split]), users)
  exclude = user_exclusions(graph, users, config.split)
  train = user_history(graph, users, config)
  n = graph.num_items
  k_max = max(max(config.user_ks), config.dump_k or 0)
  top = np.empty((users.shape[0], k_max), np.int32)
  rows = rx.rows_per_block(n, config.max_block_elements)
  tick = _Ticker(progress, int(users.shape[0]))
  for start, stop in rx.blocks(users.shape[0], rows):
    scores = scorer.score_users(users[start:stop], rx.take_rows(train, np.arange(start, stop)),
                                config.user_query, config.user_query_temperature)
    rx.mask_rows(scores, exclude, start)
    top[start:stop], top_scores = rx.top_k_of_scores(scores, k_max)
    if sink is not None:
      dump_k = config.dump_k or max(config.user_ks)
      for r in range(stop - start):
        sink({"method": scorer.name, "user": str(graph.pivot_ids[users[start + r]]),
              "relevant": _raw(relevant.row(start + r), graph.item_ids),
              "topk": _raw(top[start + r, :dump_k], graph.item_ids),
              "scores": _rounded(top_scores[r, :dump_k])})
    tick(stop)
  result = {
      "protocol": "user",
      "split": config.split,
      "metrics": metrics.user_metrics(top, relevant, config.user_ks),
      "counts": {"users": int(users.shape[0]), "relevant_items": int(relevant.nnz),
                 "users_without_train_items": int(np.count_nonzero(train.degrees() == 0))},
      "user_query": config.user_query,
      "user_query_temperature": config.user_query_temperature,
      "user_history": ("train+validation" if _history_has_validation(graph, config)
                       else "train"),
  }
  if keep_values:
    result["per_query"] = PerQuery(
        values=metrics.user_metric_values(metrics.hits_matrix(top, relevant),
                                          relevant.degrees(), config.user_ks),
        clusters=users, cluster_by="user")
  return result


def _check_scorer(graph: Graph, scorer: ItemScorer) -> None:
  if scorer.num_items != graph.num_items:
    raise ValueError(f"scorer {scorer.name!r} covers {scorer.num_items} items but graph "
                     f"{graph.name!r} has {graph.num_items}.")


def evaluate(graph: Graph, scorer: ItemScorer, config: EvalConfig,
             progress: Progress | None = None, sink: Sink | None = None,
             keep_values: bool = False) -> dict[str, Any]:
  """Evaluates `scorer` on `graph` under `config` (protocol resolved), timed.

  With `keep_values`, the result also holds "per_query": a `PerQuery` (numpy
  arrays, not JSON: pop it before serialising) for `pinsage_tf.significance`.
  """
  protocol = resolve_protocol(graph, config.protocol, config.split)
  started = time.perf_counter()
  if protocol == "item":
    result = evaluate_item_protocol(graph, scorer, config, progress, sink, keep_values)
  else:
    result = evaluate_user_protocol(graph, scorer, config, progress, sink, keep_values)
  result["wall_time_s"] = round(time.perf_counter() - started, 3)
  return result


# --------------------------------------------------------------------------- ScaNN


@dataclasses.dataclass(frozen=True)
class ScannConfig:
  """ScaNN index settings for `evaluate_scann`.

  Corpora smaller than `brute_force_below` items use ScaNN's brute-force
  scorer; larger ones a partitioning tree (`num_leaves` default ~sqrt(N),
  searching `leaves_to_search_fraction` of them) + anisotropic hashing
  (2 dims per block, threshold 0.2) + exact re-ordering of `reorder`
  candidates (at least 2x the requested neighbors).
  """

  brute_force_below: int = 100_000
  num_leaves: int | None = None
  leaves_to_search_fraction: float = 0.1
  reorder: int = 200
  training_sample_size: int = 250_000
  batch_size: int = 4096


def _import_scann():
  try:
    from scann.scann_ops.py import scann_ops_pybind  # heavy: imports TensorFlow
  except ImportError as e:
    raise ImportError("--scann needs the `scann` package (pip install scann, version "
                      "matching the installed TensorFlow); it could not be imported: "
                      f"{e}") from e
  return scann_ops_pybind


def build_scann_searcher(vectors: np.ndarray, num_neighbors: int,
                         config: ScannConfig = ScannConfig()) -> tuple[Any, str]:
  """A dot-product ScaNN searcher over `vectors [N, d]` and its kind."""
  scann_ops_pybind = _import_scann()
  vectors = np.ascontiguousarray(vectors, dtype=np.float32)
  n = vectors.shape[0]
  builder = scann_ops_pybind.builder(vectors, num_neighbors, "dot_product")
  if n < config.brute_force_below:
    return builder.score_brute_force().build(), "brute_force"
  leaves = config.num_leaves or max(2, int(np.sqrt(n)))
  searcher = (builder.tree(num_leaves=leaves,
                           num_leaves_to_search=max(1, int(leaves * config.leaves_to_search_fraction)),
                           training_sample_size=min(n, config.training_sample_size))
              .score_ah(2, anisotropic_quantization_threshold=0.2)
              .reorder(max(config.reorder, 2 * num_neighbors))
              .build())
  return searcher, "tree_ah_reorder"


def _scann_top_k(searcher: Any, queries: np.ndarray, k: int, exclude: CSR | None,
                 config: ScannConfig, reorder: int | None) -> np.ndarray:
  """Approximate top-k `[Q, k]` (-1 padded) after dropping excluded items."""
  out = np.full((queries.shape[0], k), -1, np.int32)
  for start, stop in rx.blocks(queries.shape[0], config.batch_size):
    extra = 0 if exclude is None else int(np.diff(exclude.indptr[start:stop + 1]).max(initial=0))
    want = k + extra
    kwargs = {"final_num_neighbors": want}
    if reorder is not None:
      kwargs["pre_reorder_num_neighbors"] = max(reorder, 2 * want)
    idx, _ = searcher.search_batched(np.ascontiguousarray(queries[start:stop]), **kwargs)
    idx = np.asarray(idx, np.int64)
    for r in range(stop - start):
      row = idx[r]
      if exclude is not None:
        row = row[~np.isin(row, exclude.row(start + r))]
      row = row[:k]
      out[start + r, :row.shape[0]] = row
  return out


def evaluate_scann(graph: Graph, scorer: EmbeddingScorer, config: EvalConfig,
                   scann_config: ScannConfig = ScannConfig()) -> dict[str, Any]:
  """Metrics through a ScaNN index, and its recall@10 against exact top-10.

  Item protocol: hit-rate@K from the approximate top-max(ks) lists (MRR is not
  reported: it needs the rank of every positive). User protocol ("mean"
  queries only): Recall/Precision/NDCG@K from the approximate lists.
  """
  if not isinstance(scorer, EmbeddingScorer):
    raise ValueError(f"ScaNN evaluation needs learned embeddings; {scorer.name!r} is a "
                     f"{type(scorer).__name__}.")
  protocol = resolve_protocol(graph, config.protocol, config.split)
  if protocol == "item":
    if resolve_item_exclude(graph, config.item_exclude) != "query":
      raise ValueError("ScaNN evaluation of the item protocol masks only the query; this "
                       "graph's pairs also mask their group's items (item_exclude).")
    queries, positives, _, _ = item_pairs(graph, config)
    uniq, inverse = np.unique(queries, return_inverse=True)
    qvecs = scorer.vectors[uniq]
    exclude = rx.as_exclusion(uniq.astype(np.int64), uniq.shape[0], graph.num_items)
    k = max(config.ks)
  else:
    if config.user_query != "mean":
      raise ValueError("ScaNN evaluation of the user protocol needs --user_query=mean "
                       "(a max-over-items query is not a single vector).")
    users = heldout_users(graph, config)
    qvecs = scorer.set_vectors(user_history(graph, users, config))
    exclude = user_exclusions(graph, users, config.split)
    k = max(config.user_ks)
  # With item biases the index holds [e_i, b_i] and the queries [q, 1].
  qvecs, index = scorer.query_vectors(qvecs), scorer.index_vectors()
  started = time.perf_counter()
  searcher, kind = build_scann_searcher(index, k, scann_config)
  built = time.perf_counter()
  approx = _scann_top_k(searcher, qvecs, k, exclude, scann_config,
                        None if kind == "brute_force" else scann_config.reorder)
  searched = time.perf_counter()
  exact, _ = rx.top_k(qvecs, index, 10, exclude,
                      max_block_elements=config.max_block_elements)
  k10 = min(10, k)
  overlap = metrics.hits_matrix(approx[:, :k10], _csr_of_lists(exact)).sum(axis=1)
  denom = np.maximum(np.count_nonzero(exact >= 0, axis=1), 1)
  result: dict[str, Any] = {
      "index": kind,
      "build_s": round(built - started, 3),
      "search_s": round(searched - built, 3),
      f"recall@{k10}_vs_exact": float(np.mean(overlap / np.minimum(denom, k10))),
      "queries": int(qvecs.shape[0]),
  }
  if protocol == "item":
    top = approx[inverse]
    found = top == positives[:, None]
    result["metrics"] = {f"hit_rate@{kk}": float(found[:, :kk].any(axis=1).mean())
                         for kk in config.ks}
  else:
    relevant = rx.take_rows(graph.heldout.of(SPLITS[config.split]), users)
    result["metrics"] = metrics.user_metrics(approx, relevant, config.user_ks)
  return result


def _csr_of_lists(lists: np.ndarray) -> CSR:
  keep = lists >= 0
  indptr = np.zeros(lists.shape[0] + 1, np.int64)
  np.cumsum(keep.sum(axis=1), out=indptr[1:])
  return CSR(indptr=indptr, indices=lists[keep].astype(np.int32))


def format_table(results: Mapping[str, Mapping[str, Any]],
                 extra_columns: tuple[str, ...] = ("wall_time_s",)) -> str:
  """A fixed-width text table: one row per method, one column per metric
  (then one per `extra_columns` key of the method's result)."""
  names = list(results)
  columns: list[str] = []
  for name in names:
    for key in results[name].get("metrics", {}):
      if key not in columns:
        columns.append(key)
  columns.extend(extra_columns)
  width = max([len("method")] + [len(n) for n in names]) + 2
  header = "method".ljust(width) + "".join(c.rjust(max(12, len(c) + 2)) for c in columns)
  lines = [header, "-" * len(header)]
  for name in names:
    row = name.ljust(width)
    for c in columns:
      value = results[name].get("metrics", {}).get(c, results[name].get(c))
      text = "-" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))
      row += text.rjust(max(12, len(c) + 2))
    lines.append(row)
  return "\n".join(lines)


def format_segments(results: Mapping[str, Mapping[str, Any]]) -> str | None:
  """Item-protocol metrics per edge segment (one table per segment), or None."""
  tables = []
  for segment in EDGE_SEGMENTS:
    rows = {name: {"metrics": r["segments"][segment]["metrics"]}
            for name, r in results.items() if segment in r.get("segments", {})}
    if rows:
      pairs = next(r["segments"][segment]["pairs"] for r in results.values()
                   if segment in r.get("segments", {}))
      tables.append(f"{segment} ({pairs} pairs)\n" + format_table(rows, extra_columns=()))
  return "\n\n".join(tables) if tables else None
