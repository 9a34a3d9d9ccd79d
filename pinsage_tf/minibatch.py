"""The minibatch computation graph: the contract between producer and model.

PinSage's producer (`pinsage_tf.pipeline`) turns a batch of (query, positive)
pairs into the *computation graph* of the batch; the model
(`pinsage_tf.model`) consumes exactly this structure. Nodes are re-indexed
level by level so that every node's features are gathered once and every
layer is computed once per node per batch:

* level K (the last layer's outputs) holds the unique target items: queries,
  positives (of item pairs and of pivot pairs), the shared negatives and the
  hard negatives;
* level K-1 holds the unique items of level K plus all their importance
  neighbors, plus the importance neighbors of the batch's pivots (a pivot is
  not an item: it has no features and no row of its own at any level; the
  last layer embeds it from its neighbors' level-(K-1) rows);
* level k-1 (k < K) holds the unique items of level k plus all their
  importance neighbors; level 0 is where input features are gathered.

Leakage. A training pair must not be answerable by looking at the query's
own neighborhood when an unseen test pair never is: in the last hop, an item
pair's positive is dropped from its query's neighbors and the query from the
positive's (weight 0), and a pivot pair's positive from the pivot's
neighbors. (Deeper hops are left as they are.)

Shapes are fixed for a given `(batch config, graph)`, so a `tf.function` or a
replica never retraces: each level `k` is padded to `U_k`, an upper bound
(`min(num_targets * (T + 1) ** (K - k), num_items)`). The first
`num_nodes[k]` rows of a level are its real nodes; padding rows come after
them, point at item 0 with zero weights and are never referenced by a real
node, so a consumer may slice every level to `num_nodes[k]` rows (the model
does, inside its traced function) and skip the padding.

Shapes below: `B` item pairs and `Bp` pivot pairs per (replica) batch (either
may be 0), `Nn` shared negatives, `H` the maximum number of hard negatives per
query, `T` neighbors per item, `Tp` neighbors per pivot, `U_k` the padded
size of level k, `D` dense feature width, `L_f` the padded length of sparse
feature f.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf


class NodeInputs(NamedTuple):
  """Input features of the level-0 nodes.

  Attributes:
    item: int32 `[U_0]` item row index of each node (for id embeddings).
    dense: float32 `[U_0, D]` dense features (D may be 0).
    log_degree: float32 `[U_0]`.
    sparse: one int32 `[U_0, L_f]` tensor per sparse feature, in the graph's
      feature order; ids of the feature's vocabulary, -1 on padding.
  """

  item: tf.Tensor
  dense: tf.Tensor
  log_degree: tf.Tensor
  sparse: tuple[tf.Tensor, ...]


class Hop(NamedTuple):
  """How layer k computes the level-k nodes from level-(k-1) representations.

  Attributes:
    self_index: int32 `[U_k]` position of each level-k node in level k-1.
    neighbor_index: int32 `[U_k, T]` positions of its importance neighbors in
      level k-1 (0 where the weight is 0).
    neighbor_weight: float32 `[U_k, T]` importance weights (L1-normalised
      visit counts; 0 on padding; an isolated item's row is all 0).
  """

  self_index: tf.Tensor
  neighbor_index: tf.Tensor
  neighbor_weight: tf.Tensor


class Minibatch(NamedTuple):
  """One training minibatch as produced by the pipeline.

  Attributes:
    inputs: `NodeInputs` of level 0.
    hops: K `Hop`s; `hops[0]` maps level 0 -> level 1, `hops[K-1]` level K-1 -> K.
    query: int32 `[B]` positions of the query items in level K.
    positive: int32 `[B]` positions of the positive items in level K.
    negative: int32 `[Nn]` positions of the negatives shared by the batch.
    hard_negative: int32 `[B, H]` positions of each query's hard negatives.
    hard_mask: float32 `[B, H]` 1 for the hard negatives in use this epoch.
    num_nodes: int32 `[K + 1]` real (unpadded) size of each level.
    pivot_positive: int32 `[Bp]` positions of the pivot pairs' positive
      items in level K.
    pivot_neighbor_index: int32 `[Bp, Tp]` positions of each pivot's
      importance neighbors in level K-1.
    pivot_neighbor_weight: float32 `[Bp, Tp]` their importance weights (0 on
      padding and on the pair's own positive).
  """

  inputs: NodeInputs
  hops: tuple[Hop, ...]
  query: tf.Tensor
  positive: tf.Tensor
  negative: tf.Tensor
  hard_negative: tf.Tensor
  hard_mask: tf.Tensor
  num_nodes: tf.Tensor
  pivot_positive: tf.Tensor
  pivot_neighbor_index: tf.Tensor
  pivot_neighbor_weight: tf.Tensor


def target_items(batch: Minibatch, positions: tf.Tensor) -> tf.Tensor:
  """Item row indices of level-K `positions` (e.g. `batch.negative`).

  Follows each node's `self_index` down to level 0, whose `inputs.item` names
  the item. Any shape of int32 positions; the result has the same shape.
  """
  index = positions
  for hop in reversed(batch.hops):
    index = tf.gather(hop.self_index, index)
  return tf.gather(batch.inputs.item, index)
