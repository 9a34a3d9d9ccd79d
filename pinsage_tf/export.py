"""SavedModel exports of a trained PinSage model in TensorFlow Serving's layout.

`export_models(export_base, ...)` writes one new version of each model

    EXPORT_BASE/<model name>/<version>/      integer versions, increasing
        saved_model.pb, variables/, assets/ (id vocabularies)
        assets.extra/export_report.json      what was exported, checks, recall
        assets.extra/tf_serving_warmup_requests  one request per signature,
                                             replayed by TF Serving at load time
    EXPORT_BASE/models.config                text-format model_config_list of
                                             every model under EXPORT_BASE
    EXPORT_BASE/models_stock.config          the same, restricted to models
                                             without custom ops (stock TF Serving)

Publication is atomic: every version is built and checked in a temporary
directory with a non-integer name (`EXPORT_BASE/<name>/.tmp-<version>-*`,
ignored by TF Serving's file-system poller), then renamed to its integer
name once ALL requested models are built and checked, so a poller never sees
a half-written version and a failed export publishes nothing. The config files
are replaced atomically afterwards.

Models and signatures (B = batch, k = `ExportConfig.num_neighbors`,
dim = embedding width, D = dense feature width):

* `pinsage_retrieval` -- related items through a ScaNN index
  (`pinsage_tf.scann_index`; custom "Scann>" ops: loads only where `scann`
  was imported, e.g. `python -m serving.server`, not in stock TF Serving):
  - `related_items` (also `serving_default`): `item_ids` string [B] ->
    `neighbor_ids` string [B, k], `scores` float32 [B, k] (inner products,
    descending). The query item itself is excluded: k + 1 neighbors are
    searched and the query is dropped (or the last one, if the query is not
    among them).
  - `related_items_by_embedding`: `embeddings` float32 [B, dim] -> the same
    outputs; nothing is excluded.
  With item biases (a model trained with `PinSageConfig.item_bias`, whose
  embeddings directory holds `item_bias.npy`), item i scores
  `q . z_i + b_i`: the index holds `[z_i, b_i]` (width dim + 1) and each query
  `[q, 1]`, so ScaNN and the exact search still do one inner product; the
  signatures' inputs and outputs are unchanged.
  For a model trained with the pivot objective (`ExperimentConfig.
  learns_pivots`; `export_models(pivot_embeddings=...)`), two more, scored
  like `related_items` (`z_p . z_i` + the item bias, descending) with the
  same outputs:
  - `items_for_pivot`: `pivot_ids` string [B] (pivots of the exported graph)
    -> the top-k items of each pivot's STORED embedding (the inference job's
    `pivot_embeddings_graph.npy`, computed from the pivot's walk-based
    importance neighborhood); the pivot's graph items are excluded.
  - `items_for_item_set`: `item_ids` string [B, L] ("" padding) -> the
    top-k items of a pivot given at request time by its items (a user's
    history, a board's pins, any item set), embedded in the graph exactly as
    `PinSageModel.pivot_hidden` + head embed a pivot offline: h^K =
    conv_{K-1}.combine(weighted mean of the items' h^{K-1}, importance
    pooling of their transformed h^{K-1}), then the head and L2
    normalisation. Weights: UNIFORM over the row's non-padding slots (an
    item given twice weighs twice). This is the exact expected visit
    distribution of the default pivot walks (`ExperimentConfig.
    pivot_neighborhoods`: one traversal, degree exponent 0: the walk picks
    one of the pivot's items uniformly, "duplicates weight an item") without
    their sampling noise and top-T_p truncation, computed deterministically
    with no walk machinery in the graph; for pivot walks of several hops or
    a degree exponent > 0 it is an approximation. So a known pivot's graph
    items give a vector close to, not equal to, its `items_for_pivot`
    vector (the export report records their cosine). The items' h^{K-1}
    `[N, hidden]` is a variable of the model; the last layer's neighbor
    transform runs on the gathered rows only. The given items are excluded.
    A row without any item fails the request.
  Excluding E items: the exact model masks them; ScaNN searches (and
  re-scores, with reordering) min(k + E_max, N) neighbors (E_max = the
  batch's largest exclusion) and drops them. A row with fewer than k
  eligible items is padded with "" and score -inf.
* `pinsage_retrieval_exact` -- the same signatures computed by brute
  force with stock TensorFlow ops only (blocked matmul + `tf.math.top_k`,
  ties broken by the lower item index; excluded items are masked out).
  Loadable by stock TensorFlow Serving.
* `pinsage_embedder` -- stock TensorFlow ops only:
  - `embed_items` (also `serving_default`): `item_ids` string [B] ->
    `embeddings` float32 [B, dim], the rows of the inference job's output.
  - `embed_new_items` (cold start; only for inductive models, i.e. without
    a learned per-item id embedding): a NEW item's `dense` float32 [B, D]
    (omitted when D = 0), one `sparse_<feature>` int32 [B, L] per sparse
    feature (-1 padding, any L) and `pivot_ids` string [B, P] ("" padding)
    -> `embeddings` float32 [B, dim], computed by the trained model without
    retraining:
      1. neighborhood: the exact visit distribution of the first random-walk
         traversal from the new item (pick one of its P' given pivots
         uniformly, then one of that pivot's items uniformly): item i gets
         sum over given pivots p containing i of 1 / (P' * deg(p)); the top-T
         items (T = the training neighborhood size; ties by lower index, up
         to float round-off) with these weights L1-normalised. An item with
         no pivots has an empty neighborhood (pooling gives 0).
      2. h^0_new = encoder(features, log_degree = log1p(P')) (duplicated
         pivots count in P');
      3. h^k_new = conv_{k-1}.combine(h^{k-1}_new,
         pool(Q_{k-1} h^{k-1}[neighbors], weights)) for k = 1..K, where the
         neighbor transforms ReLU(Q_{k-1} h^{k-1} + q) of ALL existing items
         are precomputed at export time with the layer-wise inference pass
         (the same neighborhood table as the `embed_items` vectors) and
         stored as variables of the SavedModel;
      4. the dense head and L2 normalisation.
    Existing items' representations are not changed by a new item (no pivot
    links back to it), exactly like `neighborhoods_for_new_items`.
    Embedding an EXISTING item this way gives a vector close to, but not
    equal to, its `embed_items` vector: its neighborhood here is the one-hop
    visit distribution (and contains the item itself, which is a regular
    visitable item of the graph) instead of the multi-hop random-walk table
    it was trained and inferred with. Why one traversal: it is exact,
    deterministic and cheap with TF ops (gathers over the pivots' item
    lists), whereas the multi-hop expected visit counts need a dense
    [B, N] vector per hop or pruning. On the synthetic test graph the
    existing items' mean cosine to `embed_items` is 0.965 this way and
    0.963-0.967 with sampled 3-hop walks (`neighborhoods_for_new_items`,
    10-1000 walks), so nothing measurable is lost.

Size: the embedder holds K float32 tables [N, neighbor_dim] plus the final
embeddings, all as variables (no 2 GB graph-constant limit); id vocabularies
are assets. With pivots, each retrieval model also holds h^{K-1} [N, hidden],
the pivot embeddings [M, dim], the pivot -> item lists and the weights of the
last layer and the head. Stock TF Serving needs a release recent enough for
the ops TF 2.20 writes (e.g. DisableCopyOnRead).

Unknown ids (`item_ids` of `related_items` / `embed_items` /
`items_for_item_set`, `pivot_ids` of `embed_new_items` / `items_for_pivot`),
out-of-range sparse ids and item sets without any item fail the request with
`tf.errors.InvalidArgumentError` (a `tf.debugging.Assert` in the graph) whose
message names the signature, the input and the offending values, never a
silent zero vector.

Every export is checked before it is published: each SavedModel is loaded
back, `pinsage_retrieval_exact` must return the numpy exact top-k
(`pinsage_tf.retrieval_exact`), the ScaNN model's recall@k against it is
measured on `recall_queries` sampled items, and the final layer recomputed
from the stored tables must reproduce the given embeddings (so embeddings of
another model are refused). With pivots: the stored pivot embeddings of
sampled pivots are recomputed from the training pivot neighborhoods (when
`tables` hold them) and must match; on `recall_queries` sampled pivots with
items (64 for the exact model when it is 0), `items_for_pivot` must return
numpy's exact top-k of the stored pivot embeddings and `items_for_item_set`
with each pivot's graph items must return the scores of
`LayerwiseInference.pivot_embeddings` with the same uniform weights (within
1e-4; exact model: the same lists up to score ties; ScaNN: recall@k
reported), and neither may return an excluded item.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from pinsage_tf import atomic
from pinsage_tf import graph as graph_lib
from pinsage_tf import inference
from pinsage_tf import minibatch
from pinsage_tf import pipeline
from pinsage_tf import retrieval_exact
from pinsage_tf import scann_index
from scann.scann_ops.py import scann_ops  # after scann_index, which imports scann

RETRIEVAL = "pinsage_retrieval"
RETRIEVAL_EXACT = "pinsage_retrieval_exact"
EMBEDDER = "pinsage_embedder"
ALL_MODELS = (RETRIEVAL, RETRIEVAL_EXACT, EMBEDDER)
MODELS_CONFIG = "models.config"
MODELS_STOCK_CONFIG = "models_stock.config"
REPORT_FILE = os.path.join("assets.extra", "export_report.json")
# TF Serving replays these requests when it loads a version, before serving it.
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
DEFAULT_SIGNATURE = "serving_default"
_VERSION_DIR = re.compile(r"^\d+$")
_DIR_MODE = 0o755
_FILE_MODE = 0o644
_LOG = logging.getLogger(__name__)

SIGNATURES: Mapping[str, Mapping[str, Any]] = {
    "related_items": {
        "doc": "The k most similar other items of each query item (inner product of the "
               "embeddings); the query itself is excluded.",
        "inputs": {"item_ids": "string [B]: raw item ids of the exported corpus."},
        "outputs": {"neighbor_ids": "string [B, k]: raw item ids, most similar first.",
                    "scores": "float32 [B, k]: inner products, descending."},
    },
    "related_items_by_embedding": {
        "doc": "The k corpus items with the largest inner product with each query embedding.",
        "inputs": {"embeddings": "float32 [B, dim]: query embeddings."},
        "outputs": {"neighbor_ids": "string [B, k]", "scores": "float32 [B, k]"},
    },
    "embed_items": {
        "doc": "The PinSage embedding of existing items (the inference job's output rows).",
        "inputs": {"item_ids": "string [B]: raw item ids."},
        "outputs": {"embeddings": "float32 [B, dim], L2-normalised."},
    },
    "embed_new_items": {
        "doc": "Cold start: the embedding of NEW items from their features and the pivots "
               "they are attached to, computed inductively by the trained model over a "
               "one-hop importance neighborhood (see pinsage_tf/export.py).",
        "inputs": {"dense": "float32 [B, D] dense features (absent when D = 0).",
                   "sparse_<feature>": "int32 [B, L] ids of each sparse feature, -1 padding.",
                   "pivot_ids": "string [B, P] raw pivot ids, \"\" padding."},
        "outputs": {"embeddings": "float32 [B, dim], L2-normalised."},
    },
    "items_for_pivot": {
        "doc": "The k items scored highest for each known pivot (user, board) by its stored "
               "pivot embedding (z_p . z_i + b_i); the pivot's graph items are excluded. "
               "Only for models trained with the pivot objective.",
        "inputs": {"pivot_ids": "string [B]: raw pivot ids of the exported graph."},
        "outputs": {"neighbor_ids": "string [B, k]: raw item ids, best first (\"\" when "
                                    "fewer than k items are eligible).",
                    "scores": "float32 [B, k]: descending (-inf on padding)."},
    },
    "items_for_item_set": {
        "doc": "The k items scored highest for a pivot given at request time by its items: "
               "embedded by the model's last convolution and head from the items' h^{K-1}, "
               "uniform weights over the given (non-padding) ids; the given items are "
               "excluded. Only for models trained with the pivot objective.",
        "inputs": {"item_ids": "string [B, L]: raw item ids, \"\" padding; every row needs "
                               "at least one id."},
        "outputs": {"neighbor_ids": "string [B, k]: raw item ids, best first (\"\" when "
                                    "fewer than k items are eligible).",
                    "scores": "float32 [B, k]: descending (-inf on padding)."},
    },
}


class ExportError(RuntimeError):
  """A built export failed its checks; nothing was published."""


@dataclasses.dataclass(frozen=True)
class ExportConfig:
  """What `export_models` builds.

  Attributes:
    num_neighbors: k, neighbors returned by the retrieval signatures.
    scann: the ScaNN index settings (automatic by corpus size by default).
    recall_queries: items sampled to measure the ScaNN model's recall@k
      against exact search (0 disables it).
    seed: seed of that sample.
    exact_block_size: corpus rows scored per step by the exact model (bounds
      its memory to ~`B * exact_block_size` floats).
    batch_size: items per block of the export-time layer-wise pass.
    consistency_sample: items whose final embedding is recomputed from the
      stored layer tables and compared with the given embeddings.
    consistency_tolerance: largest allowed absolute difference there.
    models: which of `ALL_MODELS` to export.
  """

  num_neighbors: int = 10
  scann: scann_index.ScannConfig = dataclasses.field(default_factory=scann_index.ScannConfig)
  recall_queries: int = 1000
  seed: int = 0
  exact_block_size: int = 32768
  batch_size: int = 8192
  consistency_sample: int = 1000
  consistency_tolerance: float = 1e-3
  models: tuple[str, ...] = ALL_MODELS

  def __post_init__(self):
    for name in ("num_neighbors", "exact_block_size", "batch_size"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"ExportConfig.{name} must be a positive int, got {value!r}.")
    for name in ("recall_queries", "consistency_sample"):
      if getattr(self, name) < 0:
        raise ValueError(f"ExportConfig.{name} must be >= 0, got {getattr(self, name)!r}.")
    unknown = sorted(set(self.models) - set(ALL_MODELS))
    if unknown or not self.models:
      raise ValueError(f"ExportConfig.models must be a non-empty subset of {ALL_MODELS}, "
                       f"got {self.models!r}.")


# --- Version directories and the model server config -------------------------


def list_versions(model_base: str | os.PathLike) -> list[int]:
  """Integer version subdirectories of `model_base`, ascending ([] if absent)."""
  try:
    names = os.listdir(model_base)
  except FileNotFoundError:
    return []
  return sorted(int(n) for n in names
                if _VERSION_DIR.match(n) and os.path.isdir(os.path.join(model_base, n)))


def next_version(export_base: str | os.PathLike, models: Sequence[str] = ALL_MODELS) -> int:
  """1 + the highest version of any of `models` under `export_base` (1 if none).

  One number for all models keeps the versions of one export in lockstep.
  """
  latest = [max(list_versions(os.path.join(export_base, m)), default=0) for m in models]
  return max(latest, default=0) + 1


def _read_report(version_dir: str) -> dict[str, Any] | None:
  try:
    with open(os.path.join(version_dir, REPORT_FILE), encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def write_models_config(export_base: str | os.PathLike) -> dict[str, list[str]]:
  """Atomically (re)writes `models.config` and `models_stock.config`.

  `models.config` lists every subdirectory of `export_base` holding at least
  one integer version (a `model_config_list` for `--model_config_file`);
  `models_stock.config` only those whose latest version's export report
  records no custom ops (loadable by stock TensorFlow Serving).

  Returns:
    {"all": [names], "stock": [names]}.
  """
  export_base = os.path.abspath(os.fspath(export_base))
  names = sorted(n for n in os.listdir(export_base)
                 if not n.startswith(".") and os.path.isdir(os.path.join(export_base, n))
                 and list_versions(os.path.join(export_base, n)))
  stock = []
  for name in names:
    latest = max(list_versions(os.path.join(export_base, name)))
    report = _read_report(os.path.join(export_base, name, str(latest)))
    if report is not None and report.get("custom_ops") == []:
      stock.append(name)
  for file, selected in ((MODELS_CONFIG, names), (MODELS_STOCK_CONFIG, stock)):
    config = model_server_config_pb2.ModelServerConfig()
    for name in selected:
      entry = config.model_config_list.config.add()
      entry.name = name
      entry.base_path = os.path.join(export_base, name)
      entry.model_platform = "tensorflow"
    with atomic.atomic_file(os.path.join(export_base, file)) as f:
      os.chmod(f.name, _FILE_MODE)  # mkstemp's 0600 would hide it from a server user
      f.write(text_format.MessageToString(config))
  return {"all": names, "stock": stock}


def saved_model_ops(path: str | os.PathLike) -> list[str]:
  """Every op type used by a SavedModel: graph nodes and all library functions."""
  proto = saved_model_pb2.SavedModel()
  with open(os.path.join(os.fspath(path), "saved_model.pb"), "rb") as f:
    proto.ParseFromString(f.read())
  ops = set()
  for meta_graph in proto.meta_graphs:
    ops.update(node.op for node in meta_graph.graph_def.node)
    for function in meta_graph.graph_def.library.function:
      ops.update(node.op for node in function.node_def)
  return sorted(ops)


def _custom_ops(ops: Sequence[str]) -> list[str]:
  # Custom-op libraries register namespaced ops ("Scann>ScannSearch").
  return sorted(op for op in ops if ">" in op or op.startswith("Scann"))


# --- Graph pieces ------------------------------------------------------------


class StringIndex(tf.Module):
  """Raw string id -> row index, from a vocabulary asset (one id per line).

  The vocabulary travels as a SavedModel asset (no 2 GB graph-constant limit)
  and initialises a `StaticHashTable` on load, in Python and in TF Serving.
  """

  def __init__(self, vocab_file: str, size: int, what: str, name: str | None = None):
    super().__init__(name=name)
    self._what = what
    self._size = int(size)
    self.vocabulary = tf.saved_model.Asset(vocab_file)
    self.table = tf.lookup.StaticHashTable(
        tf.lookup.TextFileInitializer(
            self.vocabulary, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
            tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER, vocab_size=self._size),
        default_value=-1)

  def lookup(self, ids: tf.Tensor, where: str, padding: str | None = None) -> tf.Tensor:
    """int32 indices of `ids` (any shape); fails naming unknown ids.

    Args:
      ids: string tensor.
      where: the signature name, prefixed to the error message.
      padding: a value that means "no id" and maps to -1 instead of failing.
    """
    index = self.table.lookup(ids)
    known = index >= 0
    if padding is not None:
      known = known | tf.equal(ids, padding)
    unknown = tf.boolean_mask(ids, tf.logical_not(known))
    check = tf.debugging.Assert(
        tf.equal(tf.size(unknown), 0),
        [f"{where}: unknown {self._what} (not among the {self._size} exported):", unknown],
        summarize=20, name="unknown_id")
    with tf.control_dependencies([check]):
      return tf.cast(tf.identity(index), tf.int32)


def exact_top_k(corpus: tf.Tensor, num_items: int, queries: tf.Tensor, k: int,
                block_size: int, exclude: tf.Tensor | None = None
                ) -> tuple[tf.Tensor, tf.Tensor]:
  """Exact top-k inner-product search with stock ops, block by block.

  Args:
    corpus: float32 `[num_blocks * block_size, d]`, the `num_items` real rows
      first (zero padding after them).
    num_items: N, real rows.
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
  num_blocks = int(corpus.shape[0]) // block_size
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


