"""Checks of an export before it is published; a failed check raises and publishes nothing.

`check_consistency` / `check_pivot_consistency` recompute sampled embeddings
from the model and the export-time layer tables (`ValueError`: the embeddings
belong to another model or graph). `check_retrieval` and `check_embedder`
send requests to a built version and compare its answers with numpy
(`ExportError`); they return the report's "check" entry. The answers come
from `saved_model_answers` (the version loaded through TensorFlow, its
warm-up requests replayed) unless the caller passes others
(`artifact_checks.file_answers`: a reused version answered from its files).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf

from pinsage_tf import graph as graph_lib
from pinsage_tf import inference
from pinsage_tf import pipeline
from pinsage_tf import retrieval_exact
from pinsage_tf import scann_index
from pinsage_tf.export import embedder
from pinsage_tf.export import warmup


class ExportError(RuntimeError):
  """A built export failed its checks; nothing was published."""


# (signature key, {input alias: array [B, ...]}) -> {output name: array [B, ...]}: what a
# version answers to a request.
Answers = Callable[[str, Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


def saved_model_answers(path: str) -> Answers:
  """Loads the version at `path`, replays its warm-up requests and answers through it.

  Requests are sent in batches of 256 rows (64 for the pivot signatures,
  whose exclusions grow with the batch).
  """
  loaded = tf.saved_model.load(path)
  warmup.replay_warmup_requests(path, loaded)

  def answers(signature: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return _batched(loaded.signatures[signature], inputs,
                    batch=64 if signature.startswith("items_for_") else 256)
  return answers


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
  # The tables are read in place (no copy of a `[N, d]` table for a sample).
  table = inference.shared_tensor(transformed[-1])
  pooled = conv.pool(tf.gather(table, tables.neighbor_ids[sample]),
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
  h = model.pivot_hidden(inference.shared_tensor(h_last),
                         tables.pivot_neighbor_ids[sample],
                         tables.pivot_neighbor_weights[sample], training=False,
                         transformed=inference.shared_tensor(transformed_last))
  diff = float(np.max(np.abs(model.head(h).numpy() - pivot_vectors[sample])))
  if not diff <= tolerance:
    raise ValueError(
        f"the pivot embeddings differ from the model's by up to {diff:.3g} (tolerance "
        f"{tolerance}); were they computed by this model on this graph? Re-run trainer.infer "
        "with the same model_dir and graph_dir.")
  return diff


@dataclasses.dataclass(frozen=True)
class ItemChecks:
  """`related_items` requests of sampled items and numpy's exact answers.

  Attributes:
    sample: int32 `[Q]` item rows (the queries; each excludes itself).
    want, want_scores: int32 / float32 `[Q, k]` exact top-k of their
      embeddings (`retrieval_exact.top_k`, biases added).
  """

  sample: np.ndarray
  want: np.ndarray
  want_scores: np.ndarray


def item_checks(vectors: np.ndarray, bias: np.ndarray | None, k: int,
                sample: np.ndarray) -> ItemChecks:
  """The `ItemChecks` of the `sample` items: computed once, compared with every model."""
  queries = retrieval_exact.biased_queries(vectors[sample], bias)
  corpus = retrieval_exact.biased_corpus(vectors, bias)
  want, want_scores = retrieval_exact.top_k(queries, corpus, k, exclude=sample)
  return ItemChecks(sample=sample, want=want, want_scores=want_scores)


def check_retrieval(path: str, item_ids: np.ndarray, k: int, items: ItemChecks | None,
                    exact: bool, pivots: PivotChecks | None = None,
                    answers: Answers | None = None) -> dict[str, Any]:
  """Queries an exported retrieval model and compares it with numpy exact search.

  `related_items` of the `items` sample must never return the query itself;
  the exact model must return numpy's lists (up to score ties), the ScaNN
  model's recall@k is measured. With `pivots`, the pivot signatures are
  checked too (`_check_pivot_signatures`). `answers`: how the version
  answers (None: `saved_model_answers(path)`).

  Returns:
    The report's "check" entry: query count, recall@k, share of identical lists.

  Raises:
    ExportError: a check failed.
  """
  answers = answers or saved_model_answers(path)
  result: dict[str, Any] = {"queries": 0}
  index = {raw: i for i, raw in enumerate(item_ids.tolist())}
  if items is not None and items.sample.size:
    sample = items.sample
    out = answers("related_items", {"item_ids": item_ids[sample]})
    got = _rows_of(out["neighbor_ids"], index)
    if np.any(got == sample[:, None]):
      raise ExportError(f"{path}: related_items returned the query item itself.")
    recall = scann_index.recall_at_k(got, items.want)
    identical = float(np.mean(np.all(got == items.want, axis=1)))
    result = {"queries": int(sample.size), f"recall@{k}": recall, "identical_lists": identical}
    if exact:
      # Identical up to float round-off: a differing slot must be a score tie.
      close = np.isclose(out["scores"], items.want_scores, rtol=0, atol=1e-5)
      if not (np.all(close) and recall >= 0.99):
        raise ExportError(f"{path}: exact related_items disagrees with numpy exact search "
                          f"(recall@{k}={recall:.4f}).")
  if pivots is not None:
    result.update(_check_pivot_signatures(path, answers, pivots, index, k, exact))
  return result


@dataclasses.dataclass(frozen=True)
class PivotChecks:
  """Requests for the pivot signatures and their expected answers (numpy).

  Row q is sampled pivot q: `pivot_ids` bytes `[Q]`, `item_sets` bytes
  `[Q, L]` its graph items ("" padded), `exclude` their rows; the queries are
  the stored pivot embeddings and the item sets' embeddings computed as
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


