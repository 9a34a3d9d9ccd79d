"""A seeded synthetic pin/board dataset with planted communities (`generate`).

The built-in default dataset: it prepares in about a second, needs no
download, and has known structure, so a model using features and the graph
can be checked to beat popularity.

Generative story (all draws from one `numpy.random.Generator(seed)`):
* `num_communities` communities. Each item (pin) belongs to one community,
  uniformly at random. Inside a community, item popularity is Zipf-like:
  weight `(rank + 1) ** -popularity_exponent` over a random ranking.
* Each board (pivot) belongs to one community, uniformly. Its size is
  power-law (Pareto with exponent `board_size_exponent`, clipped to
  [`board_size_min`, `board_size_max`]). Each pin slot draws, with probability
  `1 - board_noise`, an item of the board's community by popularity, else an
  item of a uniformly random community. Graph edges = distinct (pin, board)
  memberships.
* Item features: dense `[N, dense_dim]` = community centroid (N(0, 1) per
  dimension) + N(0, feature_noise^2) noise; categorical "topic" = the item's
  community with probability `topic_accuracy`, else a uniformly random
  community (vocab "topic_00", ...); hashed_text "text" = `text_tokens`
  pseudo-words, each from the community's own word list with probability
  `text_community_share`, else from a shared list (crc32-hashed into
  `hash_buckets`). `item_titles` = those words joined.
* Engagement: sessions (in time order) of length 1 + Geometric with mean
  `mean_session_length`. A session starts in a random community and after
  every step stays in it with probability `session_stay`, else jumps to a
  random community; each step draws an item of the current community by
  popularity. Consecutive steps form (query, positive) pairs (self-pairs are
  dropped); exactly `num_pairs` pairs are kept (the last session cut short).
  Sessions are split in time order: the first `1 - val_fraction -
  test_fraction` of the sessions give TRAIN pairs, the next `val_fraction`
  VALIDATION, the last `test_fraction` TEST. A pair's group is its session.
* `heldout` is empty: boards are not users, so there is no user protocol.

The ground truth (communities) is returned by `generate_with_truth`; the
learnability check `diagnostics` is recorded in `metadata["diagnostics"]`.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from absl import logging
import numpy as np

from data import features as features_lib
from pinsage_tf.graph import Graph, ItemPairs, Split, build_graph


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """Sizes and knobs of the generator (see the module docstring)."""

  num_items: int = 5000
  num_boards: int = 1500
  num_communities: int = 20
  num_pairs: int = 50_000
  dense_dim: int = 24
  feature_noise: float = 1.25
  topic_accuracy: float = 0.7
  text_tokens: int = 4
  text_words_per_community: int = 40
  text_shared_words: int = 200
  text_community_share: float = 0.6
  hash_buckets: int = 4096
  popularity_exponent: float = 1.0
  board_noise: float = 0.1
  board_size_min: int = 5
  board_size_max: int = 200
  board_size_exponent: float = 2.0
  mean_session_length: float = 6.0
  session_stay: float = 0.9
  val_fraction: float = 0.1
  test_fraction: float = 0.1
  seed: int = 0

  def __post_init__(self):
    if self.num_communities < 2:
      raise ValueError(f"num_communities must be >= 2, got {self.num_communities}.")
    if self.num_items < 2 * self.num_communities:
      raise ValueError(f"num_items must be >= 2 * num_communities "
                       f"({2 * self.num_communities}), got {self.num_items}.")
    if self.num_boards < 1 or self.num_pairs < 1 or self.dense_dim < 0:
      raise ValueError("num_boards and num_pairs must be >= 1 and dense_dim >= 0.")
    for name in ("feature_noise", "topic_accuracy", "text_community_share", "board_noise",
                 "session_stay", "val_fraction", "test_fraction"):
      value = getattr(self, name)
      if value < 0 or (name != "feature_noise" and value > 1):
        raise ValueError(f"{name} must lie in [0, 1] (feature_noise: >= 0), got {value}.")
    if self.val_fraction + self.test_fraction >= 1:
      raise ValueError("val_fraction + test_fraction must be < 1.")
    if not 1 <= self.board_size_min <= self.board_size_max:
      raise ValueError("need 1 <= board_size_min <= board_size_max.")
    if self.board_size_exponent <= 1 or self.mean_session_length <= 2:
      raise ValueError("board_size_exponent must be > 1 and mean_session_length > 2.")
    if self.text_tokens < 0 or self.text_words_per_community < 1 or self.text_shared_words < 1:
      raise ValueError("text_tokens must be >= 0 and the word list sizes >= 1.")
    if self.hash_buckets < 1:
      raise ValueError(f"hash_buckets must be >= 1, got {self.hash_buckets}.")


@dataclasses.dataclass(frozen=True)
class SyntheticTruth:
  """The planted structure: int32 `[N]` item and `[M]` board communities."""

  item_community: np.ndarray
  board_community: np.ndarray


class _CommunitySampler:
  """Draws items of given communities by within-community popularity.

  All items are laid out community by community with a cumulative
  probability that restarts in every community; adding the community index
  makes one global, increasing array, so one `searchsorted` samples a whole
  batch of (community -> item) draws.
  """

  def __init__(self, community: np.ndarray, weight: np.ndarray, num_communities: int):
    # Needs every community non-empty (generate_with_truth makes sure of it).
    self._items = np.lexsort((np.arange(community.shape[0]), community))
    w = weight[self._items]
    c = community[self._items]
    counts = np.bincount(c, minlength=num_communities)
    totals = np.bincount(c, weights=w, minlength=num_communities)
    within = np.cumsum(w) - np.repeat(np.cumsum(totals) - totals, counts)
    self._keys = c + within / totals[c]
    self._last = np.cumsum(counts) - 1
    # Exactly c + 1 at each community's last item, so u in [0, 1) stays inside c.
    self._keys[self._last] = np.arange(num_communities) + 1.0

  def sample(self, communities: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Items `[K]`, one drawn from each of `communities [K]`."""
    u = rng.random(communities.shape[0])
    # One community's keys at a time: the same indices as one searchsorted over
    # all keys (community c's keys are the only ones in (c, c + 1]), but each
    # search stays inside a slice small enough for the cache, which keeps the
    # draw linear in K on large catalogues.
    order = np.argsort(communities, kind="stable")
    bounds = np.searchsorted(communities[order], np.arange(self._last.shape[0] + 1))
    index = np.empty(communities.shape[0], dtype=np.int64)
    first = 0
    for c, last in enumerate(self._last):
      needles = order[bounds[c]:bounds[c + 1]]
      index[needles] = first + np.searchsorted(self._keys[first:last + 1], c + u[needles],
                                               side="right")
      first = last + 1
    # c + u can round up to c + 1 when u is within float epsilon of 1.
    return self._items[np.minimum(index, self._last[communities])]