def first_traversal_neighborhoods(pivot_index: tf.Tensor, pivot_indptr: tf.Tensor,
                                  pivot_items: tf.Tensor, num_items: int, num_neighbors: int
                                  ) -> tuple[tf.Tensor, tf.Tensor]:
  """Importance neighborhoods of new items from one walk traversal (TF ops).

  New item b with valid pivots p_1..p_P' (duplicates allowed) visits item i
  with probability v[b, i] = sum_j [i in items(p_j)] / (P' * deg(p_j)).

  Args:
    pivot_index: int32 `[B, P]` pivot rows, -1 on padding.
    pivot_indptr: int64 `[M + 1]` CSR row pointers of pivot -> items.
    pivot_items: int32 `[nnz]` CSR item ids.
    num_items: N.
    num_neighbors: T.

  Returns:
    (ids int32 `[B, T]` most visited first, ties by lower index, -1 on
    padding; weights float32 `[B, T]` L1-normalised over the kept items, 0 on
    padding).
  """
  b = tf.shape(pivot_index)[0]
  valid = pivot_index >= 0
  given = tf.reduce_sum(tf.cast(valid, tf.float64), axis=1)  # [B] = P'
  slots = tf.where(valid)  # [S, 2] (row, slot) of each valid pivot
  row_of_slot = slots[:, 0]
  pivot = tf.gather_nd(pivot_index, slots)  # [S]
  starts = tf.gather(pivot_indptr, pivot)
  degree = tf.gather(pivot_indptr, pivot + 1) - starts  # int64 [S]
  slot_weight = 1.0 / (tf.gather(given, row_of_slot) * tf.cast(degree, tf.float64))
  positions = tf.ragged.range(starts, starts + degree)  # [S, (deg)]
  slot_of_visit = positions.value_rowids()
  item = tf.cast(tf.gather(pivot_items, positions.flat_values), tf.int64)  # [V]
  row = tf.gather(row_of_slot, slot_of_visit)
  key = row * num_items + item
  unique_key, which = tf.unique(key)
  prob = tf.math.unsorted_segment_sum(tf.gather(slot_weight, slot_of_visit), which,
                                      tf.shape(unique_key)[0])
  u_row = unique_key // num_items
  u_item = unique_key % num_items
  # Order by (row asc, prob desc, item asc) with three stable sorts.
  order = tf.argsort(u_item, stable=True)
  order = tf.gather(order, tf.argsort(-tf.gather(prob, order), stable=True))
  order = tf.gather(order, tf.argsort(tf.gather(u_row, order), stable=True))
  u_row, u_item, prob = (tf.gather(x, order) for x in (u_row, u_item, prob))
  per_row = tf.math.bincount(tf.cast(u_row, tf.int32), minlength=b, maxlength=b,
                             dtype=tf.int64)
  row_start = tf.cumsum(per_row, exclusive=True)
  rank = tf.range(tf.size(u_row, out_type=tf.int64), dtype=tf.int64) - tf.gather(row_start, u_row)
  top = rank < num_neighbors
  where = tf.stack([tf.boolean_mask(u_row, top), tf.boolean_mask(rank, top)], axis=1)
  shape = tf.stack([tf.cast(b, tf.int64), tf.constant(num_neighbors, tf.int64)])
  ids = tf.tensor_scatter_nd_update(
      tf.fill(tf.cast(shape, tf.int32), tf.constant(-1, tf.int32)), where,
      tf.cast(tf.boolean_mask(u_item, top), tf.int32))
  raw = tf.scatter_nd(where, tf.boolean_mask(prob, top), shape)
  weights = tf.math.divide_no_nan(raw, tf.reduce_sum(raw, axis=1, keepdims=True))
  return ids, tf.cast(weights, tf.float32)


