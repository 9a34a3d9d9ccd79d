r"""Embeds every item, layer by layer: `python -m trainer.infer`.

    python -m trainer.infer --graph_dir=GRAPH --model_dir=MODEL_DIR \
        --output_dir=EMB_DIR [--runner=local|beam] [--overwrite] [--checkpoint_step=N]

Reads `MODEL_DIR/experiment.json` and the trained weights in `MODEL_DIR/model`
(or, with `--checkpoint_step=N`, the training checkpoint
`MODEL_DIR/checkpoints/ckpt-N`: learning curves and early stopping; local runner),
the graph and its cached neighborhood table (the one training used), computes
each layer once for all items (`pinsage_tf.inference`, or the Apache Beam
pipeline of `pinsage_tf.beam_inference` with `--runner=beam`; extra Beam
pipeline options such as `--direct_num_workers=2` or `--runner=FlinkRunner`
go after `--`), and writes atomically:

    EMB_DIR/embeddings.npy    float32 [num_items, dim], L2-normalised
    EMB_DIR/item_ids.txt      raw item id of each row
    EMB_DIR/manifest.json     model checkpoint, graph fingerprint, dim, count
    EMB_DIR/projector/        TensorBoard embedding-projector files
"""

from __future__ import annotations

import os
import sys
import time

from absl import app
from absl import flags
from absl import logging

import pinsage_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF loads)
from pinsage_tf import embeddings_io
from pinsage_tf import graph as graph_lib
from pinsage_tf import inference
from pinsage_tf import model as model_lib
from pinsage_tf import training

_GRAPH_DIR = flags.DEFINE_string("graph_dir", None, "Graph directory (data.prepare output).")
_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Training output directory.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Embeddings directory to write.")
_RUNNER = flags.DEFINE_enum("runner", "local", ["local", "beam"],
                            "local (in-process, batched) or beam (Apache Beam pipeline).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8192, "Items per block (local runner).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --output_dir.")
_CHECKPOINT_STEP = flags.DEFINE_integer(
    "checkpoint_step", None,
    "Embed with the training checkpoint of this step (MODEL_DIR/checkpoints/ckpt-N) instead "
    "of the final model (local runner).")

flags.mark_flags_as_required(["graph_dir", "model_dir", "output_dir"])


def checkpoint_prefix(model_dir: str, step: int) -> str:
  """The training checkpoint of `step` in `model_dir`; ValueError lists the existing ones."""
  directory = os.path.join(model_dir, training.CHECKPOINT_DIR)
  prefix = os.path.join(directory, f"ckpt-{step}")
  if not os.path.isfile(prefix + ".index"):
    names = os.listdir(directory) if os.path.isdir(directory) else []
    steps = sorted(int(n[5:-6]) for n in names
                   if n.startswith("ckpt-") and n.endswith(".index") and n[5:-6].isdigit())
    raise ValueError(f"{prefix}: no such checkpoint; {directory} has steps {steps}.")
  return prefix


def embed(graph_dir: str, model_dir: str, runner: str = "local", batch_size: int = 8192,
          beam_args: list[str] | None = None, checkpoint_step: int | None = None):
  """Returns (graph, embeddings [N, E], item biases [N] or None, checkpoint
  path) for a trained model.

  `checkpoint_step` selects a training checkpoint instead of the final model.
  """
  config = training.ExperimentConfig.load(model_dir)
  if checkpoint_step is not None and runner != "local":
    raise ValueError("--checkpoint_step needs --runner=local.")
  weights_dir = os.path.join(model_dir, training.MODEL_DIR)
  if checkpoint_step is not None:
    weights_dir = checkpoint_prefix(model_dir, checkpoint_step)
  inputs = training.prepare_inputs(graph_dir, config, hard_negatives=False)

  def progress(stage, done, total):
    if done == total or done % (batch_size * 4) == 0:
      logging.info("%s: %d/%d items", stage, done, total)

  if runner == "beam":
    from pinsage_tf import beam_inference  # pylint: disable=g-import-not-at-top
    # Workers rebuild the model from weights_dir and read the graph and its
    # cached neighborhood table themselves (prepare_inputs made sure it exists).
    beam_config = beam_inference.BeamInferenceConfig(
        graph_dir=os.path.abspath(graph_dir), weights_dir=os.path.abspath(weights_dir),
        neighborhoods=config.neighborhoods,
        max_sparse_length=config.pipeline.max_sparse_length)
    vectors, bias = beam_inference.run_layerwise_outputs(beam_config,
                                                         pipeline_args=beam_args or [])
  elif checkpoint_step is not None:
    model = model_lib.PinSageModel(config.model)
    model_lib.restore_weights(model, weights_dir, strict=False)
    vectors, bias = inference.layerwise_outputs(model, inputs.tables, batch_size=batch_size,
                                                progress=progress)
  else:
    model = model_lib.load_model(weights_dir)
    vectors, bias = inference.layerwise_outputs(model, inputs.tables, batch_size=batch_size,
                                                progress=progress)
  return inputs.graph, vectors, bias, weights_dir


def main(argv):
  started = time.perf_counter()
  if os.path.exists(_OUTPUT_DIR.value) and not _OVERWRITE.value:
    print(f"error: {_OUTPUT_DIR.value} already exists; pass --overwrite to replace it.",
          file=sys.stderr)
    sys.exit(2)
  try:
    graph, vectors, bias, weights_dir = embed(_GRAPH_DIR.value, _MODEL_DIR.value, _RUNNER.value,
                                        _BATCH_SIZE.value, beam_args=list(argv[1:]),
                                        checkpoint_step=_CHECKPOINT_STEP.value)
    manifest = embeddings_io.save_embeddings(
        _OUTPUT_DIR.value, vectors, graph.item_ids,
        {"graph_fingerprint": graph_lib.graph_fingerprint(_GRAPH_DIR.value),
         "graph_dir": os.path.abspath(_GRAPH_DIR.value),
         "model_checkpoint": os.path.abspath(weights_dir),
         "runner": _RUNNER.value},
        item_titles=graph.item_titles, overwrite=_OVERWRITE.value, item_bias=bias)
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except RuntimeError as e:
    # Beam integrity checks (lost messages, incomplete shards): nothing written.
    print(f"error: inference failed: {e}", file=sys.stderr)
    sys.exit(3)
  print(f"wrote {manifest['count']} embeddings of dim {manifest['dim']} to "
        f"{_OUTPUT_DIR.value} in {time.perf_counter() - started:.1f} s ({_RUNNER.value} runner)")


def run():
  app.run(main)


if __name__ == "__main__":
  run()