def pivot_checks(model, graph: graph_lib.Graph, h_last: np.ndarray,
                 transformed_last: np.ndarray, pivot_vectors: np.ndarray, vectors: np.ndarray,
                 bias: np.ndarray | None, k: int, sample: np.ndarray) -> PivotChecks:
  """The `PivotChecks` of the `sample` pivots (each with at least one item).

  `h_last` `[N, hidden]` and `transformed_last` `[N, neighbor_dim]` are
  h^{K-1} of every item and the last convolution's neighbor transform of it
  (`embedder.layer_tables`).
  """
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
  # The offline path (`LayerwiseInference.pivot_embeddings`: the last
  # convolution over the items' h^{K-1} and the head), on the export's tables.
  z_set = model.head(model.pivot_hidden(
      inference.shared_tensor(h_last), np.maximum(ids, 0).astype(np.int32), weights,
      training=False,
      transformed=inference.shared_tensor(transformed_last))).numpy()
  corpus = retrieval_exact.biased_corpus(vectors, bias)
  pivot_queries = retrieval_exact.biased_queries(pivot_vectors[sample], bias)
  set_queries = retrieval_exact.biased_queries(z_set, bias)
  return PivotChecks(
      pivot_ids=np.array([str(graph.pivot_ids[p]).encode("utf-8") for p in sample], object),
      item_sets=item_sets, exclude=rows, corpus=corpus, pivot_queries=pivot_queries,
      set_queries=set_queries,
      want_pivot=retrieval_exact.top_k(pivot_queries, corpus, k, exclude=rows),
      want_set=retrieval_exact.top_k(set_queries, corpus, k, exclude=rows),
      set_cosine_to_stored=_cosines(z_set, pivot_vectors[sample]))