def _scann_search(state: Any, queries: tf.Tensor, count: tf.Tensor, pre_reorder: tf.Tensor
                  ) -> tuple[tf.Tensor, tf.Tensor]:
  """`scann_index.search` of `count` neighbors re-scoring `pre_reorder` candidates.

  A reordering searcher (ah, tree_ah) returns at most `pre_reorder` results,
  by default its build-time `reorder_num_neighbors`, which a long exclusion
  list can exceed.
  """

  def run():
    searcher = scann_ops.searcher_from_module(state)
    result = searcher.search_batched_parallel(queries, final_num_neighbors=count,
                                              pre_reorder_num_neighbors=pre_reorder)
    return (tf.ensure_shape(result.distances, [None, None]),
            tf.ensure_shape(result.indices, [None, None]))

  def empty():
    return tf.zeros([0, count], tf.float32), tf.zeros([0, count], tf.int32)

  return tf.cond(tf.shape(queries)[0] > 0, run, empty)


# --- The exported modules ----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PivotTables:
  """What the retrieval models' pivot signatures serve from.

  Attributes:
    model: the trained `PinSageModel`; its last convolution and head embed
      request-time item sets (only their variables are saved).
    vocab_file: the graph's raw pivot ids, one per line (row p = pivot p).
    vectors: float32 `[M, dim]` the stored pivot embeddings.
    pivot_to_item: the graph's pivot -> item `CSR` (what `items_for_pivot`
      excludes).
    last_inputs: float32 `[N, hidden]` h^{K-1} of every item.
  """

  model: Any
  vocab_file: str
  vectors: np.ndarray
  pivot_to_item: graph_lib.CSR
  last_inputs: np.ndarray


