"""The PinSage training task and loop (one training path).

Contract, in the style of TF Model Garden's trainer (config / task / loop):

* `ExperimentConfig` is everything a run depends on (neighborhoods, hard
  negatives, pipeline, model, optimisation, strategy). It round-trips through
  JSON (`to_dict` / `from_dict`) and `train` writes it to
  `model_dir/experiment.json`, so every run can be reproduced and later jobs
  (inference, export) rebuild the same model.
* `train(graph_dir, model_dir, config, strategy)` prepares the sampling
  tables (cached next to the graph), builds the model and optimizer inside
  `strategy.scope()`, and runs the epochs:
  - epoch n (1-based) uses n-1 hard negatives per query, capped by
    `pipeline.max_hard_negatives` (the paper's curriculum);
  - each epoch trains on `positives.epoch_pairs` (item pairs and, with
    `pipeline.pivot_batch_size`, pivot pairs: the pivot -> item objective);
  - the loss is the max-margin ranking loss (or sampled softmax), summed over
    a replica's queries and divided by the GLOBAL batch size, so gradients
    all-reduced over replicas equal those of the global mean; the pivot
    pairs' loss (same form, the pivot as the query; no hard negatives) is
    added with weight `train.pivot_loss_weight`;
  - checkpoints (model, optimizer, epoch) every `checkpoint_every_steps` and
    at each epoch end; re-running resumes from the latest one at the same
    step, optimizer state and curriculum epoch (the batches of a resumed
    epoch are the same ones: their order and seeds depend only on the
    config, the epoch and the batch index);
  - a NaN/Inf loss or gradient stops training with `TrainingDivergedError`
    right after that step, before anything is saved: on disk the last good
    checkpoint is kept (the in-memory model is discarded);
  - TensorBoard summaries in `model_dir/train`: loss, learning rate,
    examples/s, gradient norm, and per epoch the validation metric of the
    graph's primary protocol (`validation_metric`: item hit-rate@10, or user
    Recall@20 from the pivot embeddings when the model learns pivots);
  - at the end the trained weights are saved with `model.save_model` into
    `model_dir/model` (atomically).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Iterable, Mapping

from absl import logging
import numpy as np
import tensorflow as tf

from pinsage_tf import atomic
from pinsage_tf import baselines
from pinsage_tf import config_overrides
from pinsage_tf import content_neighborhoods as content_lib
from pinsage_tf import distribute
from pinsage_tf import evaluation
from pinsage_tf import graph as graph_lib
from pinsage_tf import hard_negatives as hard_lib
from pinsage_tf import inference
from pinsage_tf import losses
from pinsage_tf import minibatch
from pinsage_tf import model as model_lib
from pinsage_tf import neighborhoods as nb_lib
from pinsage_tf import pipeline
from pinsage_tf import positives as positives_lib
from pinsage_tf import schedules

EXPERIMENT_FILE = "experiment.json"
CHECKPOINT_DIR = "checkpoints"
MODEL_DIR = "model"
LOSSES = ("max_margin", "sampled_softmax")


class TrainingDivergedError(RuntimeError):
  """The loss or gradient became NaN/Inf; the last good checkpoint is kept."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Optimisation and loop settings.

  Attributes:
    epochs: passes of `steps_per_epoch` steps.
    steps_per_epoch: None = one pass over the training pairs
      (`num_pairs // batch_size`).
    learning_rate: peak learning rate (Adam) after the linear warm-up.
    warmup_steps: linear warm-up length.
    decay_steps, decay_rate: exponential decay after the warm-up.
    loss: "max_margin" (the paper) or "sampled_softmax" (its baseline).
    margin: Delta of the max-margin loss.
    temperature: of the sampled softmax.
    clip_norm: global gradient-norm clipping; None disables it.
    in_batch_negatives: the other pairs' positives of a replica batch are
      negatives too (besides the sampled shared ones): free (they are
      embedded anyway) and distributed like the positives, i.e. popular
      items more often (see `losses`).
    logq_correction: sampled softmax only: subtract from each shared and
      in-batch negative's logit the log of its expected count in the batch
      (`candidate_log_counts`), so the loss approximates the full softmax.
    pivot_loss_weight: weight of the pivot pairs' loss next to the item
      pairs' (only with `pipeline.pivot_batch_size` > 0).
    checkpoint_every_steps: also checkpoint every this many steps.
    keep_checkpoints: checkpoints kept on disk.
    validation_queries: validation pairs (seeded subsample) scored for
      hit-rate@10 at each epoch end; 0 disables validation.
    log_every_steps: summary / log interval.
  """

  epochs: int = 5
  steps_per_epoch: int | None = None
  learning_rate: float = 1e-3
  warmup_steps: int = 100
  decay_steps: int = 1000
  decay_rate: float = 0.9
  loss: str = "max_margin"
  margin: float = 0.1
  temperature: float = 0.1
  clip_norm: float | None = 10.0
  in_batch_negatives: bool = False
  logq_correction: bool = False
  pivot_loss_weight: float = 1.0
  checkpoint_every_steps: int = 500
  keep_checkpoints: int = 3
  validation_queries: int = 2000
  log_every_steps: int = 50

  def __post_init__(self):
    if self.loss not in LOSSES:
      raise ValueError(f"TrainConfig.loss must be one of {LOSSES}, got {self.loss!r}.")
    for name in ("epochs", "checkpoint_every_steps", "keep_checkpoints", "log_every_steps"):
      if getattr(self, name) < 1:
        raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}.")
    if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
      raise ValueError("TrainConfig.steps_per_epoch must be >= 1 or None.")
    if self.learning_rate <= 0:
      raise ValueError(f"TrainConfig.learning_rate must be > 0, got {self.learning_rate}.")
    if self.clip_norm is not None and not self.clip_norm > 0:
      raise ValueError(f"TrainConfig.clip_norm must be > 0, or None to disable clipping, got "
                       f"{self.clip_norm!r}.")
    for name in ("in_batch_negatives", "logq_correction"):
      if not isinstance(getattr(self, name), bool):
        raise ValueError(f"TrainConfig.{name} must be a bool, got {getattr(self, name)!r}.")
    if not self.pivot_loss_weight >= 0:
      raise ValueError(f"TrainConfig.pivot_loss_weight must be >= 0, got "
                       f"{self.pivot_loss_weight!r}.")
    if self.logq_correction and self.loss != "sampled_softmax":
      raise ValueError("TrainConfig.logq_correction applies to loss='sampled_softmax' only, "
                       f"not {self.loss!r}.")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """Everything a training run depends on; saved as `experiment.json`.

  Two settings span two sections and must agree (checked here): K is both
  `model.num_layers` and `pipeline.num_layers`, and the pivot objective is
  both `pipeline.pivot_batch_size > 0` and `positives.pivot_pairs`.
  `with_overrides` keeps them together when one side is overridden.
  """

  neighborhoods: nb_lib.NeighborhoodConfig = dataclasses.field(
      default_factory=nb_lib.NeighborhoodConfig)
  pivot_neighborhoods: nb_lib.NeighborhoodConfig = dataclasses.field(
      default_factory=lambda: nb_lib.NeighborhoodConfig(num_neighbors=32, max_hops=1))
  hard_negatives: hard_lib.HardNegativeConfig = dataclasses.field(
      default_factory=hard_lib.HardNegativeConfig)
  positives: positives_lib.PositivesConfig = dataclasses.field(
      default_factory=positives_lib.PositivesConfig)
  pipeline: pipeline.PipelineConfig = dataclasses.field(default_factory=pipeline.PipelineConfig)
  model: model_lib.PinSageConfig = dataclasses.field(default_factory=model_lib.PinSageConfig)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
  strategy: str = "mirrored"
  num_cpu_devices: int = 1

  def __post_init__(self):
    if self.strategy not in distribute.STRATEGIES:
      raise ValueError(f"ExperimentConfig.strategy must be one of {distribute.STRATEGIES}, "
                       f"got {self.strategy!r}.")
    if not isinstance(self.num_cpu_devices, int) or self.num_cpu_devices < 1:
      raise ValueError(f"ExperimentConfig.num_cpu_devices must be an int >= 1, got "
                       f"{self.num_cpu_devices!r}.")
    if self.model.num_layers != self.pipeline.num_layers:
      raise ValueError(
          f"model.num_layers={self.model.num_layers} differs from pipeline.num_layers="
          f"{self.pipeline.num_layers}; both are K, give them the same value.")
    if bool(self.pipeline.pivot_batch_size) != self.positives.pivot_pairs:
      raise ValueError(
          f"pipeline.pivot_batch_size={self.pipeline.pivot_batch_size} but positives."
          f"pivot_pairs={self.positives.pivot_pairs}: the pivot objective needs both (a batch "
          "size > 0 and pivot pairs), or neither.")

  @property
  def learns_pivots(self) -> bool:
    """Whether training has the pivot -> item objective."""
    return self.pipeline.pivot_batch_size > 0

  def to_dict(self) -> dict[str, Any]:
    return {
        "neighborhoods": self.neighborhoods.to_json(),
        "pivot_neighborhoods": self.pivot_neighborhoods.to_json(),
        "hard_negatives": self.hard_negatives.to_json(),
        "positives": dataclasses.asdict(self.positives),
        "pipeline": dataclasses.asdict(self.pipeline),
        "model": self.model.to_dict(),
        "train": dataclasses.asdict(self.train),
        "strategy": self.strategy,
        "num_cpu_devices": self.num_cpu_devices,
    }

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> "ExperimentConfig":
    """Inverse of `to_dict`; absent keys keep the defaults of `ExperimentConfig()`.

    A partial section replaces only the fields it names (so a partial
    `pivot_neighborhoods` keeps this class's pivot defaults, not
    `NeighborhoodConfig`'s). Raises ValueError naming unknown keys.
    """
    default = cls()
    _check_keys(cls, values, "ExperimentConfig")
    kwargs = {}
    for name, value in values.items():
      current = getattr(default, name)
      if not dataclasses.is_dataclass(current):
        kwargs[name] = value
        continue
      if not isinstance(value, Mapping):
        raise ValueError(f"ExperimentConfig.{name}: expected an object of fields, got "
                         f"{value!r}.")
      if name == "model":
        kwargs[name] = model_lib.PinSageConfig.from_dict(value)
      else:
        _check_keys(type(current), value, f"ExperimentConfig.{name}")
        kwargs[name] = dataclasses.replace(current, **value)
    return cls(**kwargs)

  def with_overrides(self, overrides: Iterable[str]) -> "ExperimentConfig":
    """A copy with `section.field=value` overrides applied (`config_overrides`).

    E.g. `["train.keep_checkpoints=3", "model.encoder.use_id_embedding=false"]`.
    Overriding one side of a two-section setting also sets the other unless
    it is overridden too: `model.num_layers` and `pipeline.num_layers` take
    the same K, and `pipeline.pivot_batch_size` sets `positives.pivot_pairs`
    to whether it is > 0.

    Raises:
      ValueError: one line naming the key: unknown (with the valid keys of
        its section), a value of the wrong type, or one the section rejects.
    """
    values = config_overrides.parse(type(self), overrides)
    for key, other in (("model.num_layers", "pipeline.num_layers"),
                       ("pipeline.num_layers", "model.num_layers")):
      if key in values:
        values.setdefault(other, values[key])
    if "pipeline.pivot_batch_size" in values:
      values.setdefault("positives.pivot_pairs", values["pipeline.pivot_batch_size"] > 0)
    return config_overrides.apply(self, values)

  def with_seed(self, seed: int) -> "ExperimentConfig":
    """A copy with every seed set to `seed`.

    The seeds of both neighborhood tables' walks, the hard-negative pools,
    the epoch pairs and the batches (model initialisation is not seeded).
    A later `hard_negatives.seed` override can decouple the pools, so runs
    of several seeds share one cached pool.
    """
    return self.with_overrides(
        f"{section}.seed={seed}" for section in (
            "neighborhoods", "pivot_neighborhoods", "hard_negatives", "positives", "pipeline"))

  def save(self, model_dir: str | os.PathLike) -> None:
    atomic.write_json(os.path.join(os.fspath(model_dir), EXPERIMENT_FILE), self.to_dict())

  @classmethod
  def load(cls, model_dir: str | os.PathLike) -> "ExperimentConfig":
    path = os.path.join(os.fspath(model_dir), EXPERIMENT_FILE)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path}: no experiment config; is this a model_dir written by "
                              "`python -m trainer.train`?")
    with open(path) as f:
      return cls.from_dict(json.load(f))


def _check_keys(cls: type, values: Mapping[str, Any], where: str) -> None:
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - known)
  if unknown:
    raise ValueError(f"{where}: unknown keys {unknown}; expected a subset of {sorted(known)}.")


@dataclasses.dataclass(frozen=True)
class TrainingInputs:
  """The graph and its derived tables, ready for the producer."""

  graph: graph_lib.Graph
  neighborhoods: nb_lib.Neighborhoods
  hard_negatives: hard_lib.HardNegatives | None
  tables: pipeline.SamplingTables
  pivot_neighborhoods: nb_lib.Neighborhoods | None = None


def prepare_inputs(graph_dir: str, config: ExperimentConfig,
                   progress: Callable[[str, int, int], None] | None = None,
                   hard_negatives: bool = True) -> TrainingInputs:
  """Loads the graph and loads (or computes and caches) its sampling tables.

  `hard_negatives=False` skips the hard-negative pools (inference needs only
  the neighborhood tables). The pivot table is loaded when the experiment
  learns pivots. With `config.pipeline.content_neighbors`, items without
  edges get content neighbors in the table (`content_neighborhoods`), and
  with `content_dropout` the tables carry every item's content neighbors.
  """
  graph = graph_lib.load_graph(graph_dir)
  # A refreshed graph (pinsage_tf.refresh) appends items: rows past the
  # model's id embedding are the appended ones.
  if config.model.encoder.num_items > graph.num_items:
    raise ValueError(f"the model was configured for {config.model.encoder.num_items} items "
                     f"but {graph_dir} has {graph.num_items}.")
  report = (lambda name: (lambda done, total: progress(name, done, total))) if progress else (
      lambda name: None)
  nb = nb_lib.load_or_compute_neighborhoods(graph_dir, graph, config.neighborhoods,
                                            progress=report("neighborhoods"))
  pivot_nb = None
  if config.learns_pivots:
    pivot_nb = nb_lib.load_or_compute_pivot_neighborhoods(
        graph_dir, graph, config.pivot_neighborhoods, progress=report("pivot neighborhoods"))
  hard = None
  if hard_negatives and config.pipeline.max_hard_negatives > 0:
    hard = hard_lib.load_or_compute_hard_negatives(graph_dir, graph, config.hard_negatives,
                                                   progress=report("hard negatives"))
  ids, weights = np.asarray(nb.ids), np.asarray(nb.weights)
  content = None
  if config.pipeline.content_neighbors:
    if config.pipeline.content_dropout:
      content = content_lib.content_neighbors(graph, np.arange(graph.num_items),
                                              nb.num_neighbors,
                                              progress=report("content neighbors"))
    ids, weights = content_lib.fill_edgeless(graph, ids, weights, content=content,
                                             progress=report("content neighbors"))
  tables = pipeline.SamplingTables.build(
      graph, ids, weights,
      hard_pool=None if hard is None else np.asarray(hard.pool),
      max_sparse_length=config.pipeline.max_sparse_length,
      pivot_neighbor_ids=None if pivot_nb is None else np.asarray(pivot_nb.ids),
      pivot_neighbor_weights=None if pivot_nb is None else np.asarray(pivot_nb.weights),
      content_neighbor_ids=None if content is None else content[0],
      content_neighbor_weights=None if content is None else content[1],
      negative_sampling=config.pipeline.negative_sampling)
  return TrainingInputs(graph, nb, hard, tables, pivot_nb)


def resolve_model_config(config: ExperimentConfig, graph: graph_lib.Graph) -> ExperimentConfig:
  """Fills the encoder's feature schema from the graph (keeping its options)."""
  enc = config.model.encoder
  options = {f.name: getattr(enc, f.name) for f in dataclasses.fields(enc)
             if f.name not in ("dense_dim", "sparse_features", "num_items")}
  encoder = model_lib.EncoderConfig.from_graph(graph, **options)
  return dataclasses.replace(config, model=dataclasses.replace(config.model, encoder=encoder))


def validation_metric(model: model_lib.PinSageModel, inputs: TrainingInputs,
                      max_queries: int,
                      runner: inference.LayerwiseInference | None = None
                      ) -> tuple[str, float] | None:
  """(name, value) of the per-epoch validation metric, or None without validation data.

  The graph's primary protocol decides (`evaluation.resolve_protocol`):
  item hit-rate@10 on (a seeded subsample of) the validation pairs, or user
  Recall@20 on (a subsample of) the validation users -- scored by the pivot
  embeddings when the model learns pivots (`inputs.pivot_neighborhoods`),
  else by the mean over the user's graph items. `runner` (for `model` and
  `inputs.tables`) is re-used across calls, so its functions trace once.
  """
  graph = inputs.graph
  if max_queries <= 0:
    return None
  try:
    protocol = evaluation.resolve_protocol(graph, "auto", "validation")
  except ValueError:
    return None
  runner = runner or inference.LayerwiseInference(model, inputs.tables)
  embeddings, bias = runner.outputs()
  config = evaluation.EvalConfig(protocol=protocol, split="validation", ks=(10,),
                                 user_ks=(20,), max_queries=max_queries)
  if protocol == "item":
    scorer = baselines.EmbeddingScorer(embeddings, name="pinsage", bias=bias)
    result = evaluation.evaluate(graph, scorer, config)
    return "hit_rate@10", float(result["metrics"]["hit_rate@10"])
  if inputs.pivot_neighborhoods is not None:
    pivots = runner.pivot_embeddings(np.asarray(inputs.pivot_neighborhoods.ids),
                                     np.asarray(inputs.pivot_neighborhoods.weights))
    scorer = baselines.PivotScorer(embeddings, pivots, name="pinsage_pivots", bias=bias)
  else:
    scorer = baselines.EmbeddingScorer(embeddings, name="pinsage", bias=bias)
  result = evaluation.evaluate(graph, scorer, config)
  return "recall@20", float(result["metrics"]["recall@20"])


def _is_chief(strategy: tf.distribute.Strategy) -> bool:
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.cluster_spec().as_dict():
    return True
  task_type, task_id = resolver.task_type, resolver.task_id
  return task_type is None or task_type == "chief" or (task_type == "worker" and task_id == 0)


def _worker_dir(model_dir: str, strategy: tf.distribute.Strategy) -> str:
  """Non-chief workers write their (required) checkpoints to a scratch dir."""
  if _is_chief(strategy):
    return model_dir
  resolver = strategy.cluster_resolver
  return os.path.join(model_dir, "workers", f"{resolver.task_type}_{resolver.task_id}")


def candidate_log_counts(tables: pipeline.SamplingTables, train_positive: np.ndarray,
                         config: ExperimentConfig, num_replicas: int,
                         batch_size: int | None = None) -> np.ndarray:
  """float32 `[N]`: log of each item's expected count among a replica batch's negatives.

  The shared negatives contribute `Nn * p(i)` (`p` uniform or the
  distribution of `tables.negative_logits`); with `in_batch_negatives` the
  batch's `B` positives add `B * f(i)`, `f` the item's share of
  `train_positive` (the positives of the objective: item pairs' or pivot
  pairs'; `batch_size` its global batch, default `pipeline.batch_size`). An
  item that can be neither (f = 0 and p = 0) gets a large finite value; it
  is never a candidate anyway.
  """
  pc = config.pipeline
  n = tables.num_items
  if pc.negative_sampling == "uniform":
    p = np.full(n, 1.0 / n)
  else:
    p = np.exp(tables.negative_logits.astype(np.float64))
  count = pc.num_negatives * p
  if config.train.in_batch_negatives:
    train_positive = np.asarray(train_positive)
    freq = np.bincount(train_positive, minlength=n) / max(1, train_positive.shape[0])
    batch = pc.batch_size if batch_size is None else batch_size
    count = count + (batch // num_replicas) * freq
  return np.log(np.maximum(count, 1e-30)).astype(np.float32)


def _objective_loss(tc: TrainConfig, z_query, z_positive, z_negative, neg_mask, bias,
                    correction, z_hard=None, hard_mask=None):
  """Per-example loss `[B]` of one objective under `tc.loss`."""
  if tc.loss == "max_margin":
    return losses.max_margin_loss(z_query, z_positive, z_negative, z_hard, hard_mask, neg_mask,
                                  margin=tc.margin, bias=bias)
  return losses.sampled_softmax_loss(z_query, z_positive, z_negative, z_hard, hard_mask,
                                     neg_mask, temperature=tc.temperature, bias=bias,
                                     negative_log_count=correction)


def build_train_step(model, optimizer, strategy, config: ExperimentConfig,
                     log_counts: np.ndarray | None = None,
                     pivot_log_counts: np.ndarray | None = None):
  """A `tf.function` running one synchronous step over all replicas.

  Args:
    log_counts: `candidate_log_counts(...)` of the item pairs; required
      when `config.train.logq_correction` is on (and there are item pairs),
      ignored otherwise.
    pivot_log_counts: the same for the pivot pairs' positives.

  Returns:
    step(distributed_batch) -> (loss, grad_norm) scalars, summed over replicas
    (the loss of the global batch).
  """
  tc, pc = config.train, config.pipeline
  corrections = {}
  if tc.logq_correction:
    for name, counts, size in (("item", log_counts, pc.batch_size),
                               ("pivot", pivot_log_counts, pc.pivot_batch_size)):
      if size:
        if counts is None:
          raise ValueError(f"logq_correction needs the {name} pairs' log counts "
                           "(candidate_log_counts).")
        corrections[name] = tf.constant(counts, tf.float32)

  def candidates(batch, z, b, positive, query=None):
    """Shared (+ in-batch) negatives of one objective: positions, mask, z, bias."""
    negative = batch.negative
    neg_mask = losses.shared_negative_mask(query, positive, negative)
    if tc.in_batch_negatives:
      negative = tf.concat([negative, positive], axis=0)
      neg_mask = tf.concat([neg_mask, losses.shared_negative_mask(query, positive, positive)],
                           axis=1)
    return negative, neg_mask, tf.gather(z, negative), None if b is None else tf.gather(
        b, negative)

  def replica_step(batch):
    with tf.GradientTape() as tape:
      z, b, z_pivot = model.embed_batch(batch, training=True)
      loss = tf.constant(0.0)
      if pc.batch_size:
        negative, neg_mask, z_n, b_n = candidates(batch, z, b, batch.positive, batch.query)
        bias = None if b is None else losses.CandidateBias(
            tf.gather(b, batch.positive), b_n, tf.gather(b, batch.hard_negative))
        correction = None
        if "item" in corrections:
          correction = tf.gather(corrections["item"], minibatch.target_items(batch, negative))
        per_example = _objective_loss(
            tc, tf.gather(z, batch.query), tf.gather(z, batch.positive), z_n, neg_mask, bias,
            correction, tf.gather(z, batch.hard_negative), batch.hard_mask)
        loss += losses.average_loss(per_example, global_batch_size=pc.batch_size)
      if pc.pivot_batch_size:
        positive = batch.pivot_positive
        negative, neg_mask, z_n, b_n = candidates(batch, z, b, positive)
        bias = None if b is None else losses.CandidateBias(tf.gather(b, positive), b_n)
        correction = None
        if "pivot" in corrections:
          correction = tf.gather(corrections["pivot"], minibatch.target_items(batch, negative))
        per_example = _objective_loss(tc, z_pivot, tf.gather(z, positive), z_n, neg_mask, bias,
                                      correction)
        loss += tc.pivot_loss_weight * losses.average_loss(
            per_example, global_batch_size=pc.pivot_batch_size)
    variables = model.trainable_variables
    grads = tape.gradient(loss, variables)
    grads = [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
             for g, v in zip(grads, variables)]
    # All-reduce explicitly, so the norm (and clipping) sees the global gradient.
    ctx = tf.distribute.get_replica_context()
    grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
    norm = tf.linalg.global_norm(grads)
    if tc.clip_norm is not None:
      grads, _ = tf.clip_by_global_norm(grads, tc.clip_norm, use_norm=norm)
    # A non-finite step is reported by the caller, which stops before the
    # next checkpoint: on disk the last good state is kept.
    optimizer.apply_gradients(zip(grads, variables), skip_gradients_aggregation=True)
    return loss, norm

  @tf.function
  def step(dist_batch):
    loss, norm = strategy.run(replica_step, args=(dist_batch,))
    loss = strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
    norm = strategy.reduce(tf.distribute.ReduceOp.MEAN, norm, axis=None)
    return loss, norm

  return step


@dataclasses.dataclass(frozen=True)
class TrainResult:
  """What a finished `train` call reports."""

  steps: int
  epochs: int
  final_loss: float
  validation_metric: str | None
  validation: dict[int, float]
  examples_per_second: float
  wall_time_s: float


def train(graph_dir: str, model_dir: str, config: ExperimentConfig,
          strategy: tf.distribute.Strategy, *, verbose: bool = True) -> TrainResult:
  """Trains PinSage on `graph_dir`, checkpointing into `model_dir` (resumable).

  Args:
    graph_dir: a graph written by `data.prepare`.
    model_dir: outputs: experiment.json, checkpoints/, train/ summaries, model/.
    config: the experiment; its encoder schema is filled from the graph.
    strategy: from `pinsage_tf.distribute.get_strategy`.
    verbose: print a progress bar with ETA and per-epoch lines.

  Raises:
    TrainingDivergedError: the loss or gradient norm became NaN/Inf.
  """
  started = time.perf_counter()

  def progress(stage, done, total):
    if verbose and (done == total or done % max(1, total // 10) < 1024):
      logging.info("%s: %d/%d", stage, done, total)

  inputs = prepare_inputs(graph_dir, config, progress)
  config = resolve_model_config(config, inputs.graph)
  os.makedirs(model_dir, exist_ok=True)
  if _is_chief(strategy):
    config.save(model_dir)
  pc, tc = config.pipeline, config.train
  first_pairs = positives_lib.epoch_pairs(inputs.graph, config.positives, 1)
  steps_per_epoch = tc.steps_per_epoch or pipeline.steps_per_epoch(first_pairs, pc)
  if steps_per_epoch < 1:
    raise ValueError(f"{first_pairs.query.shape[0]} item pairs / {first_pairs.pivot.shape[0]} "
                     f"pivot pairs do not fill one batch of {pc.batch_size} / "
                     f"{pc.pivot_batch_size}; lower pipeline.batch_size (or "
                     "pipeline.pivot_batch_size).")
  examples_per_step = pc.batch_size + pc.pivot_batch_size
  # The producer's tables: host variables shared by every epoch's dataset and the
  # validation runner, made outside the scope (which would mirror them per replica).
  pipeline.table_tensors(inputs.tables)

  with strategy.scope():
    model = model_lib.PinSageModel(config.model)
    model_lib.build_variables(model)
    schedule = schedules.WarmupExponentialDecay(
        peak_learning_rate=tc.learning_rate, warmup_steps=tc.warmup_steps,
        decay_steps=tc.decay_steps, decay_rate=tc.decay_rate)
    optimizer = tf.keras.optimizers.Adam(learning_rate=schedule)
    optimizer.build(model.trainable_variables)
    epoch_var = tf.Variable(1, dtype=tf.int64, trainable=False, name="epoch")
  checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch_var)
  manager = tf.train.CheckpointManager(
      checkpoint, os.path.join(_worker_dir(model_dir, strategy), CHECKPOINT_DIR),
      max_to_keep=tc.keep_checkpoints)
  if manager.latest_checkpoint:
    checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
    logging.info("Resumed from %s at step %d, epoch %d", manager.latest_checkpoint,
                 int(optimizer.iterations.numpy()), int(epoch_var.numpy()))
  log_counts = pivot_log_counts = None
  if tc.logq_correction:
    replicas = strategy.num_replicas_in_sync
    log_counts = candidate_log_counts(inputs.tables, first_pairs.positive, config, replicas)
    pivot_log_counts = candidate_log_counts(inputs.tables, first_pairs.pivot_positive, config,
                                            replicas, batch_size=pc.pivot_batch_size)
  step_fn = build_train_step(model, optimizer, strategy, config, log_counts, pivot_log_counts)
  writer = (tf.summary.create_file_writer(os.path.join(model_dir, "train"))
            if _is_chief(strategy) else tf.summary.create_noop_writer())

  val_history: dict[int, float] = {}
  val_name = None
  loss_value = float("nan")
  examples, train_time = 0, 0.0
  # Per-epoch validation embeds every item: its functions are traced once.
  runner = (inference.LayerwiseInference(model, inputs.tables)
            if tc.validation_queries > 0 else None)
  while int(epoch_var.numpy()) <= tc.epochs:
    epoch = int(epoch_var.numpy())
    step = int(optimizer.iterations.numpy())
    done_in_epoch = step - (epoch - 1) * steps_per_epoch
    num_hard = hard_lib.num_hard_negatives_for_epoch(epoch, pc.max_hard_negatives)
    pairs = (first_pairs if epoch == 1 else
             positives_lib.epoch_pairs(inputs.graph, config.positives, epoch))
    dataset = strategy.distribute_datasets_from_function(
        pipeline.make_distributed_dataset_fn(
            inputs.tables, pairs, pc, epoch=epoch, num_hard_negatives=num_hard,
            repeat=True, skip_batches=done_in_epoch))
    bar = tf.keras.utils.Progbar(steps_per_epoch, verbose=1 if verbose else 0,
                                 stateful_metrics=["loss", "grad_norm", "lr", "ex/s"],
                                 unit_name="step")
    bar.update(done_in_epoch)
    iterator = iter(dataset)
    window_start, window_examples = time.perf_counter(), 0
    for i in range(done_in_epoch, steps_per_epoch):
      loss, norm = step_fn(next(iterator))
      loss_value, norm_value = float(loss.numpy()), float(norm.numpy())
      step = int(optimizer.iterations.numpy())
      if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
        raise TrainingDivergedError(
            f"loss={loss_value} grad_norm={norm_value} at step {step} (epoch {epoch}); "
            f"training stopped without saving, the last good checkpoint "
            f"({manager.latest_checkpoint}) is kept. Lower train.learning_rate or set "
            "train.clip_norm.")
      window_examples += examples_per_step
      if step % tc.log_every_steps == 0 or i + 1 == steps_per_epoch:
        elapsed = time.perf_counter() - window_start
        rate = window_examples / max(elapsed, 1e-9)
        train_time += elapsed
        examples += window_examples
        lr = float(schedule(step))
        with writer.as_default(step=step):
          tf.summary.scalar("loss", loss_value)
          tf.summary.scalar("learning_rate", lr)
          tf.summary.scalar("examples_per_second", rate)
          tf.summary.scalar("gradient_norm", norm_value)
        bar.update(i + 1, [("loss", loss_value), ("grad_norm", norm_value), ("lr", lr),
                           ("ex/s", rate)])
        window_start, window_examples = time.perf_counter(), 0
      if step % tc.checkpoint_every_steps == 0:
        manager.save(checkpoint_number=step)
    epoch_var.assign(epoch + 1)
    manager.save(checkpoint_number=step)
    validation = validation_metric(model, inputs, tc.validation_queries, runner=runner)
    if validation is not None:
      val_name, val_history[epoch] = validation
      with writer.as_default(step=step):
        tf.summary.scalar(f"validation/{val_name}", validation[1])
    if verbose:
      logging.info("epoch %d/%d: step %d loss %.4f validation %s (hard negatives %d)",
                   epoch, tc.epochs, step, loss_value,
                   "n/a" if validation is None else f"{validation[0]} {validation[1]:.4f}",
                   num_hard)
  writer.flush()
  if _is_chief(strategy):
    model_lib.save_model(model, os.path.join(model_dir, MODEL_DIR), overwrite=True)
  return TrainResult(
      steps=int(optimizer.iterations.numpy()), epochs=tc.epochs, final_loss=loss_value,
      validation_metric=val_name, validation=val_history,
      examples_per_second=examples / train_time if train_time else 0.0,
      wall_time_s=time.perf_counter() - started)
