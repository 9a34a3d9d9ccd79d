"""Item-item scorers: learned embeddings and the PinSage paper's baselines.

Every method is an `ItemScorer`: given query items it returns dense score
rows over all N items, so the evaluator (`pinsage_tf.evaluation`) treats
learned embeddings and baselines identically and scores them exactly.

    score(items [Q])                 -> float32 [Q, N]  item-to-item scores
    score_sets(sets: CSR [S rows])   -> float32 [S, N]  one row per item set
                                        (a user's training items): "mean",
                                        "max" or "logsumexp" of the
                                        item-to-item scores
    score_users(users [S], sets)     -> float32 [S, N]  scores for pivots
                                        (users) with those item sets; by
                                        default `score_sets(sets)`

Callers bound memory by choosing Q (and S) so that `Q * N` fits their
budget; scorers bound their own intermediates (`max_block_elements`).

Methods:

* `EmbeddingScorer`: inner product of (L2-normalised) embeddings = cosine.
  "mean" over a set is the inner product with the set's mean vector.
* `PivotScorer`: an `EmbeddingScorer` whose users are scored by their own
  pivot embeddings (`PinSageModel.pivot_hidden`): `z_u . z_i + b_i`, the
  objective the pivot pairs train.
* `PopularityScorer`: score(item) = its training degree, the same list for
  every query ("most popular").
* `ItemKNNScorer`: cosine similarity of the items' rows of the item x pivot
  incidence matrix, `|P(q) ∩ P(i)| / sqrt(|P(q)| |P(i)|)` (item-based
  co-occurrence kNN without neighborhood truncation), computed as blocked
  sparse x sparse products in numpy.
* `LinearFilterScorer`: the parameter-free linear filter of the graph
  filtering literature: S = R~^T R~ with R~ = D_P^-1/2 R D_I^-1/2 (R the
  pivot x item incidence), i.e. `sum over shared pivots p of 1 / deg(p)`
  divided by `sqrt(deg(q) deg(i))`; a user's "mean" score is `r_u S` up to
  a constant, the filter's user score.
* `PixieScorer`: Pixie-style random walks with restart from the query (or,
  for a set, multi-query walks whose walkers start at the set's items): each
  step goes item -> random pivot -> random item, the query is re-entered with
  probability `restart_prob` before each step, and the score is the visit
  count. Monte-Carlo with counter-based randomness: a query's scores depend only
  on the seed and the query (not on blocks or call order).
* `FeatureScorer`: content-only similarity (the paper's visual / annotation
  baselines): the mean over feature groups of the per-group cosine, groups
  being the standardised dense features and each sparse feature
  (TF-IDF for hashed text, multi-hot for categorical fields). Needs features.
"""

from __future__ import annotations

import abc
import dataclasses

import numpy as np

from pinsage_tf.graph import CSR, Graph
from pinsage_tf import retrieval_exact
from pinsage_tf.retrieval_exact import DEFAULT_MAX_BLOCK_ELEMENTS

SET_AGGREGATIONS = ("mean", "max", "logsumexp")
# Temperature of the "logsumexp" set aggregation (for cosine scores).
DEFAULT_SET_TEMPERATURE = 0.1
BASELINES = ("popularity", "itemknn", "linear_filter", "pixie", "features")
DEFAULT_PIXIE_STEPS = 10_000
DEFAULT_PIXIE_RESTART_PROB = 0.5


def segment_means(values: np.ndarray, sets: CSR) -> np.ndarray:
  """float32 `[S, d]`: mean of `values [T, d]` over each set's rows.

  `values` holds one row per entry of `sets.indices` (in order); empty sets
  get zeros. Prefix sums in float64 keep the means accurate.
  """
  values = np.asarray(values, dtype=np.float64)
  prefix = np.zeros((values.shape[0] + 1, values.shape[1]), dtype=np.float64)
  np.cumsum(values, axis=0, out=prefix[1:])
  offsets = np.asarray(sets.indptr, np.int64) - int(sets.indptr[0])
  sums = prefix[offsets[1:]] - prefix[offsets[:-1]]
  return (sums / np.maximum(np.diff(offsets), 1)[:, None]).astype(np.float32)


