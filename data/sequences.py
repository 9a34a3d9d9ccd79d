"""Turning an interaction log into training edges, item pairs and held-out items.

This is the leakage-free protocol shared by the log adapters (`movielens`,
`csv_edges`). Every interaction (pivot, item) carries a *period*
(`Split.TRAIN`, `VALIDATION` or `TEST`), usually from its timestamp and two
global cut-offs:

    period = TRAIN       if t <  validation_cutoff
             VALIDATION  if validation_cutoff <= t < test_cutoff
             TEST        if t >= test_cutoff

`split_log` then derives, from a log sorted by (pivot, time, tie-break):

* graph edges: interactions with `is_edge` in the TRAIN period only, so
  nothing from the held-out periods reaches the graph;
* pivots: only those with at least one training edge (row order = raw pivot
  order), because the user protocol embeds a pivot from its training items;
* item pairs (paper protocol): among `is_engagement` interactions of one pivot,
  each one and the next form (query, positive); the pair's split is the period
  of the *positive*, its group the raw pivot index (the pairs of one user are
  correlated: `pinsage_tf.significance` resamples users, not pairs).
  Self-pairs (same item twice in a row) are dropped.
  With `train_pair_window` w > 1, a TRAIN-period positive is also paired with
  each of the w-1 engagements before its direct predecessor (more training
  pairs from the same pre-cut-off data); validation and test pairs are always
  the consecutive ones, so the evaluation protocol does not change with w;
* held-out items (user protocol): each kept pivot's engagement items in the
  validation / test period that are not among its training-edge items.

Because a training pair's positive lies before the validation cut-off and its
query precedes it, training pairs use only pre-cut-off data.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data.errors import InputError
from pinsage_tf.graph import CSR, HeldOut, ItemPairs, Split


def unique_sorted(values: np.ndarray) -> np.ndarray:
  """Sorted distinct values of a 1-D array (`np.unique` via one sort).

  numpy 2.x's `np.unique` hashes first and is ~50x slower on large shuffled
  integer arrays; a sort and a neighbour comparison is all that is needed.
  """
  values = np.sort(values)
  return values[np.concatenate([[True], values[1:] != values[:-1]])] if values.size else values


@dataclasses.dataclass(frozen=True)
class TimeCutoffs:
  """Global timestamps separating train | validation | test periods."""

  validation: float
  test: float

  def period(self, timestamps: np.ndarray) -> np.ndarray:
    """int8 `[K]` period (a `Split` value) of each timestamp."""
    out = np.full(timestamps.shape, int(Split.TRAIN), dtype=np.int8)
    out[timestamps >= self.validation] = int(Split.VALIDATION)
    out[timestamps >= self.test] = int(Split.TEST)
    return out


def time_cutoffs(timestamps: np.ndarray, val_quantile: float,
                 test_quantile: float) -> TimeCutoffs:
  """Cut-offs at the given quantiles of `timestamps` (actual values, "lower").

  Args:
    timestamps: `[K]` numbers, K >= 1.
    val_quantile: in (0, 1), the share of the log (roughly) before validation.
    test_quantile: in [val_quantile, 1).
  """
  if not 0.0 < val_quantile <= test_quantile < 1.0:
    raise ValueError("need 0 < val_quantile <= test_quantile < 1, got "
                     f"{val_quantile} and {test_quantile}.")
  t_val, t_test = np.quantile(timestamps, [val_quantile, test_quantile], method="lower")
  return TimeCutoffs(validation=t_val.item(), test=t_test.item())


@dataclasses.dataclass(frozen=True)
class LogSplit:
  """What `split_log` derives from a log.

  Attributes:
    pivot_rows: int64 `[M]` raw pivot index of each kept pivot (sorted).
    edge_items: int64 `[E]` item of each training edge.
    edge_pivots: int64 `[E]` kept-pivot row of each training edge.
    pairs: the (query, positive, split) item pairs.
    heldout: per kept pivot, validation / test items.
    dropped_heldout: held-out engagements of pivots without training edges.
  """

  pivot_rows: np.ndarray
  edge_items: np.ndarray
  edge_pivots: np.ndarray
  pairs: ItemPairs
  heldout: HeldOut
  dropped_heldout: int


def split_log(*, source: str, pivot: np.ndarray, item: np.ndarray, period: np.ndarray,
              is_edge: np.ndarray, is_engagement: np.ndarray, num_items: int,
              train_pair_window: int = 1) -> LogSplit:
  """Applies the protocol of the module docstring.

  Args:
    source: file name used in error messages.
    pivot: int64 `[K]` raw pivot index, non-decreasing (log sorted by pivot,
      then time, then a deterministic tie-break).
    item: int64 `[K]` item row of each interaction.
    period: int8 `[K]` `Split` value of each interaction.
    is_edge: bool `[K]` interaction may become a graph edge (if TRAIN period).
    is_engagement: bool `[K]` interaction counts for pairs and held-out items.
    num_items: N, the item count.
    train_pair_window: w >= 1; training pairs link each engagement to the
      w engagements before it (1 = consecutive only, like held-out pairs).

  Raises:
    InputError: no training edge, or the validation or test split would have
      no item pair.
  """
  if train_pair_window < 1:
    raise ValueError(f"train_pair_window must be >= 1, got {train_pair_window}.")
  if pivot.size and np.any(np.diff(pivot) < 0):
    raise ValueError("split_log needs the log sorted by pivot.")
  if pivot.size and not 0 <= pivot[0] <= pivot[-1] <= np.iinfo(np.int32).max:
    raise ValueError("split_log needs raw pivot indices in [0, 2**31).")
  train_edge = is_edge & (period == int(Split.TRAIN))
  if not np.any(train_edge):
    raise InputError(source, None, "no interaction falls before the validation cut-off, so "
                     "the training graph would be empty; raise --val_quantile.")
  pivot_rows = unique_sorted(pivot[train_edge])
  row_of = np.full(int(pivot.max()) + 1, -1, dtype=np.int64)
  row_of[pivot_rows] = np.arange(pivot_rows.shape[0])
  edge_items = item[train_edge]
  edge_pivots = row_of[pivot[train_edge]]

  eng = np.flatnonzero(is_engagement)
  prev, cur = eng[:-1], eng[1:]
  linked = (pivot[prev] == pivot[cur]) & (item[prev] != item[cur])
  queries, positives = [prev[linked]], [cur[linked]]
  for gap in range(2, train_pair_window + 1):
    prev, cur = eng[:-gap], eng[gap:]
    linked = ((pivot[prev] == pivot[cur]) & (item[prev] != item[cur])
              & (period[cur] == int(Split.TRAIN)))
    queries.append(prev[linked])
    positives.append(cur[linked])
  query, positive = np.concatenate(queries), np.concatenate(positives)
  pairs = ItemPairs(query=item[query].astype(np.int32), positive=item[positive].astype(np.int32),
                    split=period[positive].astype(np.int8),
                    group=pivot[positive].astype(np.int32))
  for split, hint in ((Split.VALIDATION, "lower --val_quantile or raise --test_quantile"),
                      (Split.TEST, "lower --test_quantile")):
    if pairs.count(split) == 0:
      raise InputError(source, None, f"the {split.name.lower()} split would have no item "
                       f"pair (no pivot engages twice in a row there); {hint}.")

  width = np.int64(num_items)
  train_keys = unique_sorted(pivot[train_edge] * width + item[train_edge])
  held = is_engagement & (period != int(Split.TRAIN))
  held &= ~np.isin(pivot * width + item, train_keys)
  kept = held & (row_of[pivot] >= 0)
  num_rows = pivot_rows.shape[0]
  heldout = HeldOut(*(
      CSR.from_pairs(row_of[pivot[kept & (period == int(s))]],
                     item[kept & (period == int(s))], num_rows)
      for s in (Split.VALIDATION, Split.TEST)))
  return LogSplit(pivot_rows=pivot_rows, edge_items=edge_items, edge_pivots=edge_pivots,
                  pairs=pairs, heldout=heldout,
                  dropped_heldout=int(np.count_nonzero(held & ~kept)))