def _check_pivot_signatures(path: str, answers: Answers, checks: PivotChecks,
                            index: Mapping[str, int], k: int, exact: bool) -> dict[str, Any]:
  """`items_for_pivot` / `items_for_item_set` against numpy.

  Neither may return an excluded item; every score must be the query's inner
  product with the returned item within 1e-4 (for item sets, the embedding computed as
  `LayerwiseInference.pivot_embeddings` with the same uniform weights), padding
  -inf. The exact model must return numpy's exact top-k up to score ties; the
  ScaNN model's recall@k is reported.
  """
  result = {}
  for signature, key, requests, queries, (want, want_scores) in (
      ("items_for_pivot", "pivot_ids", checks.pivot_ids, checks.pivot_queries,
       checks.want_pivot),
      ("items_for_item_set", "item_ids", checks.item_sets, checks.set_queries,
       checks.want_set)):
    out = answers(signature, {key: requests})
    got, scores = _rows_of(out["neighbor_ids"], index), out["scores"]
    if _any_excluded(got, checks.exclude):
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


def check_embedder(path: str, graph: graph_lib.Graph, tables: pipeline.SamplingTables,
                   vectors: np.ndarray, sample: np.ndarray, inductive: bool,
                   answers: Answers | None = None) -> dict[str, Any]:
  """embed_items must return the rows, embed_new_items unit vectors.

  `answers`: how the version answers (None: `saved_model_answers(path)`).
  """
  answers = answers or saved_model_answers(path)
  out = answers("embed_items", {"item_ids": np.asarray(graph.item_ids)[sample]})
  if not np.allclose(out["embeddings"], vectors[sample], atol=1e-6):
    raise ExportError(f"{path}: embed_items does not return the exported embeddings.")
  if not inductive:
    return {}
  inputs = embedder.existing_item_inputs(graph, tables, sample)
  z = np.asarray(answers("embed_new_items", inputs)["embeddings"])
  norms = np.linalg.norm(z, axis=1)
  # The head L2-normalises: a row is a unit vector (or 0 if every unit is dead).
  if not np.all(np.isfinite(z)) or not np.all((np.abs(norms - 1) < 1e-3) | (norms < 1e-6)):
    raise ExportError(f"{path}: embed_new_items returned non-finite or non-unit vectors.")
  cos = _cosines(z, vectors[sample])
  # Existing items re-embedded through the cold-start path: close to their
  # embed_items vectors, not equal (one-hop neighborhood incl. the item itself).
  return {"existing_items": int(sample.size), "cosine_to_embed_items_mean": float(cos.mean()),
          "cosine_to_embed_items_min": float(cos.min())}


def _any_excluded(got: np.ndarray, exclude: Sequence[np.ndarray]) -> bool:
  """Whether some row q of `got [Q, k]` holds an item of `exclude[q]`."""
  width = int(max(got.max(initial=0), max((int(e.max(initial=0)) for e in exclude),
                                          default=0))) + 1
  excluded = np.concatenate([np.zeros(0, np.int64)] + [
      q * width + np.asarray(e, np.int64) for q, e in enumerate(exclude)])
  rows = np.arange(got.shape[0], dtype=np.int64)[:, None]
  returned = (rows * width + got)[got >= 0]
  return bool(np.isin(returned, excluded).any())


def _batched(fn: Callable[..., Mapping[str, tf.Tensor]], inputs: Mapping[str, np.ndarray],
             batch: int) -> dict[str, np.ndarray]:
  """Runs `fn(**inputs)` batch by batch of rows; each output concatenated over the batches."""
  parts: dict[str, list[np.ndarray]] = {}
  rows = len(next(iter(inputs.values())))
  for s in range(0, rows, batch):
    out = fn(**{key: tf.constant(value[s:s + batch]) for key, value in inputs.items()})
    for name, tensor in out.items():
      parts.setdefault(name, []).append(tensor.numpy())
  return {name: np.concatenate(p) for name, p in parts.items()}


def _rows_of(ids: np.ndarray, index: Mapping[str, int]) -> np.ndarray:
  """Item rows of returned raw ids (bytes); "" (no item) -> -1."""
  return np.vectorize(lambda b: index[b.decode("utf-8")] if b else -1,
                      otypes=[np.int64])(ids)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Row-wise cosine of `a, b [B, d]` (0 for a zero row)."""
  return np.sum(a * b, axis=1) / np.maximum(
      np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
