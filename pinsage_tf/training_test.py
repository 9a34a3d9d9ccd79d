"""Tests of the training task and loop (pinsage_tf.training)."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

import pinsage_tf  # noqa: F401
import tensorflow as tf

from data import synthetic
from pinsage_tf import baselines
from pinsage_tf import config_overrides
from pinsage_tf import distribute
from pinsage_tf import evaluation
from pinsage_tf import graph as graph_lib
from pinsage_tf import inference
from pinsage_tf import losses
from pinsage_tf import model as model_lib
from pinsage_tf import neighborhoods as nb_lib
from pinsage_tf import pipeline
from pinsage_tf import training


def _small_config(**train_overrides) -> training.ExperimentConfig:
  train = dict(epochs=1, steps_per_epoch=5, learning_rate=3e-3, warmup_steps=2,
               checkpoint_every_steps=2, validation_queries=200, log_every_steps=1)
  train.update(train_overrides)
  return training.ExperimentConfig(
      neighborhoods=nb_lib.NeighborhoodConfig(num_neighbors=5, num_walks=20),
      pipeline=pipeline.PipelineConfig(batch_size=32, num_negatives=32, max_hard_negatives=1),
      model=model_lib.PinSageConfig(hidden_dim=32, embedding_dim=16),
      train=training.TrainConfig(**train))


@pytest.fixture(scope="module")
def small_graph_dir(tmp_path_factory):
  graph = synthetic.generate(synthetic.SyntheticConfig(
      num_items=400, num_boards=120, num_communities=8, num_pairs=3000, seed=1))
  path = str(tmp_path_factory.mktemp("graph") / "g")
  graph_lib.save_graph(graph, path)
  return path


def test_config_json_round_trip():
  config = _small_config()
  again = training.ExperimentConfig.from_dict(config.to_dict())
  assert again == config
  with pytest.raises(ValueError, match="unknown keys"):
    training.ExperimentConfig.from_dict({"typo": 1})
  with pytest.raises(ValueError, match="num_layers"):
    training.ExperimentConfig(model=model_lib.PinSageConfig(num_layers=3))


def test_train_checkpoints_and_resumes(small_graph_dir, tmp_path):
  strategy = distribute.get_strategy("one_device")
  model_dir = str(tmp_path / "m")
  result = training.train(small_graph_dir, model_dir, _small_config(), strategy, verbose=False)
  assert result.steps == 5
  assert 0.0 <= result.validation[1] <= 1.0
  assert os.path.isfile(os.path.join(model_dir, training.EXPERIMENT_FILE))
  saved = training.ExperimentConfig.load(model_dir)
  assert saved.model.encoder.num_items == 400  # schema filled from the graph
  ckpt = tf.train.latest_checkpoint(os.path.join(model_dir, training.CHECKPOINT_DIR))
  assert ckpt.endswith("ckpt-5")
  model = model_lib.load_model(os.path.join(model_dir, training.MODEL_DIR))
  assert model.config.hidden_dim == 32
  # A second epoch resumes at step 5 (epoch 2, one hard negative) and ends at 10.
  more = dataclasses.replace(saved, train=dataclasses.replace(saved.train, epochs=2))
  result2 = training.train(small_graph_dir, model_dir, more, strategy, verbose=False)
  assert result2.steps == 10
  assert sorted(result2.validation) == [2]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(small_graph_dir, tmp_path,
                                                              monkeypatch):
  real = losses.max_margin_loss
  calls = {"n": 0}

  def poisoned(*args, **kwargs):
    # Traced once: the variable turns the loss into Inf after 3 good steps
    # (tf.where would leak NaN gradients from the unselected branch).
    return real(*args, **kwargs) / (1.0 - poison)

  poison = tf.Variable(0.0)
  monkeypatch.setattr(losses, "max_margin_loss", poisoned)
  model_dir = str(tmp_path / "m")
  strategy = distribute.get_strategy("one_device")
  original_build = training.build_train_step

  def build(*args, **kwargs):
    step = original_build(*args, **kwargs)

    def wrapped(batch):
      calls["n"] += 1
      if calls["n"] == 4:
        poison.assign(1.0)
      return step(batch)

    return wrapped

  monkeypatch.setattr(training, "build_train_step", build)
  with pytest.raises(training.TrainingDivergedError, match="step 4"):
    training.train(small_graph_dir, model_dir, _small_config(steps_per_epoch=6), strategy,
                   verbose=False)
  ckpt = tf.train.latest_checkpoint(os.path.join(model_dir, training.CHECKPOINT_DIR))
  assert ckpt.endswith("ckpt-2"), ckpt  # checkpoints every 2 steps: the last good one
  reader = tf.train.load_checkpoint(ckpt)
  for name in reader.get_variable_to_shape_map():
    if name.startswith("model/"):
      value = reader.get_tensor(name)
      if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        assert np.all(np.isfinite(value)), name


def _replica_batches(small_graph_dir):
  graph = graph_lib.load_graph(small_graph_dir)
  nb = nb_lib.compute_neighborhoods(graph, nb_lib.NeighborhoodConfig(num_neighbors=5,
                                                                      num_walks=10))
  tables = pipeline.SamplingTables.build(graph, nb.ids, nb.weights)
  cfg = pipeline.PipelineConfig(batch_size=16, num_negatives=8)
  builder = pipeline.MinibatchBuilder(tables, cfg, 8)
  q, p = graph.pairs.of(graph_lib.Split.TRAIN)
  halves = [builder(tf.constant([7, i], tf.int64), tf.constant(q[8 * i:8 * i + 8]),
                    tf.constant(p[8 * i:8 * i + 8])) for i in range(2)]
  return graph, cfg, halves


def test_two_replicas_match_one_replica_with_the_same_global_batch(small_graph_dir):
  """2 replicas x 8 pairs == 1 replica on both half-batches (global batch 16).

  On one replica the same two half-batches are applied as one step by summing
  their gradients (each loss divided by the global batch 16); on two replicas
  each replica gets one half and the step all-reduces. Same initial weights.
  """
  graph, cfg, halves = _replica_batches(small_graph_dir)
  config = dataclasses.replace(
      _small_config(learning_rate=1e-2, warmup_steps=0, clip_norm=None),
      pipeline=cfg, model=model_lib.PinSageConfig(
          hidden_dim=16, embedding_dim=8, encoder=model_lib.EncoderConfig.from_graph(graph)))

  def make(strategy):
    with strategy.scope():
      tf.keras.utils.set_random_seed(3)
      model = model_lib.PinSageModel(config.model)
      model_lib.build_variables(model)
      optimizer = tf.keras.optimizers.SGD(1e-1)
      optimizer.build(model.trainable_variables)
    return model, optimizer

  devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
  two = tf.distribute.MirroredStrategy(devices)
  assert two.num_replicas_in_sync == 2
  model2, opt2 = make(two)
  step2 = training.build_train_step(model2, opt2, two, config)
  dist = two.experimental_distribute_values_from_function(
      lambda ctx: halves[ctx.replica_id_in_sync_group])
  loss2, _ = step2(dist)

  one = tf.distribute.OneDeviceStrategy(devices[0])
  model1, opt1 = make(one)
  # model1 starts from the same seeded initial weights model2 had before its step.
  total_loss = 0.0
  grads_sum = None
  for half in halves:
    with tf.GradientTape() as tape:
      z = model1(half, training=True)
      per = losses.max_margin_loss(
          tf.gather(z, half.query), tf.gather(z, half.positive), tf.gather(z, half.negative),
          tf.gather(z, half.hard_negative), half.hard_mask,
          losses.shared_negative_mask(half.query, half.positive, half.negative),
          margin=config.train.margin)
      loss = tf.reduce_sum(per) / 16.0
    grads = tape.gradient(loss, model1.trainable_variables)
    grads = [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
             for g, v in zip(grads, model1.trainable_variables)]
    grads_sum = grads if grads_sum is None else [x + y for x, y in zip(grads_sum, grads)]
    total_loss += float(loss)
  opt1.apply_gradients(zip(grads_sum, model1.trainable_variables))
  assert float(loss2) == pytest.approx(total_loss, rel=1e-5)
  changed = 0
  for a, b in zip(model1.trainable_variables, model2.trainable_variables):
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5, err_msg=a.name)
    changed += 1
  assert changed == len(model1.trainable_variables) > 0


def test_candidate_log_counts(small_graph_dir):
  graph = graph_lib.load_graph(small_graph_dir)
  nb = nb_lib.compute_neighborhoods(graph, nb_lib.NeighborhoodConfig(num_neighbors=5,
                                                                      num_walks=10))
  tables = pipeline.SamplingTables.build(graph, nb.ids, nb.weights)
  n = graph.num_items
  positive = np.array([3, 3, 3, 7], np.int32)  # f(3) = 3/4, f(7) = 1/4
  base = _small_config(loss="sampled_softmax", logq_correction=True)  # B=32, Nn=32
  uniform = training.candidate_log_counts(tables, positive, base, num_replicas=1)
  np.testing.assert_allclose(uniform, np.log(32 / n), rtol=1e-6)
  in_batch = dataclasses.replace(
      base, train=dataclasses.replace(base.train, in_batch_negatives=True))
  got = training.candidate_log_counts(tables, positive, in_batch, num_replicas=2)
  want = np.full(n, 32 / n)
  want[3] += 16 * 0.75  # the replica batch is 32 / 2 pairs
  want[7] += 16 * 0.25
  np.testing.assert_allclose(got, np.log(want), rtol=1e-6)
  degree = dataclasses.replace(
      base, pipeline=dataclasses.replace(base.pipeline, negative_sampling="degree"))
  np.testing.assert_allclose(training.candidate_log_counts(tables, positive, degree, 1),
                             np.log(32 * np.exp(tables.negative_logits.astype(np.float64))),
                             rtol=1e-5)


def test_logq_correction_requires_sampled_softmax():
  with pytest.raises(ValueError, match="sampled_softmax"):
    training.TrainConfig(loss="max_margin", logq_correction=True)
  with pytest.raises(ValueError, match="in_batch_negatives must be a bool"):
    training.TrainConfig(in_batch_negatives=1)


def test_in_batch_negatives_and_logq_enter_the_train_step_loss(small_graph_dir):
  """The step's loss equals the sampled softmax written out by hand: shared
  negatives plus the batch's positives, each logit corrected by its item's
  log count, own positive (and repeats of it) and own query excluded."""
  graph, cfg, halves = _replica_batches(small_graph_dir)
  batch = halves[0]
  config = dataclasses.replace(
      _small_config(loss="sampled_softmax", temperature=0.5, in_batch_negatives=True,
                    logq_correction=True),
      pipeline=dataclasses.replace(cfg, batch_size=8),
      model=model_lib.PinSageConfig(hidden_dim=16, embedding_dim=8,
                                    encoder=model_lib.EncoderConfig.from_graph(graph)))
  log_counts = np.linspace(-2.0, 2.0, graph.num_items).astype(np.float32)
  strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
  with strategy.scope():
    tf.keras.utils.set_random_seed(5)
    model = model_lib.PinSageModel(config.model)
    model_lib.build_variables(model)
    optimizer = tf.keras.optimizers.SGD(0.0)
    optimizer.build(model.trainable_variables)
  z = model(batch, training=True).numpy()
  # Items of level K through the self indices (independently of the library).
  items = batch.inputs.item.numpy()
  for hop in batch.hops:
    items = items[hop.self_index.numpy()]
  q, p, neg = batch.query.numpy(), batch.positive.numpy(), batch.negative.numpy()
  per = []
  for b in range(len(q)):
    logits = [z[q[b]] @ z[p[b]] / 0.5]
    for c in list(neg) + list(p):
      if items[c] in (items[q[b]], items[p[b]]):
        continue
      logits.append(z[q[b]] @ z[c] / 0.5 - log_counts[items[c]])
    logits = np.array(logits, np.float64)
    per.append(np.log(np.exp(logits - logits.max()).sum()) + logits.max() - logits[0])
  step = training.build_train_step(model, optimizer, strategy, config, log_counts)
  loss, _ = step(batch)
  assert float(loss) == pytest.approx(np.mean(per), rel=1e-4)
  # Without in-batch negatives (and correction) the loss is a different number.
  plain = dataclasses.replace(config, train=dataclasses.replace(
      config.train, in_batch_negatives=False, logq_correction=False))
  loss_plain, _ = training.build_train_step(model, optimizer, strategy, plain)(batch)
  assert abs(float(loss_plain) - float(loss)) > 1e-3
  with pytest.raises(ValueError, match="log_counts"):
    training.build_train_step(model, optimizer, strategy, config)


def test_training_beats_popularity_on_synthetic(tmp_path):
  graph = synthetic.generate(synthetic.SyntheticConfig(seed=0))
  graph_dir = str(tmp_path / "g")
  graph_lib.save_graph(graph, graph_dir)
  # The paper's max-margin loss, ~one pass over the 40k training pairs.
  config = training.ExperimentConfig(
      pipeline=pipeline.PipelineConfig(batch_size=256, num_negatives=256),
      model=model_lib.PinSageConfig(hidden_dim=64, embedding_dim=32),
      train=training.TrainConfig(epochs=1, steps_per_epoch=150, learning_rate=3e-3,
                                 warmup_steps=20, validation_queries=0))
  training.train(graph_dir, str(tmp_path / "m"), config,
                 distribute.get_strategy("one_device"), verbose=False)
  model = model_lib.load_model(str(tmp_path / "m" / training.MODEL_DIR))
  inputs = training.prepare_inputs(graph_dir, config)
  z = inference.layerwise_embeddings(model, inputs.tables)
  eval_cfg = evaluation.EvalConfig(protocol="item", split="validation", ks=(10,))
  ours = evaluation.evaluate(graph, baselines.EmbeddingScorer(z), eval_cfg)
  popular = evaluation.evaluate(graph, baselines.PopularityScorer(graph), eval_cfg)
  ours_hr = ours["metrics"]["hit_rate@10"]
  pop_hr = popular["metrics"]["hit_rate@10"]
  assert ours_hr > 2 * pop_hr, (ours_hr, pop_hr)


def test_pivot_pairs_enter_the_train_step_loss(small_graph_dir):
  """With item and pivot pairs, the step's loss is the item pairs' sampled
  softmax plus w * the pivot pairs' one (pivot = query, no hard negatives),
  written out by hand from the model's outputs."""
  from pinsage_tf import neighborhoods as nb_lib
  from pinsage_tf import positives as positives_lib
  graph = graph_lib.load_graph(small_graph_dir)
  nb = nb_lib.compute_neighborhoods(graph, nb_lib.NeighborhoodConfig(num_walks=20))
  pnb = nb_lib.compute_pivot_neighborhoods(graph, nb_lib.NeighborhoodConfig(
      num_neighbors=6, num_walks=20, max_hops=1))
  tables = pipeline.SamplingTables.build(graph, nb.ids, nb.weights, pivot_neighbor_ids=pnb.ids,
                                         pivot_neighbor_weights=pnb.weights)
  cfg = pipeline.PipelineConfig(batch_size=6, pivot_batch_size=5, num_negatives=7)
  config = training.ExperimentConfig(
      pipeline=cfg, positives=positives_lib.PositivesConfig(pivot_pairs=True),
      model=model_lib.PinSageConfig(hidden_dim=16, embedding_dim=8, item_bias=True,
                                    encoder=model_lib.EncoderConfig.from_graph(graph)),
      train=training.TrainConfig(loss="sampled_softmax", temperature=0.5,
                                 pivot_loss_weight=0.7))
  pairs = positives_lib.epoch_pairs(graph, config.positives, 1)
  batch = next(iter(pipeline.make_dataset(tables, pairs, cfg)))
  strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
  with strategy.scope():
    tf.keras.utils.set_random_seed(6)
    model = model_lib.PinSageModel(config.model)
    model_lib.build_variables(model)
    model.bias_output.kernel.assign(tf.random.normal(model.bias_output.kernel.shape))
    optimizer = tf.keras.optimizers.SGD(0.0)
    optimizer.build(model.trainable_variables)
  z, b, zp = (t.numpy() for t in model.embed_batch(batch, training=True))
  neg = batch.negative.numpy()

  def softmax_loss(query_vec, pos, excluded):
    logits = [(query_vec @ z[pos] + b[pos]) / 0.5]
    logits += [(query_vec @ z[c] + b[c]) / 0.5 for c in neg if c not in excluded]
    logits = np.array(logits, np.float64)
    return np.log(np.exp(logits - logits.max()).sum()) + logits.max() - logits[0]

  q, p = batch.query.numpy(), batch.positive.numpy()
  item_loss = np.mean([softmax_loss(z[q[i]], p[i], {q[i], p[i]}) for i in range(6)])
  pp = batch.pivot_positive.numpy()
  pivot_loss = np.mean([softmax_loss(zp[i], pp[i], {pp[i]}) for i in range(5)])
  loss, _ = training.build_train_step(model, optimizer, strategy, config)(batch)
  assert float(loss) == pytest.approx(item_loss + 0.7 * pivot_loss, rel=1e-4)


