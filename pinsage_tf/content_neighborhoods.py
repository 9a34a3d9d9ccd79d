"""Content neighborhoods: neighbors for items the random walks cannot reach.

An item without graph edges (a new movie, a pin nobody saved yet) has an empty
importance neighborhood, so the convolution sees only its own features and
places it in a region of its own. `content_neighbors` gives such items the
`T` most content-similar items *with* edges instead (`baselines.FeatureScorer`:
the mean over feature groups of the group cosine), weighted by similarity
(L1-normalised over the kept neighbors). The convolution then pools the
representations of known items that look like it, which puts a new item where
its look-alikes are.

`fill_edgeless(graph, ids, weights)` returns the importance table with the
empty rows of edge-less items replaced by their content neighbors; rows of
items with edges are unchanged. Content neighbors of every item (for
`PipelineConfig.content_dropout`) cost one pass over all item pairs' feature
similarities (blocked, `O(N^2)` time, `O(N * T)` memory).

Shapes: `ids` int32 `[N, T]` (-1 on padding), `weights` float32 `[N, T]`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from pinsage_tf import graph as graph_lib
from pinsage_tf import retrieval_exact as rx
from pinsage_tf.baselines import FeatureScorer

Progress = Callable[[int, int], None]


def content_neighbors(graph: graph_lib.Graph, items: np.ndarray, num_neighbors: int, *,
                      max_block_elements: int = rx.DEFAULT_MAX_BLOCK_ELEMENTS,
                      progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
  """The `num_neighbors` most content-similar items with edges of each of `items`.

  Only neighbors with a positive similarity are kept; the item itself never is.

  Args:
    graph: a graph with item features.
    items: int `[B]` item indices.
    num_neighbors: T.
    max_block_elements: bound on `rows * num_items` per similarity block.
    progress: optional `(done, total)` callback.

  Returns:
    ids int32 `[B, T]` (-1 padded, most similar first) and weights float32
    `[B, T]` (L1-normalised similarities, 0 on padding).

  Raises:
    ValueError: the graph has no usable features, or no item has an edge.
  """
  if num_neighbors < 1:
    raise ValueError(f"num_neighbors must be >= 1, got {num_neighbors}.")
  items = np.asarray(items, np.int64)
  warm = graph.item_degrees() > 0
  if not np.any(warm):
    raise ValueError(f"graph {graph.name!r} has no item with an edge; content neighbors "
                     "are chosen among items with edges.")
  try:
    scorer = FeatureScorer(graph, max_block_elements=max_block_elements)
  except ValueError as e:
    raise ValueError(f"content neighbors need item features: {e}") from e
  k = min(num_neighbors, int(np.count_nonzero(warm)))
  ids = np.full((items.shape[0], num_neighbors), -1, np.int32)
  weights = np.zeros((items.shape[0], num_neighbors), np.float32)
  rows = rx.rows_per_block(graph.num_items, max_block_elements)
  for start, stop in rx.blocks(items.shape[0], rows):
    block = items[start:stop]
    scores = scorer.score(block)
    scores[:, ~warm] = -np.inf
    scores[np.arange(block.shape[0]), block] = -np.inf
    top, top_scores = rx.top_k_of_scores(scores, k)
    keep = np.isfinite(top_scores) & (top_scores > 0)
    sims = np.where(keep, top_scores, 0.0)
    total = sims.sum(axis=1, keepdims=True)
    ids[start:stop, :k] = np.where(keep, top, -1)
    weights[start:stop, :k] = np.where(total > 0, sims / np.where(total > 0, total, 1.0), 0.0)
    if progress is not None:
      progress(stop, items.shape[0])
  return ids, weights


def fill_edgeless(graph: graph_lib.Graph, ids: np.ndarray, weights: np.ndarray, *,
                  content: tuple[np.ndarray, np.ndarray] | None = None,
                  max_block_elements: int = rx.DEFAULT_MAX_BLOCK_ELEMENTS,
                  progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
  """`(ids, weights)` with each edge-less item's row replaced by its content neighbors.

  Args:
    graph: the graph of the table, with item features.
    ids, weights: the importance table, `[N, T]`.
    content: optional precomputed content neighbors of every item (`[N, T]`
      ids and weights, as `content_neighbors` returns them); computed for the
      edge-less rows only when None.
    max_block_elements, progress: as for `content_neighbors`.

  Returns:
    New arrays; the inputs are not modified.

  Raises:
    ValueError: bad shapes, or a graph with edge-less items but no usable
      item features.
  """
  ids = np.array(ids, np.int32)
  weights = np.array(weights, np.float32)
  if ids.shape != weights.shape or ids.ndim != 2 or ids.shape[0] != graph.num_items:
    raise ValueError(f"ids and weights must both be [{graph.num_items}, T], got "
                     f"{ids.shape} and {weights.shape}.")
  cold = np.flatnonzero(graph.item_degrees() == 0)
  if cold.size == 0:
    return ids, weights
  if content is None:
    ids[cold], weights[cold] = content_neighbors(graph, cold, ids.shape[1],
                                                 max_block_elements=max_block_elements,
                                                 progress=progress)
  else:
    content_ids, content_weights = (np.asarray(a) for a in content)
    if content_ids.shape != ids.shape or content_weights.shape != ids.shape:
      raise ValueError(f"content neighbors must be [{graph.num_items}, {ids.shape[1]}], got "
                       f"{content_ids.shape} and {content_weights.shape}.")
    ids[cold], weights[cold] = content_ids[cold], content_weights[cold]
  return ids, weights
