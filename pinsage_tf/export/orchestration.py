"""`export_models`: builds, checks and atomically publishes one version of each model.

Every model is built and checked in a temporary directory TF Serving ignores
(`EXPORT_BASE/<model>/.tmp-<version>-*`); all of them are renamed to their
integer version only once every requested model passed its checks, then the
model server config files are rewritten. A failure publishes nothing.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import shutil
import tempfile
import time
from typing import Any, Mapping, Sequence

from absl import logging
import numpy as np
import tensorflow as tf

from pinsage_tf import atomic
from pinsage_tf import graph as graph_lib
from pinsage_tf import pipeline
from pinsage_tf import retrieval_exact
from pinsage_tf import retrieval_pybind
from pinsage_tf import scann_index
from pinsage_tf.export import artifact_checks
from pinsage_tf.export import checks
from pinsage_tf.export import config as config_lib
from pinsage_tf.export import embedder
from pinsage_tf.export import ops
from pinsage_tf.export import retrieval
from pinsage_tf.export import reuse
from pinsage_tf.export import signatures as signatures_lib
from pinsage_tf.export import versions
from pinsage_tf.export import warmup

# Fewest queries of a model check drawn among fresh rows (`checks_on_fresh_rows`).
MIN_FRESH_CHECK_QUERIES = 64

# (signature name, {input alias: array}) pairs replayed when a version loads.
_Requests = Sequence[tuple[str, Mapping[str, np.ndarray]]]


def export_models(
    export_base: str | os.PathLike,
    *,
    model,
    graph: graph_lib.Graph,
    tables: pipeline.SamplingTables,
    embeddings: np.ndarray,
    config: config_lib.ExportConfig = config_lib.ExportConfig(),
    version: int | None = None,
    source: Mapping[str, Any] | None = None,
    item_bias: np.ndarray | None = None,
    pivot_embeddings: np.ndarray | None = None,
    fresh_items: np.ndarray | None = None,
    fresh_pivots: np.ndarray | None = None,
    reuse_graphs: bool = False,
    update_index: bool = False,
    checks_on_fresh_rows: bool = False,
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
    fresh_items, fresh_pivots: int rows of the item / pivot embeddings that
      were computed on `tables` (a bounded refresh keeps the other rows from
      the previous tables, `pinsage_tf.refresh`); the consistency checks
      sample only these. None: every row.
    reuse_graphs: a model whose newest published version was exported from
      the same model with the same settings (its report's `graph_spec`) gets
      that version's graph with this export's variables and vocabularies,
      without tracing or `tf.saved_model.save` (`pinsage_tf.export.reuse`;
      what a refresh does). Such a version is checked on its files unless
      `config.verify_reused` is "load" (`artifact_checks`); its report's
      `verification` says how.
    update_index: the ScaNN index is the newest published
      `pinsage_retrieval` version's with the changed and new rows upserted,
      without training (`scann_index.update_state`), when that version was
      built with the same index settings and the rows upserted since the
      last training stay within `scann_index.MAX_UPDATED_SHARE` of the
      corpus; trained anew otherwise. Its recall@k is measured alike.
    checks_on_fresh_rows: the checks that query the built models
      (`related_items`, the pivot signatures, ScaNN's recall@k) draw their
      queries among `fresh_items` / `fresh_pivots` only, as many as the
      fresh rows' share of `config.recall_queries` (at least
      `MIN_FRESH_CHECK_QUERIES`): the other rows are a previous version's,
      checked when it was built (what a bounded refresh does). The report's
      `check_queries` says which rows were drawn.

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
  inputs = _validated_inputs(model, graph, tables, embeddings, config, item_bias,
                             pivot_embeddings, fresh_items, fresh_pivots, checks_on_fresh_rows)
  models = tuple(m for m in config_lib.ALL_MODELS if m in config.models)
  os.makedirs(export_base, exist_ok=True)
  version = _new_version(export_base, models, version)
  with _Staging(export_base, version, inputs, source, reuse_graphs, update_index) as staging:
    staging.item_vocab_file()  # bad item ids fail before anything is computed
    pivots = _NO_PIVOTS
    retrieval_models = {config_lib.RETRIEVAL, config_lib.RETRIEVAL_EXACT} & set(models)
    if inputs.pivot_vectors is not None and retrieval_models:
      pivots = _prepare_pivots(staging)
    if config_lib.RETRIEVAL_EXACT in models:
      _build_exact_retrieval(staging, pivots)
    if config_lib.EMBEDDER in models:
      _build_embedder(staging)
    if config_lib.RETRIEVAL in models:
      _build_scann_retrieval(staging, pivots)
    published = staging.publish()
  served = versions.write_models_config(export_base)
  return {
      "version": version,
      "models": {name: {"path": path, "report": staging.reports[name]}
                 for name, path in published.items()},
      "models_config": os.path.join(export_base, versions.MODELS_CONFIG),
      "models_stock_config": os.path.join(export_base, versions.MODELS_STOCK_CONFIG),
      "served": served,
      "seconds": round(time.perf_counter() - started, 1),
  }


@dataclasses.dataclass(frozen=True)
class _Inputs:
  """The validated arguments of `export_models` and the item samples of its checks.

  Attributes:
    model, graph, tables, config: as given to `export_models`.
    item_ids: unicode `[N]` raw item ids.
    vectors: float32 `[N, dim]` item embeddings.
    bias: float32 `[N]` item biases, or None.
    pivot_vectors: float32 `[M, dim]` pivot embeddings, or None.
    recall_sample: int32 items whose recall@k is measured (empty when
      `config.recall_queries` is 0).
    check_sample: int32 items the exact model and the embedder are checked
      on (a few even when `recall_sample` is empty).
    fresh_items, fresh_pivots: int64 rows the consistency checks sample from.
    checks_on_fresh_rows: the model checks query fresh rows only.
  """

  model: Any
  graph: graph_lib.Graph
  tables: pipeline.SamplingTables
  config: config_lib.ExportConfig
  item_ids: np.ndarray
  vectors: np.ndarray
  bias: np.ndarray | None
  pivot_vectors: np.ndarray | None
  recall_sample: np.ndarray
  check_sample: np.ndarray
  fresh_items: np.ndarray
  fresh_pivots: np.ndarray
  checks_on_fresh_rows: bool = False

  @property
  def k(self) -> int:
    return self.config.num_neighbors


def _validated_inputs(model, graph: graph_lib.Graph, tables: pipeline.SamplingTables,
                      embeddings: np.ndarray, config: config_lib.ExportConfig,
                      item_bias: np.ndarray | None, pivot_embeddings: np.ndarray | None,
                      fresh_items: np.ndarray | None, fresh_pivots: np.ndarray | None,
                      checks_on_fresh_rows: bool) -> _Inputs:
  """Checks that the arguments of `export_models` fit together (ValueError otherwise)."""
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
  fresh_items = _rows_arg("fresh_items", fresh_items, n)
  everything = np.arange(n, dtype=np.int64)
  recall_sample = _check_rows(everything, fresh_items, n, config.recall_queries, config.seed,
                              checks_on_fresh_rows)
  return _Inputs(model=model, graph=graph, tables=tables, config=config,
                 item_ids=np.asarray(graph.item_ids), vectors=vectors, bias=bias,
                 pivot_vectors=pivot_vectors, recall_sample=recall_sample,
                 check_sample=recall_sample if recall_sample.size else _check_rows(
                     everything, fresh_items, n, 64, config.seed, checks_on_fresh_rows),
                 fresh_items=fresh_items,
                 fresh_pivots=_rows_arg("fresh_pivots", fresh_pivots, graph.num_pivots),
                 checks_on_fresh_rows=checks_on_fresh_rows)


def _rows_arg(name: str, rows: np.ndarray | None, count: int) -> np.ndarray:
  """`rows` as sorted unique int64 in [0, count) (all of them for None); ValueError else."""
  if rows is None:
    return np.arange(count, dtype=np.int64)
  rows = np.unique(np.asarray(rows).reshape(-1))
  if rows.size and (not np.issubdtype(rows.dtype, np.integer) or rows[0] < 0
                    or rows[-1] >= count):
    raise ValueError(f"{name} must be int rows in [0, {count}).")
  return rows.astype(np.int64)


def _check_rows(candidates: np.ndarray, fresh: np.ndarray, total: int, queries: int, seed: int,
                on_fresh: bool) -> np.ndarray:
  """The int32 rows a model check queries: `queries` of `candidates` drawn with `seed`.

  With `on_fresh` and fewer `fresh` rows than `total`, only candidates among
  them are drawn, as many as their share of `queries` (at least
  `MIN_FRESH_CHECK_QUERIES`); all candidates when none is fresh.
  """
  if on_fresh and fresh.size < total:
    pool = np.intersect1d(candidates, fresh)
    if pool.size:
      if queries:
        queries = min(queries, max(MIN_FRESH_CHECK_QUERIES,
                                   math.ceil(queries * fresh.size / total)))
      candidates = pool
  return candidates[_sample(candidates.size, queries, seed)].astype(np.int32)


def _sample_rows(rows: np.ndarray, size: int, seed: int) -> np.ndarray:
  """`_sample` drawn among `rows` (int32, ascending)."""
  return rows[_sample(rows.size, size, seed)].astype(np.int32)


def _new_version(export_base: str, models: Sequence[str], version: int | None) -> int:
  """`version`, or the next one when None; it must not exist for any of `models`."""
  if version is None:
    version = versions.next_version(export_base, models)
  if not isinstance(version, int) or version < 1:
    raise ValueError(f"version must be a positive int, got {version!r}.")
  for name in models:
    dest = os.path.join(export_base, name, str(version))
    if os.path.exists(dest):
      raise FileExistsError(
          f"{dest} already exists; versions are immutable, pass another --version or omit it "
          f"(next: {versions.next_version(export_base, models)}).")
  return version


class _Staging:
  """The temporary directories of one export and what its models share.

  A context manager: entering creates `EXPORT_BASE/.staging-*` (the id
  vocabularies); `build` saves a model into `EXPORT_BASE/<model>/.tmp-<version>-*`;
  `publish` renames every built model to its version. On exit whatever was
  not published is deleted.
  """

  def __init__(self, export_base: str, version: int, inputs: _Inputs,
               source: Mapping[str, Any] | None, reuse_graphs: bool = False,
               update_index: bool = False):
    self.export_base = export_base
    self.version = version
    self.inputs = inputs
    self.reuse_graphs = reuse_graphs
    self.update_index = update_index
    self.reports: dict[str, dict[str, Any]] = {}
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    self._common_report = {
        "format": "pinsage_tf.export", "version": version, "created": created,
        "num_items": inputs.graph.num_items, "embedding_dim": int(inputs.vectors.shape[1]),
        "num_neighbors": inputs.k, "item_bias": inputs.bias is not None,
        "consistency_checked_rows": {
            "items": int(inputs.fresh_items.size), "of_items": inputs.graph.num_items,
            "pivots": int(inputs.fresh_pivots.size), "of_pivots": inputs.graph.num_pivots},
        "check_queries": {"items": int(inputs.check_sample.size),
                          "drawn_from": ("fresh rows" if inputs.checks_on_fresh_rows
                                         and inputs.fresh_items.size < inputs.graph.num_items
                                         else "all rows")},
        "source": dict(source or {})}
    self._built: dict[str, str] = {}
    self._dir = ""
    self._layers: tuple[list[np.ndarray], np.ndarray, float] | None = None
    self._item_checks: checks.ItemChecks | None = None

  def __enter__(self) -> _Staging:
    self._dir = tempfile.mkdtemp(prefix=".staging-", dir=self.export_base)
    return self

  def __exit__(self, *exc_info) -> None:
    for tmp in self._built.values():
      shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(self._dir, ignore_errors=True)

  def scratch_path(self, name: str) -> str:
    """A path in the staging directory (deleted on exit), for intermediate files."""
    return os.path.join(self._dir, name)

  def item_vocab_file(self) -> str:
    """The raw item ids, one per line (written on first use)."""
    path = os.path.join(self._dir, "item_ids.txt")
    if not os.path.exists(path):
      _write_vocab(path, self.inputs.item_ids, "item id", forbid_empty=True)
    return path

  def pivot_vocab_file(self) -> str:
    """The raw pivot ids, one per line (written on first use)."""
    path = os.path.join(self._dir, "pivot_ids.txt")
    if not os.path.exists(path):
      _write_vocab(path, self.inputs.graph.pivot_ids, "pivot id", forbid_empty=True)
    return path

  def layer_tables(self) -> tuple[list[np.ndarray], np.ndarray, float]:
    """`embedder.layer_tables` of the model and the consistency diff, computed once.

    The embeddings are checked against them first (`checks.check_consistency`).

    Returns:
      (transformed: K float32 `[N, neighbor_dim]`, h^{K-1} `[N, hidden]`,
      the largest absolute difference of the recomputed embeddings).
    """
    if self._layers is None:
      inputs, config = self.inputs, self.inputs.config
      transformed, h_last = embedder.layer_tables(inputs.model, inputs.tables,
                                                  batch_size=config.batch_size)
      diff = checks.check_consistency(
          inputs.model, inputs.tables, transformed, h_last, inputs.vectors,
          _sample_rows(inputs.fresh_items, config.consistency_sample, config.seed + 1),
          config.consistency_tolerance)
      self._layers = (transformed, h_last, diff)
    return self._layers

  def item_checks(self) -> checks.ItemChecks:
    """`checks.item_checks` of the check sample, computed once for every retrieval model.

    The check sample is the recall sample whenever that is not empty, so the
    exact and the ScaNN model are compared with the same numpy answers.
    """
    if self._item_checks is None:
      inputs = self.inputs
      self._item_checks = checks.item_checks(inputs.vectors, inputs.bias, inputs.k,
                                             inputs.check_sample)
    return self._item_checks

  def checked_on_files(self, name: str) -> bool:
    """Whether `answers(name, ...)` reads the built version's files (needs its module)."""
    previous = self.reports[name]["graph"]["reused_from"]
    return (previous is not None
            and self.inputs.config.verify_reused != config_lib.VERIFY_LOAD)

  def answers(self, name: str, module: tf.Module | None) -> checks.Answers:
    """How the checks query the built version of model `name` (`checks.Answers`).

    A version built from a previous version's graph is read back and
    answered from its files, its warm-up requests too
    (`artifact_checks`), unless `config.verify_reused` is "load"; any other
    version is loaded through TensorFlow (`checks.saved_model_answers`).
    Records which in the report's `verification`.
    """
    tmp, report = self._built[name], self.reports[name]
    previous = report["graph"]["reused_from"]
    if not self.checked_on_files(name):
      report["verification"] = config_lib.VERIFY_LOAD
      return checks.saved_model_answers(tmp)
    if module is None:
      raise ValueError(f"{name}: checks on the version's files need its module.")
    report["verification"] = config_lib.VERIFY_ARTIFACTS
    written = artifact_checks.read_back(tmp, previous, module)
    answers = artifact_checks.file_answers(written, module, self.inputs.model)
    artifact_checks.replay_warmup_requests(tmp, answers)
    return answers

  def build(self, name: str, module: tf.Module, options: tf.saved_model.SaveOptions | None,
            extra: Mapping[str, Any], requests: _Requests) -> str:
    """Saves `module` as a temporary version of model `name`, with warm-up `requests`.

    With `reuse_graphs`, a newest published version whose report records
    the module's `reuse.reusable_spec` lends its graph (`reuse.write_version`:
    nothing is traced); otherwise, or when that graph does not fit, the
    module is traced and saved. Records the model's report: the common
    fields, `extra`, its signatures, the custom ops it uses, its graph spec
    and where its graph came from.

    Returns:
      The temporary version directory.
    """
    spec = reuse.reusable_spec(module)
    parent = os.path.join(self.export_base, name)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{self.version}-", dir=parent)
    self._built[name] = tmp
    os.chmod(tmp, versions.DIR_MODE)  # mkdtemp's 0700 would hide it from a server user
    t0 = time.perf_counter()
    fields = None
    previous = versions.latest_version_dir(parent) if self.reuse_graphs else None
    report = versions.read_report(previous) if previous else None
    if report is not None and report.get("graph_spec") == spec:
      try:
        reuse.write_version(previous, module, tmp)
        fields = {**reuse.previous_report_fields(report),
                  "graph": {"reused_from": previous}}
      except reuse.GraphMismatch as e:
        logging.warning("%s: the graph of %s does not fit (%s); tracing a new one.", name,
                        previous, e)
    if fields is None:
      signatures = module.signatures()
      tf.saved_model.save(module, tmp, signatures=dict(signatures), options=options)
      fields = {
          "signatures": {key: {**signatures_lib.SIGNATURES[key],
                               "input_specs": signatures_lib.input_specs(fn)}
                         for key, fn in signatures.items()
                         if key != signatures_lib.DEFAULT_SIGNATURE},
          "default_signature": signatures_lib.default_signature_key(signatures),
          "custom_ops": ops.custom_ops(ops.saved_model_ops(tmp)),
          "graph": {"reused_from": None}}
    warmup.write_warmup_requests(tmp, name, requests)
    self.reports[name] = {
        **self._common_report, "model": name, **extra, **fields, "graph_spec": spec,
        "save_seconds": round(time.perf_counter() - t0, 2)}
    return tmp

  def publish(self) -> dict[str, str]:
    """Writes each built model's report, then renames all of them to their version.

    Returns:
      Model name -> published version directory.
    """
    for name, tmp in self._built.items():
      path = os.path.join(tmp, versions.REPORT_FILE)
      atomic.write_json(path, self.reports[name])
      os.chmod(path, versions.FILE_MODE)
    published = versions.publish(self._built, self.export_base, self.version)
    self._built.clear()
    return published