class RetrievalModule(tf.Module):
  """`related_items`, `related_items_by_embedding` and, with pivots,
  `items_for_pivot` and `items_for_item_set` over an item corpus.

  Args:
    item_ids: unicode `[N]` raw ids (row i = item i).
    vectors: float32 `[N, dim]` item embeddings.
    vocab_file: file with `item_ids`, one per line (becomes an asset).
    k: neighbors returned.
    scann_state: a `scann_index.build_state` result for ScaNN search (over
      `retrieval_exact.biased_corpus(vectors, bias)`), or None for exact brute force with
      stock ops.
    block_size: exact search's corpus rows per step.
    bias: optional float32 `[N]` item biases added to every score.
    pivots: the pivot signatures' tables (None: no pivot signatures).
    scann_reorder: the ScaNN index's `reorder_num_neighbors` (None without
      reordering): a search excluding many items re-scores more candidates.
  """

  def __init__(self, item_ids: np.ndarray, vectors: np.ndarray, vocab_file: str, k: int,
               scann_state: Any = None, block_size: int = 32768,
               bias: np.ndarray | None = None, pivots: PivotTables | None = None,
               scann_reorder: int | None = None):
    super().__init__(name="pinsage_retrieval")
    n, dim = vectors.shape
    self._dim = int(dim)
    self._with_bias = bias is not None
    vectors = retrieval_exact.biased_corpus(vectors, bias)
    if not 0 < k < n:
      raise ValueError(f"num_neighbors={k} must lie in [1, {n - 1}] for a corpus of {n} items "
                       "(the query itself is excluded).")
    self._k = int(k)
    self._n = int(n)
    self.items = StringIndex(vocab_file, n, "item_ids", name="items")
    self.item_ids = tf.Variable(np.char.encode(np.asarray(item_ids, dtype=str), "utf-8"),
                                trainable=False, name="item_ids")
    self.scann = scann_state
    self._scann_reorder = scann_reorder
    if scann_state is None:
      self.block_size = max(min(int(block_size), n), k + 1)
      padded = math.ceil(n / self.block_size) * self.block_size
      corpus = np.zeros((padded, vectors.shape[1]), np.float32)
      corpus[:n] = vectors
    else:
      corpus = np.asarray(vectors, np.float32)
    self.embeddings = tf.Variable(corpus, trainable=False, name="embeddings")

    self.related_items = tf.function(
        self._related_items, autograph=False,
        input_signature=[tf.TensorSpec([None], tf.string, name="item_ids")])
    self.related_items_by_embedding = tf.function(
        self._related_items_by_embedding, autograph=False,
        input_signature=[tf.TensorSpec([None, dim], tf.float32, name="embeddings")])
    self.items_for_pivot = self.items_for_item_set = None
    if pivots is None:
      return
    model = pivots.model
    m = int(pivots.vectors.shape[0])
    if pivots.vectors.shape != (m, dim) or pivots.pivot_to_item.num_rows != m:
      raise ValueError(f"pivot vectors {pivots.vectors.shape} and {pivots.pivot_to_item.num_rows} "
                       f"pivot item lists must be [M, {dim}] and M.")
    if pivots.last_inputs.shape != (n, model.config.hidden_dim):
      raise ValueError(f"last_inputs must be h^(K-1) [{n}, {model.config.hidden_dim}], got "
                       f"{pivots.last_inputs.shape}.")
    self.pivots = StringIndex(pivots.vocab_file, m, "pivot_ids", name="pivots")
    self.pivot_embeddings = tf.Variable(np.asarray(pivots.vectors, np.float32), trainable=False,
                                        name="pivot_embeddings")
    self.pivot_indptr = tf.Variable(np.asarray(pivots.pivot_to_item.indptr, np.int64),
                                    trainable=False, name="pivot_indptr")
    self.pivot_items = tf.Variable(np.asarray(pivots.pivot_to_item.indices, np.int32),
                                   trainable=False, name="pivot_items")
    self.last_inputs = tf.Variable(np.asarray(pivots.last_inputs, np.float32), trainable=False,
                                   name="last_inputs")
    # Only the layers a pivot embedding runs through are saved, as plain
    # variables (the functions close over the Keras layers; see EmbedderModule).
    self.model_variables = [*model.convs[-1].variables, *model.head_hidden.variables,
                            *model.head_output.variables]
    self._model = _Untracked(model)
    self.items_for_pivot = tf.function(
        self._items_for_pivot, autograph=False,
        input_signature=[tf.TensorSpec([None], tf.string, name="pivot_ids")])
    self.items_for_item_set = tf.function(
        self._items_for_item_set, autograph=False,
        input_signature=[tf.TensorSpec([None, None], tf.string, name="item_ids")])

  def _search(self, queries: tf.Tensor, exclude: tf.Tensor | None):
    """Top-k of `queries [B, dim]`; `exclude` int32 `[B]` / `[B, L]` rows (-1 none) or None."""
    if self._with_bias:  # [q, 1] . [z_i, b_i] = q . z_i + b_i
      queries = tf.concat([queries[:, :self._dim], tf.ones_like(queries[:, :1])], axis=1)
    if self.scann is None:
      return exact_top_k(self.embeddings, self._n, queries, self._k, self.block_size,
                         exclude=exclude)
    if exclude is None:
      return scann_index.search(self.scann, queries, self._k)
    if exclude.shape.rank == 1:
      scores, index = scann_index.search(self.scann, queries, self._k + 1)
    else:
      excluded = tf.reduce_sum(tf.cast(exclude >= 0, tf.int32), axis=1)  # [B]
      count = tf.minimum(self._k + tf.reduce_max(tf.concat([excluded, [0]], axis=0)), self._n)
      # A reordering index returns at most its reorder size: re-score enough.
      pre_reorder = tf.maximum(count, self._scann_reorder) if self._scann_reorder else -1
      scores, index = _scann_search(self.scann, queries, count, pre_reorder)
    return drop_excluded(scores, index, exclude, self._k)

  def _outputs(self, scores, index):
    ids = tf.gather(self.item_ids, tf.maximum(index, 0))
    ids = tf.where(index >= 0, ids, tf.zeros_like(ids))  # "" where nothing was found
    return {"neighbor_ids": tf.ensure_shape(ids, [None, self._k]),
            "scores": tf.ensure_shape(scores, [None, self._k])}

  def _related_items(self, item_ids):
    index = self.items.lookup(item_ids, "related_items")
    queries = tf.gather(self.embeddings, index)
    return self._outputs(*self._search(queries, index))

  def _related_items_by_embedding(self, embeddings):
    return self._outputs(*self._search(embeddings, None))

  def _items_for_pivot(self, pivot_ids):
    index = self.pivots.lookup(pivot_ids, "items_for_pivot")
    starts = tf.gather(self.pivot_indptr, index)
    ends = tf.gather(self.pivot_indptr, index + 1)
    graph_items = tf.gather(self.pivot_items, tf.ragged.range(starts, ends))  # [B, (deg)]
    exclude = graph_items.to_tensor(default_value=-1)  # [B, max deg]
    return self._outputs(*self._search(tf.gather(self.pivot_embeddings, index), exclude))

  def _items_for_item_set(self, item_ids):
    model = self._model.value
    index = self.items.lookup(item_ids, "items_for_item_set", padding="")  # [B, L], -1 padding
    given = tf.cast(index >= 0, tf.float32)
    count = tf.reduce_sum(given, axis=1)  # [B]
    empty = tf.where(tf.equal(count, 0))[:, 0]
    check = tf.debugging.Assert(
        tf.equal(tf.size(empty), 0),
        ["items_for_item_set: every row of item_ids needs at least one item id (\"\" is "
         "padding); rows without one:", empty], summarize=20, name="empty_item_set")
    with tf.control_dependencies([check]):
      weights = tf.identity(given / tf.maximum(count, 1.0)[:, None])  # uniform, 0 on padding
    b, width = tf.shape(index)[0], tf.shape(index)[1]
    # The pivot's neighbors are the given items: their h^{K-1} rows and (inside
    # pivot_hidden) their neighbor transforms, computed for these rows only.
    rows = tf.gather(self.last_inputs, tf.reshape(tf.maximum(index, 0), [-1]))  # [B * L, hidden]
    slots = tf.reshape(tf.range(b * width), [b, width])
    z = model.head(model.pivot_hidden(rows, slots, weights, training=False))  # [B, dim]
    return self._outputs(*self._search(z, index))

  def signatures(self) -> dict[str, Any]:
    related = self.related_items.get_concrete_function()
    out = {DEFAULT_SIGNATURE: related, "related_items": related,
           "related_items_by_embedding": self.related_items_by_embedding.get_concrete_function()}
    if self.items_for_pivot is not None:
      out["items_for_pivot"] = self.items_for_pivot.get_concrete_function()
      out["items_for_item_set"] = self.items_for_item_set.get_concrete_function()
    return out