def test_pivot_objective_config_must_agree():
  from pinsage_tf import positives as positives_lib
  with pytest.raises(ValueError, match="pivot objective"):
    training.ExperimentConfig(pipeline=pipeline.PipelineConfig(pivot_batch_size=8))
  config = training.ExperimentConfig(
      pipeline=pipeline.PipelineConfig(pivot_batch_size=8),
      positives=positives_lib.PositivesConfig(pivot_pairs=True, item_pairs="walks"))
  assert config.learns_pivots
  assert training.ExperimentConfig.from_dict(config.to_dict()) == config
  # Partial pivot settings keep the pivot defaults for the rest.
  partial = training.ExperimentConfig.from_dict({"pivot_neighborhoods": {"num_neighbors": 8}})
  assert partial.pivot_neighborhoods.num_neighbors == 8
  assert partial.pivot_neighborhoods.max_hops == training.ExperimentConfig().pivot_neighborhoods.max_hops


def test_content_neighbors_fill_items_without_edges_and_train(small_graph_dir, tmp_path):
  base = _small_config()
  config = dataclasses.replace(base, pipeline=dataclasses.replace(
      base.pipeline, content_neighbors=True, content_dropout=0.3, negative_sampling="edges"))
  plain = training.prepare_inputs(small_graph_dir, base, hard_negatives=False)
  inputs = training.prepare_inputs(small_graph_dir, config, hard_negatives=False)
  cold = inputs.graph.item_degrees() == 0
  assert cold.sum() > 10  # the synthetic generator leaves some items without edges
  # Edge-less rows were empty and now pool content neighbors (all with edges);
  # every other row is the importance table's.
  assert np.all(plain.tables.neighbor_weights[cold] == 0)
  assert np.all(inputs.tables.neighbor_weights[cold].sum(axis=1) > 0.99)
  assert not np.any(cold[inputs.tables.neighbor_ids[cold][inputs.tables.neighbor_weights[cold] > 0]])
  np.testing.assert_array_equal(inputs.tables.neighbor_ids[~cold], plain.tables.neighbor_ids[~cold])
  assert inputs.tables.content_neighbor_ids.shape == inputs.tables.neighbor_ids.shape
  assert plain.tables.content_neighbor_ids.shape[0] == 0
  assert np.all(np.isneginf(inputs.tables.negative_logits[cold]))
  result = training.train(small_graph_dir, str(tmp_path / "m"), config,
                          distribute.get_strategy("one_device"), verbose=False)
  assert np.isfinite(result.final_loss)
  # experiment.json keeps the options, so inference rebuilds the same tables.
  again = training.ExperimentConfig.load(str(tmp_path / "m"))
  assert again.pipeline.content_dropout == 0.3 and again.pipeline.negative_sampling == "edges"