@dataclasses.dataclass(frozen=True)
class _Pivots:
  """What a model trained with the pivot objective adds to the retrieval models.

  Attributes:
    tables: what the pivot signatures serve from (None: no pivot signatures).
    expected: the expected answers of sampled pivots (None: not checked).
    report: {"pivots": the report's pivot entry}, or {}.
  """

  tables: retrieval.PivotTables | None
  expected: checks.PivotChecks | None
  report: Mapping[str, Any]


_NO_PIVOTS = _Pivots(tables=None, expected=None, report={})


def _prepare_pivots(staging: _Staging) -> _Pivots:
  """Checks the stored pivot embeddings and samples the pivots to check the signatures on."""
  inputs = staging.inputs
  model, graph, tables, config = inputs.model, inputs.graph, inputs.tables, inputs.config
  transformed, h_last, _ = staging.layer_tables()
  vocab_file = staging.pivot_vocab_file()
  diff = checks.check_pivot_consistency(
      model, tables, transformed[-1], h_last, inputs.pivot_vectors,
      _sample_rows(inputs.fresh_pivots, config.consistency_sample, config.seed + 2),
      config.consistency_tolerance)
  pivot_tables = retrieval.PivotTables(model=model, vocab_file=vocab_file,
                                       vectors=inputs.pivot_vectors,
                                       pivot_to_item=graph.pivot_to_item, last_inputs=h_last)
  with_items = np.flatnonzero(graph.pivot_to_item.degrees() > 0)
  sample = _check_rows(with_items, inputs.fresh_pivots, graph.num_pivots,
                       config.recall_queries or 64, config.seed + 3, inputs.checks_on_fresh_rows)
  expected = None
  cosine = np.zeros(0)
  if sample.size:
    expected = checks.pivot_checks(model, graph, h_last, transformed[-1], inputs.pivot_vectors,
                                   inputs.vectors, inputs.bias, config.num_neighbors, sample)
    cosine = expected.set_cosine_to_stored
  report = {"pivots": {
      "num_pivots": graph.num_pivots,
      "item_set_weights": "uniform over the given (non-padding) item ids",
      "stored_pivot_consistency_max_abs_diff": diff,
      # How close a known pivot's graph items (uniform weights) come to its
      # stored embedding (walk-based neighborhood).
      "item_set_cosine_to_stored_mean": float(cosine.mean()) if cosine.size else None,
      "item_set_cosine_to_stored_min": float(cosine.min()) if cosine.size else None}}
  return _Pivots(tables=pivot_tables, expected=expected, report=report)


