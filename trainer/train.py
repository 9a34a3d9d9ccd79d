r"""Trains PinSage on a prepared graph, resumably.

    python -m trainer.train --graph_dir=GRAPH --model_dir=OUT \
        [--config_json=trainer/configs/lightgcn.json] [--seed=N] \
        [--set=train.epochs=3 --set=model.encoder.use_id_embedding=false ...] [--quiet]

The experiment is `training.ExperimentConfig`, whose dataclasses hold every
default. It starts from `--config_json` (a versioned file in `trainer/configs/`
or a run's `experiment.json`; absent keys keep their defaults) or from the
defaults; `--seed` then sets every seed (`ExperimentConfig.with_seed`), and
`--set=section.field=value` (repeatable; a repeated key keeps its last value)
any field, nested ones included (`ExperimentConfig.with_overrides`), e.g.
`pipeline.batch_size=256`, `train.clip_norm=none`, `strategy=one_device`,
`num_cpu_devices=2`. A value is parsed by its field's type (`true`/`false`,
numbers, text, `none` where a field may be None). The resolved config is
written to `model_dir/experiment.json`; `--config_json=OUT/experiment.json`
reproduces it.

Re-running into the same model_dir resumes from its last checkpoint (the new
command's config replaces experiment.json; the checkpoint must fit its model).
Exit codes: 2 for a bad config or bad inputs (one line on stderr, naming the
key or file), 3 when training diverged. On success the summary (steps, final
loss, validation metric per epoch, examples/s) is printed and written to
`model_dir/train_summary.json`.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app
from absl import flags
from absl import logging

from trainer import startup  # noqa: F401  (TensorFlow's log level; before TF loads)
import pinsage_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF loads)
from pinsage_tf import atomic
from pinsage_tf import distribute
from pinsage_tf import training

_GRAPH_DIR = flags.DEFINE_string("graph_dir", None, "Graph directory from data.prepare.")
_MODEL_DIR = flags.DEFINE_string("model_dir", None,
                                 "Output: experiment.json, checkpoints, summaries, model.")
_CONFIG_JSON = flags.DEFINE_string("config_json", None,
                                   "Experiment config JSON to start from (default: the "
                                   "ExperimentConfig defaults).")
_SEED = flags.DEFINE_integer("seed", None,
                             "Sets every seed of the experiment (walks, hard-negative pools, "
                             "pairs, batches); a --set of one seed then overrides it.")
_SET = flags.DEFINE_multi_string("set", [],
                                 "section.field=value override of the experiment config, "
                                 "repeatable (e.g. --set=train.epochs=3).")
_QUIET = flags.DEFINE_bool("quiet", False, "No progress bar.")

flags.mark_flags_as_required(["graph_dir", "model_dir"])


def config_from_flags() -> training.ExperimentConfig:
  """The one place flags become an `ExperimentConfig`."""
  config = training.ExperimentConfig()
  if _CONFIG_JSON.value:
    with open(_CONFIG_JSON.value) as f:
      try:
        config = training.ExperimentConfig.from_dict(json.load(f))
      except (ValueError, TypeError) as e:
        raise ValueError(f"{_CONFIG_JSON.value}: {e}") from None
  if _SEED.value is not None:
    config = config.with_seed(_SEED.value)
  return config.with_overrides(_SET.value)


def main(argv):
  if len(argv) > 1:
    print(f"error: unexpected arguments {argv[1:]}; a config override is "
          "--set=section.field=value.", file=sys.stderr)
    sys.exit(2)
  try:
    config = config_from_flags()
    strategy = distribute.get_strategy(config.strategy, config.num_cpu_devices)
    logging.info("Training with %s over %d replica(s)", type(strategy).__name__,
                 strategy.num_replicas_in_sync)
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