class EmbedderModule(tf.Module):
  """`embed_items` (lookup) and, for inductive models, `embed_new_items`.

  Args:
    item_vocab_file: item ids, one per line.
    vectors: float32 `[N, dim]` the inference job's embeddings.
    model: the trained `PinSageModel` (None: no `embed_new_items`).
    transformed: K arrays `[N, neighbor_dim]`, the neighbor transform of
      layer k applied to h^k of every item (`layer_tables`).
    graph: the graph (pivot ids, pivot -> items CSR).
    pivot_vocab_file: pivot ids, one per line.
    num_neighbors: T of the cold-start neighborhoods.
  """

  def __init__(self, item_vocab_file: str, vectors: np.ndarray, *, model=None,
               transformed: Sequence[np.ndarray] = (), graph: graph_lib.Graph | None = None,
               pivot_vocab_file: str | None = None, num_neighbors: int = 0):
    super().__init__(name="pinsage_embedder")
    n, dim = vectors.shape
    self.items = StringIndex(item_vocab_file, n, "item_ids", name="items")
    self.embeddings = tf.Variable(np.asarray(vectors, np.float32), trainable=False,
                                  name="embeddings")
    self.embed_items = tf.function(
        self._embed_items, autograph=False,
        input_signature=[tf.TensorSpec([None], tf.string, name="item_ids")])
    self.embed_new_items = None
    if model is None:
      return
    config = model.config
    enc = config.encoder
    if len(transformed) != config.num_layers:
      raise ValueError(f"need {config.num_layers} layer tables, got {len(transformed)}.")
    self._num_items = n
    self._num_neighbors = int(num_neighbors)
    self._sparse = tuple(enc.sparse_features)
    self._dense_dim = enc.dense_dim
    self.pivots = StringIndex(pivot_vocab_file, graph.num_pivots, "pivot_ids", name="pivots")
    self.pivot_indptr = tf.Variable(np.asarray(graph.pivot_to_item.indptr, np.int64),
                                    trainable=False, name="pivot_indptr")
    self.pivot_items = tf.Variable(np.asarray(graph.pivot_to_item.indices, np.int32),
                                   trainable=False, name="pivot_items")
    self.layer_tables = [tf.Variable(np.asarray(t, np.float32), trainable=False,
                                     name=f"transformed_h{k}")
                         for k, t in enumerate(transformed)]
    # The model's variables are tracked as plain variables: the functions
    # below close over the Keras layers, so no Keras object is serialised.
    self.model_variables = list(model.variables)
    self._model = _Untracked(model)
    spec = {}
    if enc.dense_dim:
      spec["dense"] = tf.TensorSpec([None, enc.dense_dim], tf.float32, name="dense")
    for name, _ in enc.sparse_features:
      spec[f"sparse_{name}"] = tf.TensorSpec([None, None], tf.int32, name=f"sparse_{name}")
    spec["pivot_ids"] = tf.TensorSpec([None, None], tf.string, name="pivot_ids")
    self.embed_new_items = tf.function(self._embed_new_items, autograph=False,
                                       input_signature=[spec])

  def _embed_items(self, item_ids):
    index = self.items.lookup(item_ids, "embed_items")
    return {"embeddings": tf.gather(self.embeddings, index)}

  def _embed_new_items(self, inputs):
    model = self._model.value
    pivot_ids = inputs["pivot_ids"]
    b = tf.shape(pivot_ids)[0]
    checks = []
    for key, value in inputs.items():
      if key != "pivot_ids":
        checks.append(tf.debugging.assert_equal(
            tf.shape(value)[0], b,
            message=f"embed_new_items: input {key!r} must have as many rows as pivot_ids"))
    sparse = []
    for name, vocab_size in self._sparse:
      ids = inputs[f"sparse_{name}"]
      bad = tf.boolean_mask(ids, ids >= vocab_size)
      checks.append(tf.debugging.Assert(
          tf.equal(tf.size(bad), 0),
          [f"embed_new_items: sparse_{name} ids must be < vocab_size={vocab_size} "
           "(-1 for padding), got:", bad], summarize=20, name=f"check_sparse_{name}"))
      sparse.append(ids)
    with tf.control_dependencies(checks):
      # Everything downstream waits for the checks, so a bad request fails
      # with their message rather than inside an embedding lookup.
      pivot_index = self.pivots.lookup(pivot_ids, "embed_new_items", padding="")
      sparse = [tf.identity(ids) for ids in sparse]
      dense = (tf.identity(inputs["dense"]) if self._dense_dim
               else tf.zeros([b, 0], tf.float32))
    ids, weights = first_traversal_neighborhoods(
        pivot_index, self.pivot_indptr, self.pivot_items, self._num_items, self._num_neighbors)
    num_pivots = tf.reduce_sum(tf.cast(pivot_index >= 0, tf.float32), axis=1)
    node_inputs = minibatch.NodeInputs(
        item=tf.zeros([b], tf.int32), dense=dense, log_degree=tf.math.log1p(num_pivots),
        sparse=tuple(sparse))
    h = model.encode_inputs(node_inputs, training=False)  # h^0 [B, hidden]
    neighbors = tf.maximum(ids, 0)  # padding has weight 0
    for k, conv in enumerate(model.convs):
      pooled = conv.pool(tf.gather(self.layer_tables[k], neighbors), weights)
      h = conv.combine(h, pooled, training=False)  # h^{k+1}
    return {"embeddings": model.head(h)}

  def signatures(self) -> dict[str, Any]:
    embed = self.embed_items.get_concrete_function()
    out = {DEFAULT_SIGNATURE: embed, "embed_items": embed}
    if self.embed_new_items is not None:
      out["embed_new_items"] = self.embed_new_items.get_concrete_function()
    return out


class _Untracked:
  """Holds an object without `tf.Module` tracking it (no Keras serialisation)."""

  def __init__(self, value):
    self.value = value


def is_inductive(model) -> bool:
  """True when h^0 depends on features only (no learned per-item id embedding)."""
  return not model.encoder.use_id_embedding


def layer_tables(model, tables: pipeline.SamplingTables, *, batch_size: int = 8192
                 ) -> tuple[list[np.ndarray], np.ndarray]:
  """Per-layer neighbor transforms of all items, for `embed_new_items`.

  Runs the layer-wise inference pass (paper section 3.3) and keeps, for each
  layer k = 0..K-1, `transformed[k] = ReLU(Q_k h^k + q_k)` `[N, neighbor_dim]`
  of every item (the only thing a new item needs from its neighbors).

  Returns:
    (transformed: K float32 arrays `[N, neighbor_dim]`, h^{K-1} `[N, hidden]`).
  """
  n = tables.num_items
  h = inference.input_representations(model, tables, batch_size=batch_size)
  transformed = []
  for k, conv in enumerate(model.convs):
    transform = tf.function(lambda x, conv=conv: conv.transform_neighbors(x, training=False),
                            reduce_retracing=True)
    t = np.concatenate([transform(h[s:s + batch_size]).numpy() for s in range(0, n, batch_size)])
    transformed.append(t.astype(np.float32))
    if k + 1 < len(model.convs):
      h = _combine_all(conv, h, t, tables, batch_size)
  return transformed, h


def _combine_all(conv, h, transformed, tables, batch_size):
  table = tf.constant(transformed)
  step = tf.function(
      lambda self_h, nbr, w: conv.combine(self_h, conv.pool(tf.gather(table, nbr), w),
                                          training=False), reduce_retracing=True)
  return np.concatenate([
      step(h[s:s + batch_size], tables.neighbor_ids[s:s + batch_size],
           tables.neighbor_weights[s:s + batch_size]).numpy()
      for s in range(0, tables.num_items, batch_size)]).astype(np.float32)


def check_consistency(model, tables: pipeline.SamplingTables, transformed: Sequence[np.ndarray],
                      h_last: np.ndarray, vectors: np.ndarray, sample: np.ndarray,
                      tolerance: float) -> float:
  """Recomputes the final embeddings of `sample` items and compares them.

  Returns:
    The largest absolute difference.

  Raises:
    ValueError: above `tolerance` (the embeddings come from another model or
      another neighborhood table).
  """
  if sample.size == 0:
    return 0.0
  conv = model.convs[-1]
  pooled = conv.pool(tf.gather(tf.constant(transformed[-1]), tables.neighbor_ids[sample]),
                     tables.neighbor_weights[sample])
  z = model.head(conv.combine(h_last[sample], pooled, training=False)).numpy()
  diff = float(np.max(np.abs(z - vectors[sample])))
  if not diff <= tolerance:
    raise ValueError(
        f"the embeddings differ from the model's layer-wise output by up to {diff:.3g} "
        f"(tolerance {tolerance}); were they computed by this model on this graph? "
        "Re-run trainer.infer with the same model_dir and graph_dir.")
  return diff


def check_pivot_consistency(model, tables: pipeline.SamplingTables, transformed_last: np.ndarray,
                            h_last: np.ndarray, pivot_vectors: np.ndarray, sample: np.ndarray,
                            tolerance: float) -> float | None:
  """Recomputes the stored embeddings of `sample` pivots and compares them.

  The pivots are embedded from the training pivot neighborhoods of `tables`
  (`pivot_neighbor_ids` / `_weights`), as the inference job did.

  Returns:
    The largest absolute difference, or None when `tables` hold no pivot
    neighborhoods (nothing to compare with).

  Raises:
    ValueError: above `tolerance`, or `tables` describe another pivot count.
  """
  if tables.num_pivots == 0 or sample.size == 0:
    return None
  if tables.num_pivots != pivot_vectors.shape[0]:
    raise ValueError(f"the tables hold {tables.num_pivots} pivot neighborhoods but "
                     f"{pivot_vectors.shape[0]} pivot embeddings were given.")
  h = model.pivot_hidden(tf.constant(h_last), tables.pivot_neighbor_ids[sample],
                         tables.pivot_neighbor_weights[sample], training=False,
                         transformed=tf.constant(transformed_last))
  diff = float(np.max(np.abs(model.head(h).numpy() - pivot_vectors[sample])))
  if not diff <= tolerance:
    raise ValueError(
        f"the pivot embeddings differ from the model's by up to {diff:.3g} (tolerance "
        f"{tolerance}); were they computed by this model on this graph? Re-run trainer.infer "
        "with the same model_dir and graph_dir.")
  return diff


# --- Orchestration -----------------------------------------------------------


def _write_vocab(path: str, ids: np.ndarray, what: str, forbid_empty: bool) -> None:
  with open(path, "w", encoding="utf-8", newline="\n") as f:
    for i, raw in enumerate(np.asarray(ids).tolist()):
      raw = str(raw)
      if "\n" in raw or "\r" in raw or (forbid_empty and raw == ""):
        raise ValueError(f"{what} {i} ({raw!r}) is empty or contains a newline; it cannot be "
                         "served (\"\" is the padding of pivot_ids).")
      f.write(raw + "\n")