def _build_exact_retrieval(staging: _Staging, pivots: _Pivots) -> None:
  """`pinsage_retrieval_exact`: must return numpy's exact top-k on the check sample."""
  inputs = staging.inputs
  module = retrieval.RetrievalModule(
      inputs.item_ids, inputs.vectors, staging.item_vocab_file(), inputs.k, None,
      inputs.config.exact_block_size, bias=inputs.bias, pivots=pivots.tables)
  tmp = staging.build(config_lib.RETRIEVAL_EXACT, module, None,
                      {"search": {"algorithm": "exact", "block_size": module.block_size},
                       **pivots.report},
                      _retrieval_warmup(inputs, pivots))
  staging.reports[config_lib.RETRIEVAL_EXACT]["check"] = checks.check_retrieval(
      tmp, inputs.item_ids, inputs.k, staging.item_checks(), exact=True,
      pivots=pivots.expected, answers=staging.answers(config_lib.RETRIEVAL_EXACT, module))
  logging.info("%s: built and checked", config_lib.RETRIEVAL_EXACT)


def _build_embedder(staging: _Staging) -> None:
  """`pinsage_embedder`, with `embed_new_items` when the model is inductive."""
  inputs = staging.inputs
  model, graph, tables = inputs.model, inputs.graph, inputs.tables
  inductive = embedder.is_inductive(model)
  extra: dict[str, Any] = {"embed_new_items": inductive}
  requests = [("embed_items", {"item_ids": _warm_item_ids(inputs)})]
  if inductive:
    transformed, _, diff = staging.layer_tables()
    extra.update(cold_start={
        "neighborhood": "first-traversal visit distribution, top-T",
        "num_neighbors": tables.num_neighbors, "num_layers": model.config.num_layers,
        "consistency_max_abs_diff": diff})
    module = embedder.EmbedderModule(
        staging.item_vocab_file(), inputs.vectors, model=model, transformed=transformed,
        graph=graph, pivot_vocab_file=staging.pivot_vocab_file(),
        num_neighbors=tables.num_neighbors)
    requests.append(("embed_new_items", embedder.existing_item_inputs(graph, tables,
                                                                      np.arange(1))))
  else:
    extra["embed_new_items_reason"] = (
        "the model learns a per-item id embedding (a graph without item features), so a "
        "new item has no input representation; only embed_items is exported.")
    module = embedder.EmbedderModule(staging.item_vocab_file(), inputs.vectors)
  tmp = staging.build(config_lib.EMBEDDER, module, None, extra, requests)
  staging.reports[config_lib.EMBEDDER]["check"] = checks.check_embedder(
      tmp, graph, tables, inputs.vectors, inputs.check_sample[:256], inductive,
      answers=staging.answers(config_lib.EMBEDDER, module))
  logging.info("%s: built and checked", config_lib.EMBEDDER)


