"""Seeded hold-back of graph edges for the refresh benchmark (`bench_refresh.py`).

From a prepared graph (e.g. Gowalla via `data.lightgcn.load_lightgcn`), draws
nested sets of held-back edges: the set for a smaller fraction is a prefix of
the set for a larger one. A share of each set (`new_item_share` of its edges)
consists of ALL edges of randomly drawn items ("new items"): the base graph
without those edges does not contain these items at all, so a refresh has to
introduce them. The rest are uniformly drawn edges of the remaining items.

The base graph of fraction f keeps every item except the new items of f. Its
row order is fixed for all fractions: items that are never new (ascending
ids), then the new items of the largest fraction not new at f, in draw order.
So the base graph of the largest fraction is a row-prefix of every other base
graph, and a model trained on it indexes the same items in all of them.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pinsage_tf import graph as graph_lib


@dataclasses.dataclass(frozen=True)
class HeldBack:
  """Held-back edges (item, pivot rows of the full graph) of one fraction.

  Attributes:
    fraction: share of the full graph's edges held back.
    items, pivots: int64 `[H]` full-graph rows of the held-back edges.
    new_items: int64 `[Q]` full-graph rows of the items all of whose edges
      are held back, in draw order.
  """

  fraction: float
  items: np.ndarray
  pivots: np.ndarray
  new_items: np.ndarray


def draw(graph: graph_lib.Graph, fractions, *, new_item_share: float = 0.2, seed: int = 0
         ) -> list[HeldBack]:
  """Nested held-back edge sets, one per fraction (ascending)."""
  fractions = sorted(float(f) for f in fractions)
  rng = np.random.default_rng(seed)
  ip = graph.item_to_pivot
  edge_item = np.repeat(np.arange(graph.num_items), ip.degrees())
  edge_pivot = ip.indices.astype(np.int64)
  num_edges = edge_item.size
  item_order = rng.permutation(np.flatnonzero(ip.degrees() > 0))
  edge_order = rng.permutation(num_edges)
  degree = ip.degrees()
  out = []
  taken_items = 0
  chosen_new: list[int] = []
  for fraction in fractions:
    target = int(round(fraction * num_edges))
    new_target = int(round(new_item_share * target))
    new_edges = int(degree[chosen_new].sum()) if chosen_new else 0
    while new_edges < new_target and taken_items < item_order.size:
      item = int(item_order[taken_items])
      taken_items += 1
      chosen_new.append(item)
      new_edges += int(degree[item])
    is_new = np.zeros(graph.num_items, bool)
    is_new[chosen_new] = True
    new_mask = is_new[edge_item]
    # Uniform edges of the other items: a prefix of one fixed permutation, so sets nest.
    others = edge_order[~new_mask[edge_order]]
    others = others[:max(0, target - new_edges)]
    keep = np.concatenate([np.flatnonzero(new_mask), np.sort(others)])
    out.append(HeldBack(fraction, edge_item[keep], edge_pivot[keep],
                        np.asarray(chosen_new, np.int64)))
  for small, large in zip(out, out[1:]):
    assert set(small.new_items.tolist()) <= set(large.new_items.tolist())
  return out


def base_order(num_items: int, sets: list[HeldBack], held: HeldBack) -> np.ndarray:
  """Full-graph rows of the base graph of `held`, in base-graph row order."""
  largest = sets[-1].new_items
  never = np.setdiff1d(np.arange(num_items), largest)
  own = set(held.new_items.tolist())
  later = np.asarray([i for i in largest.tolist() if i not in own], np.int64)
  return np.concatenate([never, later]).astype(np.int64)


def base_graph(graph: graph_lib.Graph, order: np.ndarray, held: HeldBack,
               eval_rows: int | None = None) -> graph_lib.Graph:
  """The graph without the held-back edges, items restricted to `order` (in that order).

  Pairs and held-out interactions keep only items among the first `eval_rows`
  rows (default: all of `order`), so a graph with more items can share the
  evaluation data of a base graph.
  """
  row_of = np.full(graph.num_items, -1, np.int64)
  row_of[order] = np.arange(order.size)
  eval_row_of = row_of.copy()
  if eval_rows is not None:
    eval_row_of[eval_row_of >= eval_rows] = -1
  ip = graph.item_to_pivot
  edge_item = np.repeat(np.arange(graph.num_items), ip.degrees())
  edge_pivot = ip.indices.astype(np.int64)
  m = graph.num_pivots
  held_keys = np.asarray(held.items) * m + np.asarray(held.pivots)
  keep = ~np.isin(edge_item * m + edge_pivot, held_keys)
  items, pivots = row_of[edge_item[keep]], edge_pivot[keep]
  assert (items >= 0).all()

  def remap_csr(csr: graph_lib.CSR) -> graph_lib.CSR:
    rows = np.repeat(np.arange(csr.num_rows), csr.degrees())
    cols = eval_row_of[csr.indices]
    ok = cols >= 0
    return graph_lib.CSR.from_pairs(rows[ok], cols[ok], csr.num_rows)

  pairs = graph.pairs
  q, p = eval_row_of[pairs.query], eval_row_of[pairs.positive]
  ok = (q >= 0) & (p >= 0)
  group = None if pairs.group is None else pairs.group[ok]
  new_pairs = graph_lib.ItemPairs(q[ok].astype(np.int32), p[ok].astype(np.int32),
                                  pairs.split[ok], group)
  heldout = graph_lib.HeldOut(validation=remap_csr(graph.heldout.validation),
                              test=remap_csr(graph.heldout.test))
  return graph_lib.build_graph(
      name=graph.name, item_ids=graph.item_ids[order], pivot_ids=graph.pivot_ids,
      edge_items=items, edge_pivots=pivots, pairs=new_pairs, heldout=heldout,
      metadata=dict(graph.metadata))