def write_warmup_requests(version_dir: str, model_name: str,
                          requests: Sequence[tuple[str, Mapping[str, np.ndarray]]]) -> str:
  """Writes `assets.extra/tf_serving_warmup_requests` (TFRecord of PredictionLog).

  TF Serving runs them when it loads the version, so the first real request
  does not pay for lazy initialisation (e.g. building the ScaNN searcher).

  Args:
    version_dir: the SavedModel directory.
    model_name: the served model name.
    requests: (signature name, {input alias: array}) pairs.

  Returns:
    The file path.
  """
  path = os.path.join(version_dir, WARMUP_FILE)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with tf.io.TFRecordWriter(path) as writer:
    for signature, inputs in requests:
      request = predict_pb2.PredictRequest()
      request.model_spec.name = model_name
      request.model_spec.signature_name = signature
      for alias, value in inputs.items():
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
      log = prediction_log_pb2.PredictionLog(
          predict_log=prediction_log_pb2.PredictLog(request=request))
      writer.write(log.SerializeToString())
  return path


def replay_warmup_requests(version_dir: str, loaded: Any) -> int:
  """Runs every warmup request of `version_dir` through `loaded` (a loaded SavedModel).

  Returns:
    The number of requests run. Raises whatever a request raises.
  """
  count = 0
  for record in tf.data.TFRecordDataset(os.path.join(version_dir, WARMUP_FILE)):
    log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
    request = log.predict_log.request
    fn = loaded.signatures[request.model_spec.signature_name or DEFAULT_SIGNATURE]
    fn(**{alias: tf.constant(tf.make_ndarray(proto)) for alias, proto in request.inputs.items()})
    count += 1
  return count


def _sample(n: int, size: int, seed: int) -> np.ndarray:
  size = min(size, n)
  return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False)).astype(np.int32)


def _batched(fn: Callable[..., Mapping[str, tf.Tensor]], values: np.ndarray, key: str,
             batch: int = 256) -> dict[str, np.ndarray]:
  parts: dict[str, list[np.ndarray]] = {}
  for s in range(0, len(values), batch):
    out = fn(**{key: tf.constant(values[s:s + batch])})
    for name, tensor in out.items():
      parts.setdefault(name, []).append(tensor.numpy())
  return {name: np.concatenate(p) for name, p in parts.items()}


def _rows_of(ids: np.ndarray, index: Mapping[str, int]) -> np.ndarray:
  """Item rows of returned raw ids (bytes); "" (no item) -> -1."""
  return np.vectorize(lambda b: index[b.decode("utf-8")] if b else -1,
                      otypes=[np.int64])(ids)


def _check_retrieval(path: str, item_ids: np.ndarray, vectors: np.ndarray, k: int,
                     sample: np.ndarray, exact: bool, bias: np.ndarray | None = None,
                     pivots: "_PivotChecks | None" = None) -> dict[str, Any]:
  """Loads an exported retrieval model and compares it with numpy exact search."""
  loaded = tf.saved_model.load(path)
  replay_warmup_requests(path, loaded)
  result: dict[str, Any] = {"queries": 0}
  index = {raw: i for i, raw in enumerate(item_ids.tolist())}
  if sample.size:
    out = _batched(loaded.signatures["related_items"], item_ids[sample], "item_ids")
    got = _rows_of(out["neighbor_ids"], index)
    queries = retrieval_exact.biased_queries(vectors[sample], bias)
    corpus = retrieval_exact.biased_corpus(vectors, bias)
    want, want_scores = retrieval_exact.top_k(queries, corpus, k, exclude=sample)
    if np.any(got == sample[:, None]):
      raise ExportError(f"{path}: related_items returned the query item itself.")
    recall = scann_index.recall_at_k(got, want)
    identical = float(np.mean(np.all(got == want, axis=1)))
    result = {"queries": int(sample.size), f"recall@{k}": recall, "identical_lists": identical}
    if exact:
      # Identical up to float round-off: a differing slot must be a score tie.
      close = np.isclose(out["scores"], want_scores, rtol=0, atol=1e-5)
      if not (np.all(close) and recall >= 0.99):
        raise ExportError(f"{path}: exact related_items disagrees with numpy exact search "
                          f"(recall@{k}={recall:.4f}).")
  if pivots is not None:
    result.update(_check_pivot_signatures(path, loaded, pivots, index, k, exact))
  return result


@dataclasses.dataclass(frozen=True)
class _PivotChecks:
  """Requests for the pivot signatures and their expected answers (numpy).

  Row q is sampled pivot q: `pivot_ids` bytes `[Q]`, `item_sets` bytes
  `[Q, L]` its graph items ("" padded), `exclude` their rows; the queries are
  the stored pivot embeddings and the item sets' embeddings by
  `LayerwiseInference.pivot_embeddings` with uniform weights, as
  `retrieval_exact.biased_queries` rows against `corpus`; `want_*` the exact
  top-k (indices, scores) of each.
  """

  pivot_ids: np.ndarray
  item_sets: np.ndarray
  exclude: list[np.ndarray]
  corpus: np.ndarray
  pivot_queries: np.ndarray
  set_queries: np.ndarray
  want_pivot: tuple[np.ndarray, np.ndarray]
  want_set: tuple[np.ndarray, np.ndarray]
  set_cosine_to_stored: np.ndarray


def _pivot_checks(model, tables: pipeline.SamplingTables, graph: graph_lib.Graph,
                  h_last: np.ndarray, pivot_vectors: np.ndarray, vectors: np.ndarray,
                  bias: np.ndarray | None, k: int, sample: np.ndarray,
                  batch_size: int) -> _PivotChecks:
  rows = [np.asarray(graph.pivot_to_item.row(int(p)), np.int64) for p in sample]
  width = max([1] + [len(r) for r in rows])
  ids = np.full((len(rows), width), -1, np.int64)
  weights = np.zeros((len(rows), width), np.float32)
  item_sets = np.full((len(rows), width), b"", dtype=object)
  raw = np.asarray(graph.item_ids)
  for q, r in enumerate(rows):
    ids[q, :len(r)] = r
    weights[q, :len(r)] = 1.0 / len(r)  # the request path's uniform weights
    item_sets[q, :len(r)] = [raw[i].encode("utf-8") for i in r]
  # The offline path, on the same h^{K-1} table as the export.
  runner = inference.LayerwiseInference(model, tables, batch_size=batch_size)
  runner.last_inputs = h_last
  z_set = runner.pivot_embeddings(ids, weights)
  corpus = retrieval_exact.biased_corpus(vectors, bias)
  pivot_queries = retrieval_exact.biased_queries(pivot_vectors[sample], bias)
  set_queries = retrieval_exact.biased_queries(z_set, bias)
  return _PivotChecks(
      pivot_ids=np.array([str(graph.pivot_ids[p]).encode("utf-8") for p in sample], object),
      item_sets=item_sets, exclude=rows, corpus=corpus, pivot_queries=pivot_queries,
      set_queries=set_queries,
      want_pivot=retrieval_exact.top_k(pivot_queries, corpus, k, exclude=rows),
      want_set=retrieval_exact.top_k(set_queries, corpus, k, exclude=rows),
      set_cosine_to_stored=_cosines(z_set, pivot_vectors[sample]))


def _check_pivot_signatures(path: str, loaded: Any, checks: _PivotChecks,
                            index: Mapping[str, int], k: int, exact: bool) -> dict[str, Any]:
  """`items_for_pivot` / `items_for_item_set` against numpy (see the module docstring)."""
  result = {}
  for signature, key, requests, queries, (want, want_scores) in (
      ("items_for_pivot", "pivot_ids", checks.pivot_ids, checks.pivot_queries,
       checks.want_pivot),
      ("items_for_item_set", "item_ids", checks.item_sets, checks.set_queries,
       checks.want_set)):
    out = _batched(loaded.signatures[signature], requests, key, batch=64)
    got, scores = _rows_of(out["neighbor_ids"], index), out["scores"]
    if any(np.isin(got[q], excluded).any() for q, excluded in enumerate(checks.exclude)):
      raise ExportError(f"{path}: {signature} returned an excluded item (a given or graph item "
                        "of the pivot).")
    found = got >= 0
    # Each score is the query's inner product with the returned item: for
    # item sets, with the offline embedding (LayerwiseInference.pivot_embeddings).
    recomputed = np.einsum("qd,qkd->qk", queries, checks.corpus[np.maximum(got, 0)])
    diff = float(np.max(np.abs(recomputed - scores)[found], initial=0.0))
    if diff > 1e-4 or not np.all(np.isneginf(scores[~found])):
      raise ExportError(f"{path}: {signature} scores differ from the offline embeddings' by up "
                        f"to {diff:.3g} (tolerance 1e-4) or padding is not -inf.")
    recall = scann_index.recall_at_k(got, want)
    result[signature] = {"queries": int(got.shape[0]), f"recall@{k}": recall,
                         "identical_lists": float(np.mean(np.all(got == want, axis=1))),
                         "max_abs_score_diff": diff}
    if exact and not (np.all(np.isclose(scores, want_scores, rtol=0, atol=1e-4))
                      and recall >= 0.99):
      raise ExportError(f"{path}: exact {signature} disagrees with numpy exact search "
                        f"(recall@{k}={recall:.4f}).")
  return result