def _leaves(config, prefix=""):
  """(dotted key, value) of every non-dataclass field below `config`."""
  for field in dataclasses.fields(config):
    value = getattr(config, field.name)
    if dataclasses.is_dataclass(value):
      yield from _leaves(value, f"{prefix}{field.name}.")
    else:
      yield f"{prefix}{field.name}", value


def test_overrides_reach_every_field():
  config = training.ExperimentConfig()
  leaves = dict(_leaves(config))
  assert {"train.keep_checkpoints", "train.log_every_steps", "model.encoder.use_id_embedding",
          "pivot_neighborhoods.chunk_size", "strategy", "num_cpu_devices"} <= set(leaves)
  # Every field takes its own value back in override syntax.
  same = config.with_overrides(f"{key}={config_overrides.format_value(value)}"
                               for key, value in leaves.items())
  assert same == config
  changed = config.with_overrides([
      "train.keep_checkpoints=5", "train.log_every_steps=10", "pipeline.batch_size=256",
      "model.encoder.use_id_embedding=false", "train.clip_norm=none", "strategy=one_device",
      "num_cpu_devices=2", "hard_negatives.window_start=5", "hard_negatives.window_end=50"])
  assert (changed.train.keep_checkpoints, changed.train.log_every_steps) == (5, 10)
  assert changed.pipeline.batch_size == 256 and changed.model.encoder.use_id_embedding is False
  assert changed.train.clip_norm is None
  assert (changed.strategy, changed.num_cpu_devices) == ("one_device", 2)
  assert changed.hard_negatives.window(1000) == (5, 50)
  assert dataclasses.replace(changed, train=config.train, pipeline=config.pipeline,
                             model=config.model, hard_negatives=config.hard_negatives,
                             strategy="mirrored", num_cpu_devices=1) == config


