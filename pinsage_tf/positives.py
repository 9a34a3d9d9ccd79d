"""Training positives: the (query, positive) pairs one epoch trains on.

PinSage learns from engagement pairs. Two objectives read them:

* **pivot pairs** `(pivot p, item i)`: the graph's edges, so a pivot (user,
  board) is trained to score its own items above others
  (`PinSageModel.pivot_hidden`). Every edge is a pair.
* **item pairs** `(query item q, positive item i)`, from one of two sources
  (`ItemPairSource`):
  - "graph": the TRAIN pairs the data preparation stored in `graph.pairs`
    (e.g. consecutive engagements of a user, the paper's related pins);
  - "walks": one item -> pivot -> item traversal per edge: for an edge
    (q, p), i is a uniformly random other item of p. Every edge is a query
    once per epoch, so no edge is left out of training (a per-user pair cap
    in the prepared pairs can leave a third of a graph's edges in no pair).

Heavy pivots. A pivot with d edges gives d pairs per epoch, so a few pivots
with thousands of items would dominate. With `max_pairs_per_pivot` = c > 0 a
pivot gives `min(d, c)` of its edges per epoch, a seeded random subset drawn
again every epoch: over epochs every edge still appears, and no pivot gives
more than c pairs to one epoch.

Contract: `epoch_pairs(graph, config, epoch)` returns `EpochPairs`, int32
arrays in the graph's item / pivot row space, identical for the same
(graph, config, epoch) -- a resumed run replays the same epoch -- and
different across epochs. Walk pairs never pair an item with itself; a pivot
with one item gives no walk pair.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pinsage_tf import graph as graph_lib

ITEM_PAIR_SOURCES = ("graph", "walks")


@dataclasses.dataclass(frozen=True)
class PositivesConfig:
  """Which pairs an epoch trains on (see the module docstring).

  Attributes:
    item_pairs: "graph" (the prepared TRAIN pairs) or "walks" (one
      item -> pivot -> item traversal per sampled edge).
    pivot_pairs: also produce (pivot, item) pairs, one per sampled edge.
    max_pairs_per_pivot: per epoch, at most this many edges of one pivot are
      sampled (for walk and pivot pairs); 0 = all of them.
    seed: seed of the per-epoch sampling.
  """

  item_pairs: str = "graph"
  pivot_pairs: bool = False
  max_pairs_per_pivot: int = 0
  seed: int = 0

  def __post_init__(self):
    if self.item_pairs not in ITEM_PAIR_SOURCES:
      raise ValueError(f"item_pairs must be one of {ITEM_PAIR_SOURCES}, got "
                       f"{self.item_pairs!r}.")
    if not isinstance(self.max_pairs_per_pivot, int) or self.max_pairs_per_pivot < 0:
      raise ValueError("max_pairs_per_pivot must be an int >= 0 (0 = no cap), got "
                       f"{self.max_pairs_per_pivot!r}.")


@dataclasses.dataclass(frozen=True)
class EpochPairs:
  """One epoch's training pairs.

  Attributes:
    query, positive: int32 `[P]` item pairs.
    pivot, pivot_positive: int32 `[Q]` pivot pairs (empty without the pivot
      objective).
  """

  query: np.ndarray
  positive: np.ndarray
  pivot: np.ndarray
  pivot_positive: np.ndarray


def sample_edges(graph: graph_lib.Graph, *, seed: int, epoch: int,
                 max_per_pivot: int) -> tuple[np.ndarray, np.ndarray]:
  """(pivot int64 `[E']`, item int64 `[E']`): the edges sampled for `epoch`.

  All edges when `max_per_pivot` is 0, else a uniformly random subset of
  `min(degree, max_per_pivot)` edges per pivot, drawn from
  `default_rng([seed, epoch])`; grouped by pivot, in random order within.
  """
  pi = graph.pivot_to_item
  degree = pi.degrees()
  pivot = np.repeat(np.arange(pi.num_rows, dtype=np.int64), degree)
  item = np.asarray(pi.indices, np.int64)
  if not max_per_pivot:
    return pivot, item
  rng = np.random.default_rng([seed, epoch, 0x9A1])
  # A random rank inside each pivot's row: sort by (pivot, random key).
  order = np.lexsort((rng.random(pivot.shape[0]), pivot))
  rank = np.arange(pivot.shape[0]) - np.repeat(pi.indptr[:-1], degree)
  keep = order[rank < max_per_pivot]
  return pivot[keep], item[keep]


def walk_item_pairs(graph: graph_lib.Graph, pivot: np.ndarray, item: np.ndarray, *,
                    seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
  """For every edge (pivot, item) with >= 2 items on the pivot: (item, another item of it).

  The other item is uniform over the pivot's items except `item` itself.
  Returns (query, positive) int64 arrays.
  """
  pi = graph.pivot_to_item
  degree = pi.degrees()[pivot]
  usable = degree >= 2
  pivot, item, degree = pivot[usable], item[usable], degree[usable]
  rng = np.random.default_rng([seed, epoch, 0xA1C])
  # Pick uniformly among the other d - 1 slots: draw in [0, d-1) and skip
  # the query's own slot.
  start = pi.indptr[pivot]
  own = _slot_of(pi, pivot, item)
  pick = np.minimum((rng.random(pivot.shape[0]) * (degree - 1)).astype(np.int64), degree - 2)
  pick = pick + (pick >= own)
  return item, np.asarray(pi.indices, np.int64)[start + pick]


def _slot_of(pi: graph_lib.CSR, pivot: np.ndarray, item: np.ndarray) -> np.ndarray:
  """Position of `item` inside each `pivot`'s (sorted) row of `pi`."""
  indptr = np.asarray(pi.indptr, np.int64)
  indices = np.asarray(pi.indices, np.int64)
  # Rows are sorted, so (row, item) keys are globally sorted: one searchsorted.
  width = int(indices.max(initial=0)) + 1
  row_of = np.repeat(np.arange(pi.num_rows, dtype=np.int64), np.diff(indptr))
  keys = row_of * width + indices
  return np.searchsorted(keys, pivot * width + item) - indptr[pivot]


def epoch_pairs(graph: graph_lib.Graph, config: PositivesConfig, epoch: int) -> EpochPairs:
  """The pairs of `epoch` (1-based) under `config` (see the module docstring)."""
  pivot = item = None
  if config.pivot_pairs or config.item_pairs == "walks":
    pivot, item = sample_edges(graph, seed=config.seed, epoch=epoch,
                               max_per_pivot=config.max_pairs_per_pivot)
  if config.item_pairs == "walks":
    query, positive = walk_item_pairs(graph, pivot, item, seed=config.seed, epoch=epoch)
  else:
    query, positive = graph.pairs.of(graph_lib.Split.TRAIN)
  if config.pivot_pairs:
    pivot_query, pivot_positive = pivot, item
  else:
    pivot_query = pivot_positive = np.zeros(0, np.int64)
  return EpochPairs(query=np.asarray(query, np.int32), positive=np.asarray(positive, np.int32),
                    pivot=np.asarray(pivot_query, np.int32),
                    pivot_positive=np.asarray(pivot_positive, np.int32))