def existing_item_inputs(graph: graph_lib.Graph, tables: pipeline.SamplingTables,
                         items: np.ndarray, dense_dim: int | None = None) -> dict[str, np.ndarray]:
  """`embed_new_items` inputs describing EXISTING `items` (own features and pivots).

  Used to check the cold-start path against `embed_items`. Sparse features are
  the (truncated) ones the model was trained with; pivots are padded with "".

  Returns:
    {"dense": [B, D] (if D > 0), "sparse_<name>": int32 [B, L], "pivot_ids":
    bytes [B, P]}.
  """
  items = np.asarray(items, np.int64)
  out: dict[str, np.ndarray] = {}
  if (dense_dim if dense_dim is not None else tables.dense.shape[1]):
    out["dense"] = np.asarray(tables.dense[items], np.float32)
  for feature, values in zip(graph.features.sparse, tables.sparse):
    out[f"sparse_{feature.name}"] = np.asarray(values[items], np.int32)
  rows = [graph.pivot_ids[graph.item_to_pivot.row(int(i))] for i in items]
  width = max([1] + [len(r) for r in rows])
  pivots = np.full((len(items), width), b"", dtype=object)
  for b, r in enumerate(rows):
    pivots[b, :len(r)] = [p.encode("utf-8") for p in r.tolist()]
  out["pivot_ids"] = pivots
  return out


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  return np.sum(a * b, axis=1) / np.maximum(
      np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def _check_embedder(path: str, graph: graph_lib.Graph, tables: pipeline.SamplingTables,
                    vectors: np.ndarray, sample: np.ndarray, inductive: bool
                    ) -> dict[str, Any]:
  """Loads the embedder; embed_items must return the rows, embed_new_items unit vectors."""
  loaded = tf.saved_model.load(path)
  replay_warmup_requests(path, loaded)
  out = _batched(loaded.signatures["embed_items"], np.asarray(graph.item_ids)[sample],
                 "item_ids")
  if not np.allclose(out["embeddings"], vectors[sample], atol=1e-6):
    raise ExportError(f"{path}: embed_items does not return the exported embeddings.")
  if not inductive:
    return {}
  fn = loaded.signatures["embed_new_items"]
  inputs = existing_item_inputs(graph, tables, sample)
  z = fn(**{key: tf.constant(value) for key, value in inputs.items()})["embeddings"].numpy()
  norms = np.linalg.norm(z, axis=1)
  # The head L2-normalises: a row is a unit vector (or 0 if every unit is dead).
  if not np.all(np.isfinite(z)) or not np.all((np.abs(norms - 1) < 1e-3) | (norms < 1e-6)):
    raise ExportError(f"{path}: embed_new_items returned non-finite or non-unit vectors.")
  cos = _cosines(z, vectors[sample])
  # Existing items re-embedded through the cold-start path: close to their
  # embed_items vectors, not equal (one-hop neighborhood incl. the item itself).
  return {"existing_items": int(sample.size), "cosine_to_embed_items_mean": float(cos.mean()),
          "cosine_to_embed_items_min": float(cos.min())}


def _prepare_pivots(model, graph: graph_lib.Graph, tables: pipeline.SamplingTables,
                    config: ExportConfig, transformed_last: np.ndarray, h_last: np.ndarray,
                    pivot_vectors: np.ndarray, vectors: np.ndarray, bias: np.ndarray | None,
                    vocab_file: str) -> tuple[PivotTables, "_PivotChecks | None", dict]:
  """Checks the stored pivot embeddings; the retrieval models' `PivotTables`,
  the expected answers of sampled pivots and the report's "pivots" entry."""
  diff = check_pivot_consistency(
      model, tables, transformed_last, h_last, pivot_vectors,
      _sample(graph.num_pivots, config.consistency_sample, config.seed + 2),
      config.consistency_tolerance)
  pivot_tables = PivotTables(model=model, vocab_file=vocab_file, vectors=pivot_vectors,
                             pivot_to_item=graph.pivot_to_item, last_inputs=h_last)
  with_items = np.flatnonzero(graph.pivot_to_item.degrees() > 0)
  sample = with_items[_sample(with_items.size, config.recall_queries or 64, config.seed + 3)]
  checks = None
  cosine = np.zeros(0)
  if sample.size:
    checks = _pivot_checks(model, tables, graph, h_last, pivot_vectors, vectors, bias,
                           config.num_neighbors, sample, config.batch_size)
    cosine = checks.set_cosine_to_stored
  report = {"pivots": {
      "num_pivots": graph.num_pivots,
      "item_set_weights": "uniform over the given (non-padding) item ids",
      "stored_pivot_consistency_max_abs_diff": diff,
      # How close a known pivot's graph items (uniform weights) come to its
      # stored embedding (walk-based neighborhood).
      "item_set_cosine_to_stored_mean": float(cosine.mean()) if cosine.size else None,
      "item_set_cosine_to_stored_min": float(cosine.min()) if cosine.size else None}}
  return pivot_tables, checks, report


def export_models(
    export_base: str | os.PathLike,
    *,
    model,
    graph: graph_lib.Graph,
    tables: pipeline.SamplingTables,
    embeddings: np.ndarray,
    config: ExportConfig = ExportConfig(),
    version: int | None = None,
    source: Mapping[str, Any] | None = None,
    item_bias: np.ndarray | None = None,
    pivot_embeddings: np.ndarray | None = None,
) -> dict[str, Any]:
  """Builds, checks and atomically publishes one version of each requested model.

  Args:
    export_base: EXPORT_BASE (created if needed).
    model: the trained `PinSageModel`.
    graph: its graph (item and pivot ids, pivot -> item CSR).
    tables: the graph's `SamplingTables` (the training neighborhood table).
    embeddings: float32 `[N, dim]` the inference job's output, row i = item i.
    config: what to export.
    version: the version number; None = `next_version`. Must not exist yet
      for any requested model.
    source: JSON-serialisable provenance recorded in every report.
    item_bias: float32 `[N]` item biases of the embeddings (required when
      the model has `item_bias`, refused otherwise); the retrieval models add
      them to every score.
    pivot_embeddings: float32 `[M, dim]`, row p = graph pivot p embedded
      from its graph items (the embeddings directory's
      `pivot_embeddings_graph.npy`). Pass it for a model trained with the
      pivot objective (`ExperimentConfig.learns_pivots`): the retrieval
      models then also get `items_for_pivot` and `items_for_item_set`.

  Returns:
    A summary: version, each model's path and report, the config files.

  Raises:
    FileExistsError: `version` already exists.
    ValueError: inconsistent inputs.
    ExportError: a built model failed its checks.
    Nothing is published in any failure case.
  """
  started = time.perf_counter()
  export_base = os.path.abspath(os.fspath(export_base))
  vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
  n = graph.num_items
  if vectors.ndim != 2 or vectors.shape[0] != n:
    raise ValueError(f"embeddings must be [{n}, dim] (one row per graph item), got "
                     f"{vectors.shape}.")
  if tables.num_items != n:
    raise ValueError(f"tables hold {tables.num_items} items, the graph {n}.")
  if model.config.embedding_dim != vectors.shape[1]:
    raise ValueError(f"embeddings have dim {vectors.shape[1]} but the model's embedding_dim is "
                     f"{model.config.embedding_dim}.")
  bias = None
  if bool(getattr(model.config, "item_bias", False)) != (item_bias is not None):
    raise ValueError("the model was trained with item_bias but no item biases were given"
                     if item_bias is None else
                     "item biases were given but the model has no item_bias.")
  if item_bias is not None:
    bias = np.asarray(item_bias, np.float32)
    if bias.shape != (n,) or not np.all(np.isfinite(bias)):
      raise ValueError(f"item_bias must be [{n}] finite floats, got shape {bias.shape}.")
  k = config.num_neighbors
  if not 0 < k < n:
    raise ValueError(f"num_neighbors={k} must lie in [1, {n - 1}] for {n} items.")
  pivot_vectors = None
  if pivot_embeddings is not None:
    pivot_vectors = np.ascontiguousarray(pivot_embeddings, dtype=np.float32)
    if (pivot_vectors.shape != (graph.num_pivots, vectors.shape[1])
        or not np.all(np.isfinite(pivot_vectors))):
      raise ValueError(f"pivot_embeddings must be [{graph.num_pivots}, {vectors.shape[1]}] finite "
                       f"floats (one row per graph pivot), got {pivot_vectors.shape}.")
  models = tuple(m for m in ALL_MODELS if m in config.models)
  os.makedirs(export_base, exist_ok=True)
  if version is None:
    version = next_version(export_base, models)
  if not isinstance(version, int) or version < 1:
    raise ValueError(f"version must be a positive int, got {version!r}.")
  for name in models:
    dest = os.path.join(export_base, name, str(version))
    if os.path.exists(dest):
      raise FileExistsError(f"{dest} already exists; versions are immutable, pass another "
                            f"--version or omit it (next: {next_version(export_base, models)}).")
  item_ids = np.asarray(graph.item_ids)
  sample = _sample(n, config.recall_queries, config.seed)  # recall@k queries
  # The exact model and the embedder are always checked, on a few items at least.
  check_sample = sample if sample.size else _sample(n, 64, config.seed)
  created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  common = {"format": "pinsage_tf.export", "version": version, "created": created,
            "num_items": n, "embedding_dim": int(vectors.shape[1]),
            "num_neighbors": k, "item_bias": bias is not None, "source": dict(source or {})}

  staging = tempfile.mkdtemp(prefix=".staging-", dir=export_base)
  built: dict[str, str] = {}
  reports: dict[str, dict[str, Any]] = {}
  try:
    item_vocab = os.path.join(staging, "item_ids.txt")
    _write_vocab(item_vocab, item_ids, "item id", forbid_empty=True)

    warm_ids = np.char.encode(item_ids[:2].astype(str), "utf-8").astype(object)
    warm_retrieval = [("related_items", {"item_ids": warm_ids}),
                      ("related_items_by_embedding", {"embeddings": vectors[:2]})]
    layers: list[Any] = []  # [transformed, h^{K-1}, consistency diff], computed once

    def last_layers() -> list[Any]:
      if not layers:
        transformed, h_last = layer_tables(model, tables, batch_size=config.batch_size)
        diff = check_consistency(model, tables, transformed, h_last, vectors,
                                 _sample(n, config.consistency_sample, config.seed + 1),
                                 config.consistency_tolerance)
        layers.extend([transformed, h_last, diff])
      return layers

    pivot_vocab = os.path.join(staging, "pivot_ids.txt")

    def pivot_vocab_file() -> str:
      if not os.path.exists(pivot_vocab):
        _write_vocab(pivot_vocab, graph.pivot_ids, "pivot id", forbid_empty=True)
      return pivot_vocab

    pivot_tables = pivot_checks = None
    pivot_report: dict[str, Any] = {}
    if pivot_vectors is not None and {RETRIEVAL, RETRIEVAL_EXACT} & set(models):
      transformed, h_last, _ = last_layers()
      pivot_tables, pivot_checks, pivot_report = _prepare_pivots(
          model, graph, tables, config, transformed[-1], h_last, pivot_vectors, vectors, bias,
          pivot_vocab_file())
      warm_sets = np.array([[warm_ids[0], warm_ids[-1]], [warm_ids[-1], b""]], object)
      warm_retrieval += [
          ("items_for_pivot", {"pivot_ids": np.array(
              [str(p).encode("utf-8") for p in graph.pivot_ids[:2]], object)}),
          ("items_for_item_set", {"item_ids": warm_sets})]

    def build(name: str, module: tf.Module, signatures: Mapping[str, Any],
              options: tf.saved_model.SaveOptions | None, extra: Mapping[str, Any],
              warmup: Sequence[tuple[str, Mapping[str, np.ndarray]]]) -> str:
      parent = os.path.join(export_base, name)
      os.makedirs(parent, exist_ok=True)
      tmp = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=parent)
      built[name] = tmp
      os.chmod(tmp, _DIR_MODE)  # mkdtemp's 0700 would hide it from a server user
      t0 = time.perf_counter()
      tf.saved_model.save(module, tmp, signatures=dict(signatures), options=options)
      write_warmup_requests(tmp, name, warmup)
      ops = saved_model_ops(tmp)
      reports[name] = {
          **common, "model": name, **extra,
          "signatures": {key: {**SIGNATURES[key], "input_specs": _input_specs(fn)}
                         for key, fn in signatures.items() if key != DEFAULT_SIGNATURE},
          "default_signature": _default_name(signatures),
          "custom_ops": _custom_ops(ops), "save_seconds": round(time.perf_counter() - t0, 2)}
      return tmp

    if RETRIEVAL_EXACT in models:
      module = RetrievalModule(item_ids, vectors, item_vocab, k, None, config.exact_block_size,
                               bias=bias, pivots=pivot_tables)
      tmp = build(RETRIEVAL_EXACT, module, module.signatures(), None,
                  {"search": {"algorithm": "exact", "block_size": module.block_size},
                   **pivot_report}, warm_retrieval)
      reports[RETRIEVAL_EXACT]["check"] = _check_retrieval(
          tmp, item_ids, vectors, k, check_sample, exact=True, bias=bias, pivots=pivot_checks)
      _LOG.info("%s: built and checked", RETRIEVAL_EXACT)

    if EMBEDDER in models:
      inductive = is_inductive(model)
      extra: dict[str, Any] = {"embed_new_items": inductive}
      if inductive:
        transformed, _, diff = last_layers()
        extra.update(cold_start={
            "neighborhood": "first-traversal visit distribution, top-T",
            "num_neighbors": tables.num_neighbors, "num_layers": model.config.num_layers,
            "consistency_max_abs_diff": diff})
        module = EmbedderModule(item_vocab, vectors, model=model, transformed=transformed,
                                graph=graph, pivot_vocab_file=pivot_vocab_file(),
                                num_neighbors=tables.num_neighbors)
      else:
        extra["embed_new_items_reason"] = (
            "the model learns a per-item id embedding (a graph without item features), so a "
            "new item has no input representation; only embed_items is exported.")
        module = EmbedderModule(item_vocab, vectors)
      warmup = [("embed_items", {"item_ids": warm_ids})]
      if inductive:
        warmup.append(("embed_new_items", existing_item_inputs(graph, tables, np.arange(1))))
      tmp = build(EMBEDDER, module, module.signatures(), None, extra, warmup)
      reports[EMBEDDER]["check"] = _check_embedder(tmp, graph, tables, vectors,
                                                   check_sample[:256], inductive)
      _LOG.info("%s: built and checked", EMBEDDER)

    if RETRIEVAL in models:
      scann_config = scann_index.resolve_config(n, k + 1, config.scann)
      t0 = time.perf_counter()
      state = scann_index.build_state(retrieval_exact.biased_corpus(vectors, bias), scann_config,
                                      k + 1)
      build_seconds = time.perf_counter() - t0
      module = RetrievalModule(item_ids, vectors, item_vocab, k, state, bias=bias,
                               pivots=pivot_tables,
                               scann_reorder=scann_config.reorder_num_neighbors)
      tmp = build(RETRIEVAL, module, module.signatures(), scann_index.SAVE_OPTIONS,
                  {"search": {"algorithm": "scann", "scann": scann_config.to_json(),
                              "index_build_seconds": round(build_seconds, 2)},
                   **pivot_report}, warm_retrieval)
      # Like related_items' recall, the pivot signatures' is measured only with
      # recall_queries > 0.
      check = _check_retrieval(tmp, item_ids, vectors, k, sample, exact=False, bias=bias,
                               pivots=pivot_checks if sample.size else None)
      reports[RETRIEVAL]["check"] = check
      if check["queries"]:
        _LOG.info("%s: recall@%d = %.4f on %d queries", RETRIEVAL, k, check[f"recall@{k}"],
                  check["queries"])

    for name, tmp in built.items():
      atomic.write_json(os.path.join(tmp, REPORT_FILE), reports[name])
      os.chmod(os.path.join(tmp, REPORT_FILE), _FILE_MODE)
    published = _publish(built, export_base, version)
    built.clear()
  finally:
    for tmp in built.values():
      shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)
  configs = write_models_config(export_base)
  return {
      "version": version,
      "models": {name: {"path": path, "report": reports[name]}
                 for name, path in published.items()},
      "models_config": os.path.join(export_base, MODELS_CONFIG),
      "models_stock_config": os.path.join(export_base, MODELS_STOCK_CONFIG),
      "served": configs,
      "seconds": round(time.perf_counter() - started, 1),
  }