def test_override_errors_name_the_key():
  config = training.ExperimentConfig()
  with pytest.raises(ValueError, match=r"^unknown key 'train.keep_checkpoint': train has "
                                       r"checkpoint_every_steps, .*keep_checkpoints, "):
    config.with_overrides(["train.keep_checkpoint=3"])
  with pytest.raises(ValueError, match=r"^train.keep_checkpoints: expected an int, got 'x'.$"):
    config.with_overrides(["train.keep_checkpoints=x"])
  with pytest.raises(ValueError, match=r"^train.keep_checkpoints=0: TrainConfig.keep_checkpoints"):
    config.with_overrides(["train.keep_checkpoints=0"])
  with pytest.raises(ValueError, match=r"^strategy=tpu: ExperimentConfig.strategy must be one of"):
    config.with_overrides(["strategy=tpu"])
  # Pooling is the model's: the error lists what the pipeline section has.
  with pytest.raises(ValueError, match=r"^unknown key 'pipeline.pooling': pipeline has "
                                       r"batch_size, "):
    config.with_overrides(["pipeline.pooling=mean"])


def test_overrides_keep_two_section_settings_together():
  config = training.ExperimentConfig()
  one = config.with_overrides(["pipeline.num_layers=1"])
  assert one.model.num_layers == one.pipeline.num_layers == 1
  three = config.with_overrides(["model.num_layers=3"])
  assert three.model.num_layers == three.pipeline.num_layers == 3
  with pytest.raises(ValueError, match="both are K"):
    config.with_overrides(["model.num_layers=3", "pipeline.num_layers=2"])
  pivots = config.with_overrides(["pipeline.pivot_batch_size=16"])
  assert pivots.positives.pivot_pairs and pivots.learns_pivots
  assert not pivots.with_overrides(["pipeline.pivot_batch_size=0"]).positives.pivot_pairs
  with pytest.raises(ValueError, match="pivot objective"):
    config.with_overrides(["pipeline.pivot_batch_size=16", "positives.pivot_pairs=false"])