def _build_scann_retrieval(staging: _Staging, pivots: _Pivots) -> None:
  """`pinsage_retrieval`: a ScaNN index; its recall@k is measured on the recall sample.

  With `ScannConfig.target_recall`, the query-time knobs left automatic are
  tuned first (`_tune_scann`), on items outside the recall sample.
  """
  inputs = staging.inputs
  k = inputs.k
  requested = inputs.config.scann
  scann_config = scann_index.resolve_config(inputs.graph.num_items, k + 1, requested)
  corpus = retrieval_exact.biased_corpus(inputs.vectors, inputs.bias)
  artifacts = staging.scratch_path("scann_index")
  t0 = time.perf_counter()
  # One index: the SavedModel's ScaNN state is read back from these files,
  # which the version also carries for `retrieval_pybind`.
  state, index = None, {"trained": True}
  previous = _previous_index(staging, scann_config) if staging.update_index else None
  if previous is not None:
    updated = scann_index.update_state(previous[0], corpus, artifacts,
                                       upserted_before=previous[1])
    if updated is not None:
      state, counts = updated
      index = {"trained": False, "updated_from": previous[0], **counts}
  if state is None:
    shutil.rmtree(artifacts, ignore_errors=True)
    state = scann_index.build_state(corpus, scann_config, k + 1, artifacts_dir=artifacts)
  build_seconds = time.perf_counter() - t0
  scann_config, tuning = _tune_scann(inputs, state, scann_config, corpus)
  module = retrieval.RetrievalModule(
      inputs.item_ids, inputs.vectors, staging.item_vocab_file(), k, state, bias=inputs.bias,
      pivots=pivots.tables, scann_reorder=scann_config.reorder_num_neighbors,
      scann_leaves=scann_config.num_leaves_to_search)
  tmp = staging.build(config_lib.RETRIEVAL, module, scann_index.SAVE_OPTIONS,
                      {"search": {"algorithm": "scann", "scann": scann_config.to_json(),
                                  "tuning": tuning, "index": index,
                                  "index_build_seconds": round(build_seconds, 2),
                                  "pybind_assets": retrieval_pybind.ASSETS_DIR},
                       **pivots.report},
                      _retrieval_warmup(inputs, pivots))
  retrieval_pybind.write_assets(tmp, artifacts, module.pybind_search())
  # A check that loads the version holds its corpus and index: the built ones
  # (and the biased corpus) are released first. File checks read the module.
  kept = module if staging.checked_on_files(config_lib.RETRIEVAL) else None
  del module, state, corpus
  sample = inputs.recall_sample
  # Like related_items' recall, the pivot signatures' is measured only with
  # recall_queries > 0.
  check = checks.check_retrieval(tmp, inputs.item_ids, k,
                                 staging.item_checks() if sample.size else None, exact=False,
                                 pivots=pivots.expected if sample.size else None,
                                 answers=staging.answers(config_lib.RETRIEVAL, kept))
  staging.reports[config_lib.RETRIEVAL]["check"] = check
  if check["queries"]:
    logging.info("%s: recall@%d = %.4f on %d queries", config_lib.RETRIEVAL, k,
                 check[f"recall@{k}"], check["queries"])


