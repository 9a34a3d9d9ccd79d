r"""Trains PinSage: `python -m trainer.train --graph_dir=... --model_dir=...`.

Flags -> `ExperimentConfig` (one function, `config_from_flags`) -> saved as
`model_dir/experiment.json` -> `pinsage_tf.training.train`. Re-running the same
command after a crash resumes from the last checkpoint in `model_dir`.

  --strategy=mirrored (default; all GPUs, else the CPU) | one_device |
             multi_worker_mirrored (cluster from TF_CONFIG)
  --num_cpu_devices=N  split the CPU into N logical devices (multi-replica
                       runs on a machine without accelerators)
  --config_json=FILE   start from a saved experiment config (e.g. a versioned
                       hyper-parameter file); explicitly given flags override it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

from absl import app
from absl import flags
from absl import logging

import pinsage_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF loads)
from pinsage_tf import atomic
from pinsage_tf import distribute
from pinsage_tf import hard_negatives as hard_lib
from pinsage_tf import model as model_lib
from pinsage_tf import neighborhoods as nb_lib
from pinsage_tf import pipeline
from pinsage_tf import training

_GRAPH_DIR = flags.DEFINE_string("graph_dir", None, "Graph directory from data.prepare.")
_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Output: checkpoints, summaries, model.")
_CONFIG_JSON = flags.DEFINE_string("config_json", None,
                                   "Experiment config JSON to start from (flags given "
                                   "explicitly override its values).")
_STRATEGY = flags.DEFINE_enum("strategy", "mirrored", list(distribute.STRATEGIES),
                              "Distribution strategy.")
_NUM_CPU_DEVICES = flags.DEFINE_integer("num_cpu_devices", 1,
                                        "Logical CPU devices for 'mirrored' without GPUs.")
# Neighborhoods.
_NUM_NEIGHBORS = flags.DEFINE_integer("num_neighbors", 10, "T: importance neighbors per item.")
_NUM_WALKS = flags.DEFINE_integer("num_walks", 100, "Random walks per item.")
_MAX_HOPS = flags.DEFINE_integer("max_hops", 3, "item->pivot->item traversals per walk.")
_RESTART_PROB = flags.DEFINE_float("restart_prob", 0.5, "Walk restart probability.")
_DEGREE_EXPONENT = flags.DEFINE_float(
    "degree_exponent", 0.0, "Neighbor importance = visits / degree^x (0 = visit counts).")
_PIVOT_NEIGHBORS = flags.DEFINE_integer("pivot_neighbors", 32,
                                        "T_p: importance neighbors (items) per pivot.")
_PIVOT_HOPS = flags.DEFINE_integer("pivot_hops", 1,
                                   "Traversals per walk of the pivot neighborhoods.")
# Training pairs.
_ITEM_PAIRS = flags.DEFINE_enum("item_pairs", "graph", ["graph", "walks"],
                                "Item pairs: the prepared pairs, or one item->pivot->item "
                                "walk per edge.")
_PIVOT_BATCH_SIZE = flags.DEFINE_integer(
    "pivot_batch_size", 0, "Global (pivot, item) pairs per step: the pivot objective (0 = off).")
_MAX_PAIRS_PER_PIVOT = flags.DEFINE_integer(
    "max_pairs_per_pivot", 0, "Per epoch, at most this many edges of one pivot (0 = all).")
_MASK_PAIR_LEAKAGE = flags.DEFINE_bool(
    "mask_pair_leakage", True, "Drop a pair's positive from its query's neighbors.")
# Pipeline.
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 512, "Global batch size (pairs).")
_NUM_NEGATIVES = flags.DEFINE_integer("num_negatives", 500,
                                      "Negatives shared per replica batch.")
_MAX_HARD = flags.DEFINE_integer("max_hard_negatives", 0,
                                 "Cap of the hard-negative curriculum (epoch n uses n-1).")
_NEGATIVE_SAMPLING = flags.DEFINE_enum("negative_sampling", "uniform", ["uniform", "degree"],
                                       "Distribution of the shared negatives.")
_NUM_LAYERS = flags.DEFINE_integer("num_layers", 2, "K: graph convolutions.")
# Model.
_HIDDEN_DIM = flags.DEFINE_integer("hidden_dim", 256, "Convolution width.")
_EMBEDDING_DIM = flags.DEFINE_integer("embedding_dim", 128, "Output embedding width.")
_POOLING = flags.DEFINE_enum("pooling", "importance", ["importance", "mean", "max"],
                             "Neighbor pooling (importance = the paper).")
_ID_EMBEDDING = flags.DEFINE_enum("id_embedding", "auto", ["auto", "on", "off"],
                                  "Learnable item-id embedding (auto: only without features).")
_DROPOUT = flags.DEFINE_float("dropout", 0.0, "Dropout on convolution inputs.")
_ITEM_BIAS = flags.DEFINE_bool("item_bias", False,
                               "Learn a per-item score offset b_i (scores z_q . z_i + b_i).")
# Optimisation.
_EPOCHS = flags.DEFINE_integer("epochs", 5, "Epochs.")
_STEPS_PER_EPOCH = flags.DEFINE_integer("steps_per_epoch", None,
                                        "Steps per epoch (default: one pass over the pairs).")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 1e-3, "Peak learning rate (Adam).")
_WARMUP_STEPS = flags.DEFINE_integer("warmup_steps", 100, "Linear warm-up steps.")
_DECAY_STEPS = flags.DEFINE_integer("decay_steps", 1000, "Exponential decay period.")
_DECAY_RATE = flags.DEFINE_float("decay_rate", 0.9, "Decay per decay_steps.")
_LOSS = flags.DEFINE_enum("loss", "max_margin", list(training.LOSSES), "Training loss.")
_MARGIN = flags.DEFINE_float("margin", 0.1, "Max-margin Delta.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.1, "Sampled-softmax temperature.")
_CLIP_NORM = flags.DEFINE_float("clip_norm", 10.0, "Global gradient-norm clip (0 = off).")
_IN_BATCH = flags.DEFINE_bool("in_batch_negatives", False,
                              "The batch's other positives are negatives too.")
_LOGQ = flags.DEFINE_bool("logq_correction", False,
                          "Sampled softmax: subtract log expected counts from negative logits.")
_PIVOT_LOSS_WEIGHT = flags.DEFINE_float("pivot_loss_weight", 1.0,
                                        "Weight of the pivot pairs' loss.")
_CHECKPOINT_EVERY = flags.DEFINE_integer("checkpoint_every_steps", 500, "Checkpoint interval.")
_VALIDATION_QUERIES = flags.DEFINE_integer("validation_queries", 2000,
                                           "Validation pairs scored per epoch (0 = off).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of walks, batches and initialisation.")
_HARD_NEGATIVE_SEED = flags.DEFINE_integer(
    "hard_negative_seed", None,
    "Seed of the hard-negative pool sampling (default: --seed). Runs that fix it share the "
    "cached pool, e.g. several training seeds on one graph.")
_QUIET = flags.DEFINE_bool("quiet", False, "No progress bar.")

flags.mark_flags_as_required(["graph_dir", "model_dir"])

_ID_EMBEDDING_VALUES = {"auto": None, "on": True, "off": False}


def config_from_flags() -> training.ExperimentConfig:
  """The one place flags become an `ExperimentConfig`."""
  base = training.ExperimentConfig()
  if _CONFIG_JSON.value:
    with open(_CONFIG_JSON.value) as f:
      base = training.ExperimentConfig.from_dict(json.load(f))

  def pick(flag, current):
    """An explicitly given flag wins over the base config's value."""
    if flag.present or not _CONFIG_JSON.value:
      return _ID_EMBEDDING_VALUES[flag.value] if flag is _ID_EMBEDDING else flag.value
    return current

  nb, hn, pc, mc, tc = base.neighborhoods, base.hard_negatives, base.pipeline, base.model, base.train
  pnb, pos = base.pivot_neighborhoods, base.positives
  num_layers = pick(_NUM_LAYERS, pc.num_layers)
  seed = pick(_SEED, pc.seed)
  clip = pick(_CLIP_NORM, tc.clip_norm)
  pivot_batch_size = pick(_PIVOT_BATCH_SIZE, pc.pivot_batch_size)
  return training.ExperimentConfig(
      neighborhoods=dataclasses.replace(
          nb, num_neighbors=pick(_NUM_NEIGHBORS, nb.num_neighbors),
          num_walks=pick(_NUM_WALKS, nb.num_walks), max_hops=pick(_MAX_HOPS, nb.max_hops),
          restart_prob=pick(_RESTART_PROB, nb.restart_prob),
          degree_exponent=pick(_DEGREE_EXPONENT, nb.degree_exponent), seed=seed),
      pivot_neighborhoods=dataclasses.replace(
          pnb, num_neighbors=pick(_PIVOT_NEIGHBORS, pnb.num_neighbors),
          max_hops=pick(_PIVOT_HOPS, pnb.max_hops), seed=seed),
      hard_negatives=dataclasses.replace(
          hn, seed=seed if _HARD_NEGATIVE_SEED.value is None else _HARD_NEGATIVE_SEED.value),
      positives=dataclasses.replace(
          pos, item_pairs=pick(_ITEM_PAIRS, pos.item_pairs),
          pivot_pairs=pivot_batch_size > 0,
          max_pairs_per_pivot=pick(_MAX_PAIRS_PER_PIVOT, pos.max_pairs_per_pivot), seed=seed),
      pipeline=dataclasses.replace(
          pc, batch_size=pick(_BATCH_SIZE, pc.batch_size), pivot_batch_size=pivot_batch_size,
          mask_pair_leakage=pick(_MASK_PAIR_LEAKAGE, pc.mask_pair_leakage),
          num_negatives=pick(_NUM_NEGATIVES, pc.num_negatives),
          max_hard_negatives=pick(_MAX_HARD, pc.max_hard_negatives),
          negative_sampling=pick(_NEGATIVE_SAMPLING, pc.negative_sampling),
          num_layers=num_layers, seed=seed),
      model=dataclasses.replace(
          mc, hidden_dim=pick(_HIDDEN_DIM, mc.hidden_dim),
          embedding_dim=pick(_EMBEDDING_DIM, mc.embedding_dim), num_layers=num_layers,
          pooling=pick(_POOLING, mc.pooling), dropout_rate=pick(_DROPOUT, mc.dropout_rate),
          item_bias=pick(_ITEM_BIAS, mc.item_bias),
          encoder=dataclasses.replace(
              mc.encoder, use_id_embedding=pick(_ID_EMBEDDING, mc.encoder.use_id_embedding))),
      train=dataclasses.replace(
          tc, epochs=pick(_EPOCHS, tc.epochs),
          steps_per_epoch=pick(_STEPS_PER_EPOCH, tc.steps_per_epoch),
          learning_rate=pick(_LEARNING_RATE, tc.learning_rate),
          warmup_steps=pick(_WARMUP_STEPS, tc.warmup_steps),
          decay_steps=pick(_DECAY_STEPS, tc.decay_steps),
          decay_rate=pick(_DECAY_RATE, tc.decay_rate), loss=pick(_LOSS, tc.loss),
          margin=pick(_MARGIN, tc.margin), temperature=pick(_TEMPERATURE, tc.temperature),
          clip_norm=(clip or None),
          in_batch_negatives=pick(_IN_BATCH, tc.in_batch_negatives),
          logq_correction=pick(_LOGQ, tc.logq_correction),
          pivot_loss_weight=pick(_PIVOT_LOSS_WEIGHT, tc.pivot_loss_weight),
          checkpoint_every_steps=pick(_CHECKPOINT_EVERY, tc.checkpoint_every_steps),
          validation_queries=pick(_VALIDATION_QUERIES, tc.validation_queries)),
      strategy=_STRATEGY.value,
      num_cpu_devices=_NUM_CPU_DEVICES.value,
  )


def main(argv):
  del argv
  config = config_from_flags()
  strategy = distribute.get_strategy(config.strategy, config.num_cpu_devices)
  logging.info("Training with %s over %d replica(s)", type(strategy).__name__,
               strategy.num_replicas_in_sync)
  try:
    result = training.train(_GRAPH_DIR.value, _MODEL_DIR.value, config, strategy,
                            verbose=not _QUIET.value)
  except training.TrainingDivergedError as e:
    print(f"error: training diverged: {e}", file=sys.stderr)
    sys.exit(3)
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    # Bad inputs or configuration (GraphFormatError is a ValueError): one line.
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  summary = {
      "steps": result.steps,
      "epochs": result.epochs,
      "final_loss": round(result.final_loss, 5),
      "validation_metric": result.validation_metric,
      "validation": {str(k): round(v, 4) for k, v in result.validation.items()},
      "examples_per_second": round(result.examples_per_second, 1),
      "wall_time_s": round(result.wall_time_s, 1),
  }
  with atomic.atomic_file(os.path.join(_MODEL_DIR.value, "train_summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  print(json.dumps(summary, indent=2))


def run():
  app.run(main)


if __name__ == "__main__":
  run()