def test_with_seed_sets_every_seed_and_a_later_override_decouples_one():
  config = training.ExperimentConfig().with_seed(3)
  seeds = {key: value for key, value in _leaves(config) if key.endswith(".seed")}
  assert seeds == {"neighborhoods.seed": 3, "pivot_neighborhoods.seed": 3,
                   "hard_negatives.seed": 3, "positives.seed": 3, "pipeline.seed": 3}
  shared_pool = config.with_overrides(["hard_negatives.seed=0"])
  assert shared_pool.hard_negatives.seed == 0 and shared_pool.pipeline.seed == 3


def test_experiment_json_round_trips_exactly(small_graph_dir, tmp_path):
  config = training.ExperimentConfig().with_seed(2).with_overrides([
      "neighborhoods.restart_prob=0.3", "neighborhoods.degree_exponent=0.5",
      "pivot_neighborhoods.num_neighbors=7", "hard_negatives.window_start=5",
      "hard_negatives.window_end=40", "pipeline.pivot_batch_size=16",
      "positives.item_pairs=walks", "pipeline.negative_sampling=degree",
      "model.neighbor_dim=24", "model.item_bias=true", "model.encoder.use_id_embedding=true",
      "train.clip_norm=none", "train.loss=sampled_softmax", "train.keep_checkpoints=2",
      "strategy=one_device"])
  # As saved by `train`: the encoder schema filled from the graph.
  config = training.resolve_model_config(config, graph_lib.load_graph(small_graph_dir))
  config.save(tmp_path)
  assert training.ExperimentConfig.load(tmp_path) == config
  with open(tmp_path / training.EXPERIMENT_FILE) as f:
    assert training.ExperimentConfig.from_dict(json.load(f)) == config


def test_from_dict_errors_name_the_section():
  with pytest.raises(ValueError, match=r"ExperimentConfig.train: unknown keys \['epoch'\]"):
    training.ExperimentConfig.from_dict({"train": {"epoch": 3}})
  with pytest.raises(ValueError, match=r"ExperimentConfig.train: expected an object"):
    training.ExperimentConfig.from_dict({"train": 3})
  # Absent keys keep the defaults of the dataclasses.
  assert training.ExperimentConfig.from_dict({}) == training.ExperimentConfig()