# What an index is built with; the query-time knobs are passed to every search.
_INDEX_SETTINGS = ("algorithm", "num_leaves", "dimensions_per_block",
                   "anisotropic_quantization_threshold")


def _previous_index(staging: _Staging, config: scann_index.ScannConfig
                    ) -> tuple[str, int] | None:
  """The serialised index of the newest `pinsage_retrieval` version, if built alike.

  Alike: the same index settings (`_INDEX_SETTINGS`), k and item biases.

  Returns:
    (its directory, the rows upserted into it since it was trained), or None.
  """
  previous = versions.latest_version_dir(os.path.join(staging.export_base, config_lib.RETRIEVAL))
  report = versions.read_report(previous) if previous else None
  path = os.path.join(previous or "", retrieval_pybind.ASSETS_DIR, retrieval_pybind.INDEX_DIR)
  if report is None or not os.path.isdir(path):
    return None
  served = report.get("search", {}).get("scann", {})
  wanted = config.to_json()
  if (any(served.get(name) != wanted[name] for name in _INDEX_SETTINGS)
      or report.get("num_neighbors") != staging.inputs.k
      or report.get("item_bias") != (staging.inputs.bias is not None)):
    return None
  index = report["search"].get("index", {"trained": True})
  if index.get("trained", True):
    return path, 0
  upserted = index.get("upserted_since_training")
  return (path, upserted) if isinstance(upserted, int) else None