def _input_specs(fn) -> dict[str, str]:
  """Input name -> "dtype [shape]" of a concrete function (flat or dict input)."""
  args, kwargs = fn.structured_input_signature
  specs = dict(kwargs)
  for arg in args:
    if isinstance(arg, Mapping):
      specs.update(arg)
    elif isinstance(arg, tf.TensorSpec):
      specs[arg.name] = arg
  return {name: f"{spec.dtype.name} {[d if d is not None else -1 for d in spec.shape.as_list()]}"
          for name, spec in sorted(specs.items())}


def _default_name(signatures: Mapping[str, Any]) -> str | None:
  default = signatures.get(DEFAULT_SIGNATURE)
  for key, fn in signatures.items():
    if key != DEFAULT_SIGNATURE and fn is default:
      return key
  return None


def _publish(built: Mapping[str, str], export_base: str, version: int) -> dict[str, str]:
  """Renames every built temporary directory to its integer version name.

  All-or-nothing as far as the file system allows: a failed rename moves the
  already published versions back out of sight before re-raising.
  """
  done: list[tuple[str, str]] = []
  try:
    for name, tmp in built.items():
      dest = os.path.join(export_base, name, str(version))
      if os.path.exists(dest):
        raise FileExistsError(f"{dest} appeared during the export (concurrent exporter?).")
      os.rename(tmp, dest)
      done.append((tmp, dest))
  except BaseException:
    for tmp, dest in reversed(done):
      os.rename(dest, tmp)
    raise
  return {name: os.path.join(export_base, name, str(version)) for name in built}