def _board_sizes(config: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
  u = rng.random(config.num_boards)
  size = np.floor(config.board_size_min * (1 - u) ** (-1 / (config.board_size_exponent - 1)))
  return np.clip(size, config.board_size_min, config.board_size_max).astype(np.int64)


def _sessions(config: SyntheticConfig, sampler: _CommunitySampler,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(query [P], positive [P], session [P]) of exactly `num_pairs` pairs."""
  c = config.num_communities
  num_sessions = int(np.ceil(1.2 * config.num_pairs / (config.mean_session_length - 1))) + 4
  for _ in range(6):
    length = 1 + rng.geometric(1 / (config.mean_session_length - 1), size=num_sessions)
    session = np.repeat(np.arange(num_sessions), length)
    first = np.concatenate([[True], session[1:] != session[:-1]])
    jump = first | (rng.random(session.shape[0]) >= config.session_stay)
    # Forward-fill the community drawn at each jump.
    drawn = rng.integers(0, c, size=session.shape[0])
    last_jump = np.where(jump, np.arange(session.shape[0]), 0)
    del jump
    np.maximum.accumulate(last_jump, out=last_jump)
    community = drawn[last_jump]
    del drawn, last_jump  # the temporaries of this loop dominate the peak memory of prepare
    item = sampler.sample(community, rng)
    del community
    link = ~first[1:] & (item[1:] != item[:-1])
    query, positive, pair_session = item[:-1][link], item[1:][link], session[1:][link]
    if query.shape[0] >= config.num_pairs:
      keep = slice(0, config.num_pairs)
      return query[keep], positive[keep], pair_session[keep]
    num_sessions *= 2  # Rare: many self-pairs. Draw a larger batch (still seeded).
  raise ValueError("almost every simulated step repeats the previous item; lower "
                   "popularity_exponent or raise num_items.")


def generate_with_truth(config: SyntheticConfig) -> tuple[Graph, SyntheticTruth]:
  """Generates the dataset; returns the graph and its planted communities."""
  start = time.perf_counter()
  rng = np.random.default_rng(config.seed)
  n, m, c = config.num_items, config.num_boards, config.num_communities

  item_community = rng.integers(0, c, size=n)
  # Every community gets at least one item, so sampling from it is defined.
  item_community[rng.permutation(n)[:c]] = np.arange(c)
  rank = np.empty(n, dtype=np.int64)
  for k in range(c):
    members = np.flatnonzero(item_community == k)
    rank[members] = rng.permutation(members.shape[0])
  popularity = (rank + 1.0) ** -config.popularity_exponent
  sampler = _CommunitySampler(item_community, popularity, c)

  board_community = rng.integers(0, c, size=m)
  sizes = _board_sizes(config, rng)
  slot_board = np.repeat(np.arange(m), sizes)
  noisy = rng.random(slot_board.shape[0]) < config.board_noise
  slot_community = np.where(noisy, rng.integers(0, c, size=slot_board.shape[0]),
                            board_community[slot_board])
  slot_item = sampler.sample(slot_community, rng)

  query, positive, session = _sessions(config, sampler, rng)
  num_sessions = int(session.max()) + 1
  train_end = int(round((1 - config.val_fraction - config.test_fraction) * num_sessions))
  val_end = int(round((1 - config.test_fraction) * num_sessions))
  split = np.full(query.shape[0], int(Split.TRAIN), dtype=np.int8)
  split[session >= train_end] = int(Split.VALIDATION)
  split[session >= val_end] = int(Split.TEST)
  pairs = ItemPairs(query.astype(np.int32), positive.astype(np.int32), split,
                    session.astype(np.int32))
  for s, fraction in ((Split.VALIDATION, config.val_fraction), (Split.TEST, config.test_fraction)):
    if fraction > 0 and pairs.count(s) == 0:
      raise ValueError(f"num_pairs={config.num_pairs} is too small for a non-empty "
                       f"{s.name.lower()} split; pass more pairs.")

  centroids = rng.normal(size=(c, config.dense_dim))
  # In place (the same floats as centroid + noise * N(0, 1)): one [N, D] buffer, not three.
  dense = rng.normal(size=(n, config.dense_dim))
  dense *= config.feature_noise
  dense += centroids[item_community]
  dense = dense.astype(np.float32)
  topic = np.where(rng.random(n) < config.topic_accuracy, item_community,
                   rng.integers(0, c, size=n))
  own = rng.random((n, config.text_tokens)) < config.text_community_share
  own_word = rng.integers(0, config.text_words_per_community, size=(n, config.text_tokens))
  shared_word = rng.integers(0, config.text_shared_words, size=(n, config.text_tokens))
  # Tokens as indices into the word list (own words of every community, then the
  # shared ones), so no per-item Python strings are built except the titles.
  w = config.text_words_per_community
  words = np.array([f"w{k:02d}x{j:02d}" for k in range(c) for j in range(w)]
                   + [f"s{j:03d}" for j in range(config.text_shared_words)], dtype=str)
  token = np.where(own, item_community[:, None] * w + own_word, c * w + shared_word)
  del own, own_word, shared_word
  titles = words[token[:, 0]] if config.text_tokens else np.full(n, "")
  for t in range(1, config.text_tokens):
    titles = np.strings.add(np.strings.add(titles, " "), words[token[:, t]])
  # The dtype np.asarray(list_of_titles, dtype=str) would give: the longest title's width.
  titles = titles.astype(f"U{max(1, int(np.strings.str_len(titles).max(initial=0)))}")
  vocab = [f"topic_{k:02d}" for k in range(c)]
  sparse = (
      features_lib.categorical_feature_from_ids("topic", topic, vocab),
      features_lib.hashed_text_feature_from_tokens("text", words, token, config.hash_buckets),
  )
  width = max(4, len(str(max(n, m) - 1)))
  graph = build_graph(
      name="synthetic",
      item_ids=[f"pin_{i:0{width}d}" for i in range(n)],
      pivot_ids=[f"board_{b:0{width}d}" for b in range(m)],
      edge_items=slot_item, edge_pivots=slot_board,
      dense=dense.astype(np.float32), dense_names=[f"f{j:02d}" for j in range(config.dense_dim)],
      sparse=sparse, pairs=pairs, item_titles=titles,
      metadata={"source": "synthetic", "config": dataclasses.asdict(config),
                "sessions": num_sessions,
                "protocol": {"edges": "distinct (pin, board) memberships",
                             "pairs": "consecutive items of simulated sessions",
                             "split": "sessions in time order, train | validation | test",
                             "heldout": "empty (boards are not users)"}})
  truth = SyntheticTruth(item_community.astype(np.int32), board_community.astype(np.int32))
  graph = dataclasses.replace(
      graph, metadata={**graph.metadata, "diagnostics": diagnostics(graph, truth)})
  logging.info("generated synthetic graph in %.2fs", time.perf_counter() - start)
  return graph, truth


def generate(config: SyntheticConfig) -> Graph:
  """Generates the synthetic dataset (see the module docstring)."""
  return generate_with_truth(config)[0]


def _hits(top: np.ndarray, query: np.ndarray, positive: np.ndarray, k: int) -> float:
  """Hit rate@k of ranked lists `top [P, k + 1]`, the query removed from its list."""
  is_query = top == query[:, None]
  # Drop the query where present, else the (k+1)-th entry.
  keep = ~is_query
  keep[~is_query.any(axis=1), k] = False
  ranked = top[keep].reshape(top.shape[0], k)
  return float(np.mean(np.any(ranked == positive[:, None], axis=1))) if query.size else 0.0


def diagnostics(graph: Graph, truth: SyntheticTruth, k: int = 10,
                split: Split = Split.VALIDATION) -> dict[str, Any]:
  """Learnability check on the pairs of `split`.

  Returns:
    `same_community`: share of pairs whose positive is in the query's
    community; `chance_same_community`: that share for a random item;
    `popularity_hit_at_k`: hit rate of the k most frequent TRAIN positives
    (the query excluded); `community_popularity_hit_at_k`: the same ranking
    restricted to the query's true community (an oracle a model can approach
    by inferring the community from features and graph).
  """
  query, positive = graph.pairs.of(split)
  train_positive = graph.pairs.of(Split.TRAIN)[1]
  count = np.bincount(train_positive, minlength=graph.num_items)
  ranking = np.lexsort((np.arange(graph.num_items), -count))
  community = truth.item_community
  global_top = np.broadcast_to(ranking[:k + 1], (query.shape[0], k + 1))
  num_communities = int(community.max()) + 1
  per_community = np.zeros((num_communities, k + 1), dtype=np.int64)
  for c in range(num_communities):
    members = ranking[community[ranking] == c][:k + 1]
    per_community[c, :members.shape[0]] = members
    per_community[c, members.shape[0]:] = -1
  share = np.bincount(community, minlength=num_communities) / community.shape[0]
  return {
      "split": split.name.lower(),
      "pairs": int(query.shape[0]),
      "same_community": round(float(np.mean(community[query] == community[positive])), 4)
                        if query.size else 0.0,
      "chance_same_community": round(float(np.sum(share ** 2)), 4),
      f"popularity_hit_at_{k}": round(_hits(global_top, query, positive, k), 4),
      f"community_popularity_hit_at_{k}": round(
          _hits(per_community[community[query]], query, positive, k), 4),
  }