def _tune_scann(inputs: _Inputs, state: Any, config: scann_index.ScannConfig,
                corpus: np.ndarray) -> tuple[scann_index.ScannConfig, dict[str, Any]]:
  """Tunes the ScaNN search to `ScannConfig.target_recall` on held-out items.

  The tuning queries are `tuning_queries` items drawn with `seed + 4` among
  those outside the recall sample (so the report's check stays on queries
  the tuning never saw), searched like `related_items`: the item's own
  embedding, the item itself excluded, against numpy's exact top-k.

  Returns:
    (the config to serve, the report's "tuning" entry).
  """
  requested = inputs.config.scann
  k = inputs.k
  if requested.target_recall is None:
    return config, {"skipped": "target_recall is None: the automatic settings are used"}
  if config.algorithm == "brute_force":
    return config, {"skipped": "brute force search is exact"}
  tree = config.algorithm == "tree_ah"
  if (requested.reorder_num_neighbors is not None
      and (not tree or requested.num_leaves_to_search is not None)):
    return config, {"skipped": "num_leaves_to_search and reorder_num_neighbors are explicit"}
  n = inputs.graph.num_items
  held_out = np.setdiff1d(np.arange(n, dtype=np.int32), inputs.recall_sample)
  if held_out.size == 0:
    logging.warning("ScaNN tuning skipped: every item is a recall check query; lower "
                    "recall_queries to leave items for tuning.")
    return config, {"skipped": "no item outside the recall sample"}
  rows = held_out[_sample(held_out.size, requested.tuning_queries, inputs.config.seed + 4)]
  logging.info("%s: tuning the ScaNN search to recall@%d >= %s on %d held-out items",
               config_lib.RETRIEVAL, k, requested.target_recall, rows.size)
  queries = retrieval_exact.biased_queries(inputs.vectors[rows], inputs.bias)
  exact, _ = retrieval_exact.top_k(queries, corpus, k, exclude=rows)
  tuning = scann_index.tune_search(state, config, requested, queries, exact, k, exclude=rows)
  chosen = tuning.chosen
  logging.info("%s: leaves_to_search=%s reorder_num_neighbors=%s: recall@%d %.4f (automatic "
               "%s/%s: %.4f, %.1fx the queries/s)", config_lib.RETRIEVAL,
               chosen.leaves_to_search, chosen.reorder_num_neighbors, k, chosen.recall,
               tuning.automatic.leaves_to_search, tuning.automatic.reorder_num_neighbors,
               tuning.automatic.recall,
               chosen.queries_per_second / max(tuning.automatic.queries_per_second, 1e-9))
  return tuning.config, {**tuning.to_json(), "held_out": (
      f"{rows.size} items outside the recall sample (seed {inputs.config.seed + 4}), each "
      "searched with its own embedding, itself excluded, against exact search")}


