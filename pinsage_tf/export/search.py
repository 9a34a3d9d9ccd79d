"""Top-k inner-product search inside an exported graph, with excluded rows.

`exact_top_k` scores the corpus block by block with stock ops (ties to the
lower index, like `pinsage_tf.retrieval_exact`); `scann_search` runs a ScaNN
index (custom ops); `drop_excluded` removes excluded rows from search results.
Scores are float32 `[B, k]` descending, indices int32 `[B, k]`; a query with
fewer than k eligible rows gets score -inf and index -1 in the remaining slots.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from pinsage_tf import scann_index


def exact_top_k(corpus: tf.Tensor, num_items: int | tf.Tensor, queries: tf.Tensor, k: int,
                block_size: int, exclude: tf.Tensor | None = None
                ) -> tuple[tf.Tensor, tf.Tensor]:
  """Exact top-k inner-product search with stock ops, block by block.

  Args:
    corpus: float32 `[num_blocks * block_size, d]`, the `num_items` real rows
      first (zero padding after them); the block count is read at run time.
    num_items: N, real rows (an int or an int32 scalar tensor).
    queries: float32 `[B, d]`.
    k: results per query; needs `k < block_size` and `k < num_items`.
    block_size: rows scored per loop step (one `[B, block_size]` block alive).
    exclude: optional int32 `[B]` (the query item) or `[B, L]` rows to mask
      per query; -1 = none.

  Returns:
    (scores float32 `[B, k]` descending, indices int32 `[B, k]`); ties go to
    the lower index, as in `pinsage_tf.retrieval_exact`. A query with fewer
    than k unmasked rows gets score -inf and index -1 in the remaining slots.
  """
  num_blocks = tf.shape(corpus)[0] // block_size
  b = tf.shape(queries)[0]
  neg_inf = tf.constant(-np.inf, tf.float32)
  if exclude is not None and exclude.shape.rank == 1:
    exclude = exclude[:, None]

  def body(i, best_scores, best_index):
    start = i * block_size
    block = corpus[start:start + block_size]  # [block, d]
    scores = tf.matmul(queries, block, transpose_b=True)  # [B, block]
    rows = start + tf.range(block_size)  # [block]
    scores = tf.where(tf.broadcast_to(rows[None, :] >= num_items, tf.shape(scores)), neg_inf,
                      scores)
    if exclude is not None:
      scores = _mask_columns(scores, exclude - start)  # -1 stays negative
    top = tf.math.top_k(scores, k=k)
    # Earlier blocks (lower indices) come first, so top_k's "lower position
    # first" tie rule keeps ties ordered by index, and the initial -1 slots
    # win over masked rows of score -inf.
    scores = tf.concat([best_scores, top.values], axis=1)  # [B, 2k]
    index = tf.concat([best_index, top.indices + start], axis=1)
    merged = tf.math.top_k(scores, k=k)
    return i + 1, merged.values, tf.gather(index, merged.indices, batch_dims=1)

  _, scores, index = tf.while_loop(
      lambda i, *_: i < num_blocks, body,
      (tf.constant(0), tf.fill([b, k], neg_inf), tf.fill([b, k], -1)),
      parallel_iterations=1)  # one score block in memory at a time
  return scores, index


def _mask_columns(scores: tf.Tensor, columns: tf.Tensor) -> tf.Tensor:
  """`scores [B, W]` with `scores[b, columns[b, l]] = -inf` (columns outside [0, W) ignored).

  A scatter of B * L entries, so a long exclusion list never materialises a
  `[B, W, L]` comparison.
  """
  hit = (columns >= 0) & (columns < tf.shape(scores)[1])  # [B, L]
  where = tf.where(hit)  # int64 [H, 2] (row, slot)
  position = tf.stack([where[:, 0], tf.cast(tf.gather_nd(columns, where), tf.int64)], axis=1)
  return tf.tensor_scatter_nd_update(
      scores, position, tf.fill(tf.shape(where)[:1], tf.constant(-np.inf, scores.dtype)))


def drop_excluded(scores: tf.Tensor, index: tf.Tensor, exclude: tf.Tensor, k: int
                  ) -> tuple[tf.Tensor, tf.Tensor]:
  """The first k search results of each query that are not excluded.

  Args:
    scores: float32 `[B, C]` descending and index int32 `[B, C]`, search
      results with C >= k + (excluded rows among them) for a full answer.
    exclude: int32 `[B]` (the query item) or `[B, L]` rows to drop per
      query; -1 = none.
    k: results kept.

  Returns:
    (scores `[B, k]`, index `[B, k]`), order kept; score -inf and index -1
    where fewer than k results remain.
  """
  if exclude.shape.rank == 1:
    exclude = exclude[:, None]
  b = tf.shape(index)[0]
  # Membership by binary search in the sorted exclusion rows ([B, C log L],
  # never [B, C, L]); the extra -1 column keeps every row non-empty.
  ordered = tf.sort(tf.concat([exclude, tf.fill([b, 1], -1)], axis=1), axis=1)
  slot = tf.minimum(tf.searchsorted(ordered, index, side="left"), tf.shape(ordered)[1] - 1)
  excluded = tf.equal(tf.gather(ordered, slot, batch_dims=1), index)
  neg_inf = tf.constant(-np.inf, tf.float32)
  # Padding columns guarantee k candidates, whatever the search returned.
  scores = tf.concat([tf.where(excluded, neg_inf, scores), tf.fill([b, k], neg_inf)], axis=1)
  index = tf.concat([index, tf.fill([b, k], -1)], axis=1)
  top = tf.math.top_k(scores, k=k)  # equal scores keep their order
  kept = tf.gather(index, top.indices, batch_dims=1)
  return top.values, tf.where(tf.equal(top.values, neg_inf), -1, kept)


def scann_search(state: Any, queries: tf.Tensor, count: tf.Tensor, pre_reorder: tf.Tensor,
                 leaves: int | None = None) -> tuple[tf.Tensor, tf.Tensor]:
  """`scann_index.search` of `count` neighbors re-scoring `pre_reorder` candidates.

  A reordering searcher (ah, tree_ah) returns at most `pre_reorder` results,
  by default its build-time `reorder_num_neighbors`, which a long exclusion
  list can exceed. `leaves`: partitions searched (None: the index's).
  """
  return scann_index.search(state, queries, count, pre_reorder=pre_reorder, leaves=leaves)