def singleton_sets(items: np.ndarray) -> CSR:
  """A CSR whose row q holds just `items[q]`."""
  items = np.asarray(items, dtype=np.int32).reshape(-1)
  return CSR(indptr=np.arange(items.shape[0] + 1, dtype=np.int64), indices=items)


class ItemScorer(abc.ABC):
  """Scores all N items against query items (see module docstring)."""

  def __init__(self, name: str, num_items: int,
               max_block_elements: int = DEFAULT_MAX_BLOCK_ELEMENTS):
    if num_items < 1:
      raise ValueError(f"num_items must be >= 1, got {num_items}.")
    self.name = name
    self.num_items = int(num_items)
    self.max_block_elements = int(max_block_elements)

  def _check_items(self, items: np.ndarray) -> np.ndarray:
    items = np.asarray(items, dtype=np.int64).reshape(-1)
    if items.size and (items.min() < 0 or items.max() >= self.num_items):
      raise ValueError(f"{self.name}: query item ids must lie in [0, {self.num_items}).")
    return items

  @abc.abstractmethod
  def score(self, items: np.ndarray) -> np.ndarray:
    """float32 `[Q, N]` scores of every item for each query item `items [Q]`.

    Returns a fresh writable array (callers mask it in place).
    """

  def score_sets(self, sets: CSR, how: str = "mean",
                 temperature: float = DEFAULT_SET_TEMPERATURE) -> np.ndarray:
    """float32 `[S, N]`: per set, an aggregate over its items of `score`.

    `how` is "mean", "max", or "logsumexp": `temperature * log sum_j
    exp(s_j / temperature)` over the set's items j, a soft maximum that lets
    a user with several interests (clusters of items) rank highly what is
    close to any of them, not only what is close to their average. It tends
    to "max" as `temperature` -> 0; for unit-norm embeddings it ranks like
    a kernel density estimate over the user's items.

    Empty sets get all-zero rows. This generic version scores the sets' items
    in chunks of at most `max_block_elements / N` rows.
    """
    if how not in SET_AGGREGATIONS:
      raise ValueError(f"how must be one of {SET_AGGREGATIONS}, got {how!r}.")
    if how == "logsumexp" and not temperature > 0:
      raise ValueError(f"temperature must be > 0, got {temperature!r}.")
    num_sets, n = sets.num_rows, self.num_items
    sizes = sets.degrees()
    items = np.asarray(sets.indices[sets.indptr[0]:sets.indptr[-1]], dtype=np.int64)
    owner = np.repeat(np.arange(num_sets), sizes)
    fill = 0.0 if how == "mean" else -np.inf
    out = np.full((num_sets, n), fill, dtype=np.float32)
    chunk = max(1, self.max_block_elements // n)
    for start in range(0, items.shape[0], chunk):
      rows = self.score(items[start:start + chunk])
      own = owner[start:start + chunk]
      # `own` is sorted: reduce each run of one set's rows, then merge it.
      run_starts = np.flatnonzero(np.r_[True, own[1:] != own[:-1]])
      targets = own[run_starts]
      if how == "mean":
        out[targets] += np.add.reduceat(rows, run_starts, axis=0)
      elif how == "max":
        out[targets] = np.maximum(out[targets], np.maximum.reduceat(rows, run_starts, axis=0))
      else:
        rows /= np.float32(temperature)
        peak = np.maximum.reduceat(rows, run_starts, axis=0)
        run_of_row = np.cumsum(np.r_[False, own[1:] != own[:-1]])
        rows -= peak[run_of_row]
        np.exp(rows, out=rows)
        lse = peak + np.log(np.add.reduceat(rows, run_starts, axis=0))
        out[targets] = np.logaddexp(out[targets], lse)
    if how == "mean":
      out /= np.maximum(sizes, 1)[:, None].astype(np.float32)
    else:
      if how == "logsumexp":
        out *= np.float32(temperature)
      out[sizes == 0] = 0.0
    return out

  def score_users(self, users: np.ndarray, sets: CSR, how: str = "mean",
                  temperature: float = DEFAULT_SET_TEMPERATURE) -> np.ndarray:
    """float32 `[S, N]` scores for the pivots `users [S]`, whose item
    histories are the rows of `sets`. Item-item methods aggregate over the
    history (`score_sets`); a method with its own user vectors overrides this."""
    del users  # Item-item scorers only look at the histories.
    return self.score_sets(sets, how, temperature)


class EmbeddingScorer(ItemScorer):
  """Inner products of item embeddings `[N, d]` (cosine when L2-normalised),
  plus the candidate item's bias `b_i` when `bias` `[N]` is given (a model
  with `PinSageConfig.item_bias`): score(q, i) = e_q . e_i + b_i. A set's
  mean or `logsumexp` score then carries the same `b_i`."""

  def __init__(self, vectors: np.ndarray, name: str = "embeddings",
               max_block_elements: int = DEFAULT_MAX_BLOCK_ELEMENTS,
               bias: np.ndarray | None = None):
    vectors = np.asarray(vectors)
    if vectors.ndim != 2:
      raise ValueError(f"vectors must be [N, d], got {vectors.shape}.")
    super().__init__(name, vectors.shape[0], max_block_elements)
    self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    self.bias = None
    if bias is not None:
      bias = np.asarray(bias, dtype=np.float32)
      if bias.shape != (vectors.shape[0],):
        raise ValueError(f"bias must have shape [{vectors.shape[0]}], got {bias.shape}.")
      self.bias = bias

  def score(self, items: np.ndarray) -> np.ndarray:
    items = self._check_items(items)
    return self.score_vectors(self.vectors[items])

  def index_vectors(self) -> np.ndarray:
    """The items as one maximum-inner-product index: `[N, d]`, or `[e_i, b_i]`
    `[N, d + 1]` with a bias (pair with `query_vectors`)."""
    return retrieval_exact.biased_corpus(self.vectors, self.bias)

  def query_vectors(self, queries: np.ndarray) -> np.ndarray:
    """`queries [Q, d]` for `index_vectors`: unchanged, or `[q, 1]` with a bias,
    so that `query . index_i` = `score_vectors`' scores."""
    return retrieval_exact.biased_queries(queries, self.bias)

  def score_vectors(self, queries: np.ndarray) -> np.ndarray:
    """float32 `[Q, N]` inner products of `queries [Q, d]` with every item
    (plus the item biases, if any)."""
    scores = np.asarray(queries, dtype=np.float32) @ self.vectors.T
    if self.bias is not None:
      scores += self.bias[None, :]
    return scores

  def set_vectors(self, sets: CSR) -> np.ndarray:
    """float32 `[S, d]` mean embedding of each set (zeros for empty sets)."""
    items = np.asarray(sets.indices[sets.indptr[0]:sets.indptr[-1]], dtype=np.int64)
    return segment_means(self.vectors[items], sets)

  def score_sets(self, sets: CSR, how: str = "mean",
                 temperature: float = DEFAULT_SET_TEMPERATURE) -> np.ndarray:
    if how == "mean":
      # mean_j <e_j, e_i> = <mean_j e_j, e_i>: one [S, d] x [d, N] product.
      return self.score_vectors(self.set_vectors(sets))
    return super().score_sets(sets, how, temperature)


class PivotScorer(EmbeddingScorer):
  """Item embeddings plus one embedding per pivot: a user u ranks item i by
  `z_u . z_i + b_i`.

  `score` stays item-to-item (the item embeddings); `score_users` reads the
  users' rows of `pivot_vectors [M, d]`, embedded from the histories the
  evaluation assumes (the caller picks the matching set, e.g. the graph
  items for validation, plus the validation items for test).
  """

  def __init__(self, vectors: np.ndarray, pivot_vectors: np.ndarray, name: str = "pivots",
               max_block_elements: int = DEFAULT_MAX_BLOCK_ELEMENTS,
               bias: np.ndarray | None = None):
    super().__init__(vectors, name, max_block_elements, bias)
    pivot_vectors = np.asarray(pivot_vectors)
    if pivot_vectors.ndim != 2 or pivot_vectors.shape[1] != self.vectors.shape[1]:
      raise ValueError(f"pivot_vectors must be [M, {self.vectors.shape[1]}], got "
                       f"{pivot_vectors.shape}.")
    self.pivot_vectors = pivot_vectors

  def score_users(self, users: np.ndarray, sets: CSR, how: str = "mean",
                  temperature: float = DEFAULT_SET_TEMPERATURE) -> np.ndarray:
    del sets, how, temperature  # The pivot embedding already summarises the history.
    users = np.asarray(users, np.int64).reshape(-1)
    if users.size and (users.min() < 0 or users.max() >= self.pivot_vectors.shape[0]):
      raise ValueError(f"{self.name}: user ids must lie in [0, {self.pivot_vectors.shape[0]}).")
    return self.score_vectors(np.asarray(self.pivot_vectors[users], np.float32))


class PopularityScorer(ItemScorer):
  """Most popular: every query gets the items ordered by training degree."""

  def __init__(self, graph: Graph, name: str = "popularity"):
    super().__init__(name, graph.num_items)
    self.degrees = graph.item_degrees().astype(np.float32)

  def score(self, items: np.ndarray) -> np.ndarray:
    items = self._check_items(items)
    return np.repeat(self.degrees[None, :], items.shape[0], axis=0)

  def score_sets(self, sets: CSR, how: str = "mean",
                 temperature: float = DEFAULT_SET_TEMPERATURE) -> np.ndarray:
    del temperature  # Every aggregation of a constant row is that row.
    if how not in SET_AGGREGATIONS:
      raise ValueError(f"how must be one of {SET_AGGREGATIONS}, got {how!r}.")
    return np.repeat(self.degrees[None, :], sets.num_rows, axis=0)


@dataclasses.dataclass(frozen=True)
class WeightedCSR:
  """A sparse float matrix: row r = (indices, data)[indptr[r]:indptr[r + 1]]."""

  indptr: np.ndarray
  indices: np.ndarray
  data: np.ndarray
  num_cols: int

  @property
  def num_rows(self) -> int:
    return int(self.indptr.shape[0]) - 1

  @classmethod
  def from_triplets(cls, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray,
                    num_rows: int, num_cols: int) -> "WeightedCSR":
    """Sorted by (row, col); duplicate (row, col) entries are summed."""
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    keys, inverse = np.unique(rows * num_cols + cols, return_inverse=True)
    data = np.bincount(inverse.reshape(-1), weights=np.asarray(vals, np.float64),
                       minlength=keys.shape[0])
    indptr = np.zeros(num_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(keys // num_cols, minlength=num_rows), out=indptr[1:])
    return cls(indptr, (keys % num_cols).astype(np.int32), data.astype(np.float32), num_cols)

  def transpose(self) -> "WeightedCSR":
    rows = np.repeat(np.arange(self.num_rows, dtype=np.int64), np.diff(self.indptr))
    return WeightedCSR.from_triplets(self.indices, rows, self.data, self.num_cols, self.num_rows)

  def row_norms(self) -> np.ndarray:
    sq = np.zeros(self.num_rows, dtype=np.float64)
    rows = np.repeat(np.arange(self.num_rows), np.diff(self.indptr))
    np.add.at(sq, rows, self.data.astype(np.float64) ** 2)
    return np.sqrt(sq)

  def scale_rows(self, factors: np.ndarray) -> "WeightedCSR":
    per_entry = np.repeat(np.asarray(factors, np.float64), np.diff(self.indptr))
    return WeightedCSR(self.indptr, self.indices, (self.data * per_entry).astype(np.float32),
                       self.num_cols)

  def set_rows(self, sets: CSR) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Triplets (set, col, value) of the *mean* of each set's rows."""
    sizes = sets.degrees()
    items = np.asarray(sets.indices[sets.indptr[0]:sets.indptr[-1]], dtype=np.int64)
    owner = np.repeat(np.arange(sets.num_rows, dtype=np.int64), sizes)
    lengths = self.indptr[items + 1] - self.indptr[items]
    pos = _ranges(self.indptr[items], lengths)
    set_of = np.repeat(owner, lengths)
    weight = np.repeat(1.0 / np.maximum(sizes[owner], 1), lengths)
    return set_of, self.indices[pos].astype(np.int64), self.data[pos] * weight


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """Concatenation of `arange(s, s + l)` for every (s, l), int64."""
  lengths = np.asarray(lengths, dtype=np.int64)
  total = int(lengths.sum())
  offsets = np.cumsum(lengths) - lengths
  return np.repeat(np.asarray(starts, np.int64) - offsets, lengths) + np.arange(total, dtype=np.int64)


def _combine(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, num_rows: int,
             num_cols: int, max_entries: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Sums duplicate (row, col) triplets (a set's items share many pivots).

  Expanding each distinct (row, col) once instead of once per duplicate is
  what keeps set queries (users with many items) affordable.
  """
  rows = np.asarray(rows, dtype=np.int64)
  cols = np.asarray(cols, dtype=np.int64)
  if rows.size == 0:
    return rows, cols, np.asarray(vals, np.float32)
  if num_rows * num_cols <= max(max_entries, 1 << 20):
    dense = np.zeros(num_rows * num_cols, dtype=np.float64)
    np.add.at(dense, rows * num_cols + cols, vals)
    keys = np.flatnonzero(dense)
    summed = dense[keys]
  else:
    keys, inverse = np.unique(rows * num_cols + cols, return_inverse=True)
    summed = np.bincount(inverse.reshape(-1), weights=vals, minlength=keys.shape[0])
  return keys // num_cols, keys % num_cols, summed.astype(np.float32)


def sparse_product_rows(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, num_rows: int,
                        right: WeightedCSR, max_entries: int) -> np.ndarray:
  """Dense `[num_rows, right.num_cols]` = (sparse left given as triplets) @ right.

  The expansion of each left entry into the matching right row is processed
  in chunks of at most `max_entries` products (plus one right row), so memory
  stays bounded however dense the co-occurrence gets.
  """
  rows, cols, vals = _combine(rows, cols, vals, num_rows, right.num_rows, max_entries)
  out = np.zeros((num_rows, right.num_cols), dtype=np.float32)
  flat = out.reshape(-1)
  lengths = right.indptr[cols + 1] - right.indptr[cols]
  cum = np.cumsum(lengths)
  start, total = 0, cols.shape[0]
  while start < total:
    base = cum[start - 1] if start else 0
    stop = int(np.searchsorted(cum, base + max(1, max_entries), side="right"))
    stop = max(stop, start + 1)
    ln = lengths[start:stop]
    pos = _ranges(right.indptr[cols[start:stop]], ln)
    keys = np.repeat(np.asarray(rows[start:stop], np.int64) * right.num_cols, ln) + right.indices[pos]
    np.add.at(flat, keys, np.repeat(np.asarray(vals[start:stop], np.float32), ln) * right.data[pos])
    start = stop
  return out


def _inverse_sqrt(degrees: np.ndarray) -> np.ndarray:
  """float64 1 / sqrt(d), 0 where d = 0."""
  d = np.asarray(degrees, np.float64)
  return np.where(d > 0, 1.0 / np.sqrt(np.maximum(d, 1)), 0.0)


class ItemKNNScorer(ItemScorer):
  """Cosine similarity of item rows of the item x pivot incidence matrix."""

  def __init__(self, graph: Graph, name: str = "itemknn",
               max_block_elements: int = DEFAULT_MAX_BLOCK_ELEMENTS):
    super().__init__(name, graph.num_items, max_block_elements)
    ip = graph.item_to_pivot
    indices = np.asarray(ip.indices, np.int32)
    # X[i, p] = w(p) / sqrt(deg i): with w = 1 unit rows, so X X^T is the cosine.
    data = np.repeat(_inverse_sqrt(graph.item_degrees()), np.diff(ip.indptr))
    pivot_weight = self._pivot_weights(graph)
    if pivot_weight is not None:
      data = data * pivot_weight[indices]
    self._x = WeightedCSR(np.asarray(ip.indptr, np.int64), indices, data.astype(np.float32),
                          graph.num_pivots)
    self._xt = self._x.transpose()

  def _pivot_weights(self, graph: Graph) -> np.ndarray | None:
    """float64 `[M]` weight of each shared pivot's contribution; None = 1."""
    del graph
    return None

  def score(self, items: np.ndarray) -> np.ndarray:
    items = self._check_items(items)
    return self.score_sets(singleton_sets(items), "mean")

  def score_sets(self, sets: CSR, how: str = "mean",
                 temperature: float = DEFAULT_SET_TEMPERATURE) -> np.ndarray:
    if how != "mean":
      return super().score_sets(sets, how, temperature)
    rows, cols, vals = self._x.set_rows(sets)
    return sparse_product_rows(rows, cols, vals, sets.num_rows, self._xt, self.max_block_elements)


class LinearFilterScorer(ItemKNNScorer):
  """Item-kNN with each shared pivot weighted by 1 / its degree (module docstring)."""

  def __init__(self, graph: Graph, name: str = "linear_filter",
               max_block_elements: int = DEFAULT_MAX_BLOCK_ELEMENTS):
    super().__init__(graph, name, max_block_elements)

  def _pivot_weights(self, graph: Graph) -> np.ndarray:
    # X[i, p] = deg(i)^-1/2 deg(p)^-1/2: X X^T = R~^T R~.
    return _inverse_sqrt(graph.pivot_degrees())


class FeatureScorer(ItemScorer):
  """Content similarity: mean over feature groups of the group cosine."""

  def __init__(self, graph: Graph, name: str = "features",
               max_block_elements: int = DEFAULT_MAX_BLOCK_ELEMENTS):
    super().__init__(name, graph.num_items, max_block_elements)
    f = graph.features
    n = graph.num_items
    self.groups: list[str] = []
    self._dense = None
    if f.dense_dim:
      dense = np.asarray(f.dense, dtype=np.float64)
      std = dense.std(axis=0)
      keep = std > 0
      if keep.any():
        z = (dense[:, keep] - dense[:, keep].mean(axis=0)) / std[keep]
        norms = np.linalg.norm(z, axis=1, keepdims=True)
        self._dense = (z / np.where(norms > 0, norms, 1.0)).astype(np.float32)
        self.groups.append("dense")
    self._sparse: list[tuple[WeightedCSR, WeightedCSR]] = []
    for s in f.sparse:
      if s.values.nnz == 0:
        continue
      rows = np.repeat(np.arange(n, dtype=np.int64), s.values.degrees())
      x = WeightedCSR.from_triplets(rows, s.values.indices, np.ones(s.values.nnz), n, s.vocab_size)
      if s.kind == "hashed_text":
        # TF-IDF, smooth idf = ln((1 + N) / (1 + df)) + 1 (df = items with the token).
        df = np.bincount(x.indices, minlength=s.vocab_size)
        idf = np.log((1.0 + n) / (1.0 + df)) + 1.0
        x = WeightedCSR(x.indptr, x.indices, (x.data * idf[x.indices]).astype(np.float32), x.num_cols)
      else:
        x = WeightedCSR(x.indptr, x.indices, np.ones_like(x.data), x.num_cols)  # multi-hot
      norms = x.row_norms()
      x = x.scale_rows(np.where(norms > 0, 1.0 / np.maximum(norms, 1e-30), 0.0))
      self._sparse.append((x, x.transpose()))
      self.groups.append(s.name)
    if not self.groups:
      raise ValueError(
          f"graph {graph.name!r} has no usable item features (dense dim {f.dense_dim}, "
          f"{len(f.sparse)} sparse features, all constant or empty); the 'features' baseline "
          "needs content features: drop it from --methods.")

  def score(self, items: np.ndarray) -> np.ndarray:
    items = self._check_items(items)
    return self.score_sets(singleton_sets(items), "mean")

  def score_sets(self, sets: CSR, how: str = "mean",
                 temperature: float = DEFAULT_SET_TEMPERATURE) -> np.ndarray:
    if how != "mean":
      return super().score_sets(sets, how, temperature)
    out = np.zeros((sets.num_rows, self.num_items), dtype=np.float32)
    if self._dense is not None:
      items = np.asarray(sets.indices[sets.indptr[0]:sets.indptr[-1]], dtype=np.int64)
      out += segment_means(self._dense[items], sets) @ self._dense.T
    for x, xt in self._sparse:
      rows, cols, vals = x.set_rows(sets)
      out += sparse_product_rows(rows, cols, vals, sets.num_rows, xt, self.max_block_elements)
    out /= len(self.groups)
    return out


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(x: np.ndarray) -> np.ndarray:
  """SplitMix64 finaliser: a bijective 64-bit hash (wrapping uint64 arithmetic)."""
  z = np.asarray(x, dtype=np.uint64) + _GOLDEN
  z = (z ^ (z >> np.uint64(30))) * _MIX1
  z = (z ^ (z >> np.uint64(27))) * _MIX2
  return z ^ (z >> np.uint64(31))


def _uniform(keys: np.ndarray) -> np.ndarray:
  """float64 in [0, 1) from the top 53 bits of `_splitmix64(keys)`."""
  return (_splitmix64(keys) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


class PixieScorer(ItemScorer):
  """Visit counts of item -> pivot -> item random walks with restart.

  Randomness is counter-based: every draw is a hash of (seed, the query set's
  contents, walker, step, draw), so a query's scores do not depend on the
  other queries of its block, on block sizes or on call order.
  """

  def __init__(self, graph: Graph, num_steps: int = DEFAULT_PIXIE_STEPS,
               restart_prob: float = DEFAULT_PIXIE_RESTART_PROB, num_walkers: int = 200,
               seed: int = 0, name: str = "pixie",
               max_block_elements: int = DEFAULT_MAX_BLOCK_ELEMENTS):
    """Args:
      graph: the training graph.
      num_steps: item visits per query (or per set, spread over its items).
      restart_prob: probability of jumping back to the walker's start item
        before each step after the first.
      num_walkers: parallel walkers per query; each walks
        `round(num_steps / num_walkers)` steps.
      seed: seed of the walks.
    """
    super().__init__(name, graph.num_items, max_block_elements)
    if num_steps < 1 or num_walkers < 1 or not 0.0 <= restart_prob < 1.0:
      raise ValueError("PixieScorer needs num_steps >= 1, num_walkers >= 1 and "
                       f"restart_prob in [0, 1); got {num_steps}, {num_walkers}, {restart_prob}.")
    self.num_steps = int(num_steps)
    self.restart_prob = float(restart_prob)
    self.num_walkers = int(num_walkers)
    if seed < 0:
      raise ValueError(f"seed must be >= 0, got {seed}.")
    self.seed = int(seed)
    self._ip = graph.item_to_pivot
    self._pi = graph.pivot_to_item
    self._item_deg = self._ip.degrees()
    self._pivot_deg = self._pi.degrees()

  def score(self, items: np.ndarray) -> np.ndarray:
    items = self._check_items(items)
    return self.score_sets(singleton_sets(items), "mean")

  def _set_keys(self, sets: CSR) -> np.ndarray:
    """uint64 `[S]` order-independent hash of each set's items and the seed."""
    items = np.asarray(sets.indices[sets.indptr[0]:sets.indptr[-1]], dtype=np.uint64)
    hashed = _splitmix64(items + np.uint64(1))
    prefix = np.zeros(hashed.shape[0] + 1, dtype=np.uint64)
    np.cumsum(hashed, out=prefix[1:])  # wraps mod 2**64, like the difference below
    offsets = np.asarray(sets.indptr, np.int64) - int(sets.indptr[0])
    sums = prefix[offsets[1:]] - prefix[offsets[:-1]]
    return _splitmix64(sums ^ _splitmix64(np.full(sums.shape, self.seed, dtype=np.uint64)))

  def score_sets(self, sets: CSR, how: str = "mean",
                 temperature: float = DEFAULT_SET_TEMPERATURE) -> np.ndarray:
    """Multi-query walks ("mean"): the set's walkers start round-robin at its items.

    A set of size m gets `max(num_walkers, m)` walkers (every item at least
    one) of `max(1, round(num_steps / walkers))` steps each; scores are the
    visit counts summed over the set's walkers.
    """
    if how != "mean":
      return super().score_sets(sets, how, temperature)
    num_sets, n = sets.num_rows, self.num_items
    sizes = sets.degrees()
    walkers = np.maximum(self.num_walkers, sizes)
    steps = np.maximum(1, np.rint(self.num_steps / walkers)).astype(np.int64)
    walkers[sizes == 0] = 0
    owner = np.repeat(np.arange(num_sets, dtype=np.int64), walkers)
    rank = np.arange(owner.shape[0]) - np.repeat(np.cumsum(walkers) - walkers, walkers)
    indices = np.asarray(sets.indices, np.int64)
    start = indices[sets.indptr[owner] + rank % np.maximum(sizes[owner], 1)]
    walk_len = steps[owner]
    # Per-walker key; a draw's key adds (step, draw) in the low bits.
    walker_key = _splitmix64(self._set_keys(sets)[owner] ^ (rank.astype(np.uint64) << np.uint64(34)))
    out = np.zeros((num_sets, n), dtype=np.float32)
    flat = out.reshape(-1)
    current = start.copy()
    for step in range(int(walk_len.max()) if owner.size else 0):
      live = np.flatnonzero(walk_len > step)
      base = walker_key[live] ^ np.uint64(step << 2)
      if step:
        restart = live[_uniform(base) < self.restart_prob]
        current[restart] = start[restart]
      cur = current[live]
      deg = self._item_deg[cur]
      moved = deg > 0
      live, cur, base, deg = live[moved], cur[moved], base[moved], deg[moved]
      pivot = self._ip.indices[self._ip.indptr[cur] +
                               (_uniform(base ^ np.uint64(1)) * deg).astype(np.int64)]
      nxt = self._pi.indices[self._pi.indptr[pivot] +
                             (_uniform(base ^ np.uint64(2)) * self._pivot_deg[pivot]).astype(np.int64)]
      current[live] = nxt
      np.add.at(flat, owner[live] * n + nxt, 1.0)
    return out


def make_baseline(name: str, graph: Graph, *, seed: int = 0,
                  pixie_steps: int = DEFAULT_PIXIE_STEPS,
                  pixie_restart_prob: float = DEFAULT_PIXIE_RESTART_PROB,
                  max_block_elements: int = DEFAULT_MAX_BLOCK_ELEMENTS) -> ItemScorer:
  """Builds the baseline called `name` (one of `BASELINES`) for `graph`."""
  if name == "popularity":
    return PopularityScorer(graph)
  if name == "itemknn":
    return ItemKNNScorer(graph, max_block_elements=max_block_elements)
  if name == "linear_filter":
    return LinearFilterScorer(graph, max_block_elements=max_block_elements)
  if name == "pixie":
    return PixieScorer(graph, num_steps=pixie_steps, restart_prob=pixie_restart_prob,
                       seed=seed, max_block_elements=max_block_elements)
  if name == "features":
    return FeatureScorer(graph, max_block_elements=max_block_elements)
  raise ValueError(f"unknown baseline {name!r}; choose from {BASELINES}.")