def _warm_item_ids(inputs: _Inputs) -> np.ndarray:
  """The first two raw item ids (bytes), what the warm-up requests ask about."""
  return np.char.encode(inputs.item_ids[:2].astype(str), "utf-8").astype(object)


def _retrieval_warmup(inputs: _Inputs, pivots: _Pivots) -> _Requests:
  """One warm-up request per retrieval signature."""
  warm_ids = _warm_item_ids(inputs)
  requests = [("related_items", {"item_ids": warm_ids}),
              ("related_items_by_embedding", {"embeddings": inputs.vectors[:2]})]
  if pivots.tables is not None:
    warm_sets = np.array([[warm_ids[0], warm_ids[-1]], [warm_ids[-1], b""]], object)
    requests += [
        ("items_for_pivot", {"pivot_ids": np.array(
            [str(p).encode("utf-8") for p in inputs.graph.pivot_ids[:2]], object)}),
        ("items_for_item_set", {"item_ids": warm_sets})]
  return requests


def _write_vocab(path: str, ids: np.ndarray, what: str, forbid_empty: bool) -> None:
  with open(path, "w", encoding="utf-8", newline="\n") as f:
    for i, raw in enumerate(np.asarray(ids).tolist()):
      raw = str(raw)
      if "\n" in raw or "\r" in raw or (forbid_empty and raw == ""):
        raise ValueError(f"{what} {i} ({raw!r}) is empty or contains a newline; it cannot be "
                         "served (\"\" is the padding of pivot_ids).")
      f.write(raw + "\n")


def _sample(n: int, size: int, seed: int) -> np.ndarray:
  """`min(size, n)` distinct rows of `range(n)` drawn with `seed`, ascending int32."""
  size = min(size, n)
  return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False)).astype(np.int32)
