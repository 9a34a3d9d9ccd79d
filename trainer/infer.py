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
    EMB_DIR/item_bias.npy     item biases, for a model with item biases
    EMB_DIR/pivot_ids.txt, EMB_DIR/pivot_embeddings_graph.npy
                              for a model trained with pivot pairs: every
                              pivot embedded from its graph items, and
                              (`..._graph_validation.npy`) from its graph
                              plus validation items when the graph holds a
                              validation hold-out (what the test split knows)
    EMB_DIR/manifest.json     model checkpoint, graph fingerprint, dim, count
    EMB_DIR/projector/        TensorBoard embedding-projector files (the first 100,000 items)
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

import numpy as np

from absl import app
from absl import flags
from absl import logging

from trainer import startup  # noqa: F401  (TensorFlow's log level; before TF loads)
import pinsage_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF loads)
from pinsage_tf import embeddings_io
from pinsage_tf import graph as graph_lib
from pinsage_tf import inference
from pinsage_tf import model as model_lib
from pinsage_tf import neighborhoods as nb_lib
from pinsage_tf import retrieval_exact
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


@dataclasses.dataclass(frozen=True)
class Inferred:
  """What `embed` computed: item embeddings `[N, E]`, item biases `[N]` or
  None, pivot embeddings {history: `[M, E]`} (empty unless the model learns
  pivots), and the weights used."""

  graph: graph_lib.Graph
  vectors: np.ndarray
  bias: np.ndarray | None
  pivot_vectors: dict[str, np.ndarray]
  weights_dir: str


def pivot_item_lists(graph: graph_lib.Graph) -> dict[str, graph_lib.CSR]:
  """The item histories pivots are embedded from: {"graph": graph edges} and,
  with a validation hold-out, {"graph+validation": edges plus validation items}."""
  lists = {"graph": graph.pivot_to_item}
  if graph.heldout.validation.nnz:
    lists["graph+validation"] = retrieval_exact.concat_rows(graph.pivot_to_item,
                                                            graph.heldout.validation)
  return lists


def pivot_tables(inputs: training.TrainingInputs, config: training.ExperimentConfig
                 ) -> dict[str, nb_lib.Neighborhoods]:
  """The pivot neighborhood table of each history of `pivot_item_lists`: the
  cached one training used for "graph", walks from the longer lists otherwise
  (same config and seed, so both runners embed the same tables)."""
  tables = {}
  for history, lists in pivot_item_lists(inputs.graph).items():
    if history == "graph":
      tables[history] = inputs.pivot_neighborhoods
    else:
      tables[history] = nb_lib.compute_pivot_neighborhoods(inputs.graph,
                                                           config.pivot_neighborhoods, lists)
  return tables


def embed(graph_dir: str, model_dir: str, runner: str = "local", batch_size: int = 8192,
          beam_args: list[str] | None = None, checkpoint_step: int | None = None) -> Inferred:
  """Embeds every item (and, for a model trained with pivot pairs, every pivot).

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
      logging.info("%s: %d/%d", stage, done, total)

  tables = pivot_tables(inputs, config) if config.learns_pivots else {}
  pivot_vectors: dict[str, np.ndarray] = {}
  if runner == "beam" and config.pipeline.content_neighbors:
    raise ValueError("--runner=beam does not build content neighborhoods "
                     "(pipeline.content_neighbors); use --runner=local.")
  if runner == "beam":
    from pinsage_tf import beam_inference  # pylint: disable=g-import-not-at-top
    # Workers rebuild the model from weights_dir and read the graph and its
    # cached neighborhood table themselves (prepare_inputs made sure it
    # exists); the pivot tables are staged beside the pipeline's shards.
    beam_config = beam_inference.BeamInferenceConfig(
        graph_dir=os.path.abspath(graph_dir), weights_dir=os.path.abspath(weights_dir),
        neighborhoods=config.neighborhoods,
        max_sparse_length=config.pipeline.max_sparse_length)
    out = beam_inference.run_layerwise_inference(beam_config, pivot_neighborhoods=tables,
                                                 pipeline_args=beam_args or [])
    vectors, bias, pivot_vectors = out.vectors, out.bias, out.pivot_vectors
  else:
    if checkpoint_step is not None:
      model = model_lib.PinSageModel(config.model)
      model_lib.restore_weights(model, weights_dir, strict=False)
    else:
      model = model_lib.load_model(weights_dir)
    layerwise = inference.LayerwiseInference(model, inputs.tables, batch_size=batch_size)
    vectors, bias = layerwise.outputs(progress)
    for history, table in tables.items():
      pivot_vectors[history] = layerwise.pivot_embeddings(
          np.asarray(table.ids), np.asarray(table.weights), progress)
  return Inferred(inputs.graph, vectors, bias, pivot_vectors, weights_dir)


def main(argv):
  started = time.perf_counter()
  if os.path.exists(_OUTPUT_DIR.value) and not _OVERWRITE.value:
    print(f"error: {_OUTPUT_DIR.value} already exists; pass --overwrite to replace it.",
          file=sys.stderr)
    sys.exit(2)
  try:
    out = embed(_GRAPH_DIR.value, _MODEL_DIR.value, _RUNNER.value, _BATCH_SIZE.value,
                beam_args=list(argv[1:]), checkpoint_step=_CHECKPOINT_STEP.value)
    manifest = embeddings_io.save_embeddings(
        _OUTPUT_DIR.value, out.vectors, out.graph.item_ids,
        {"graph_fingerprint": graph_lib.graph_fingerprint(_GRAPH_DIR.value),
         "graph_dir": os.path.abspath(_GRAPH_DIR.value),
         "model_checkpoint": os.path.abspath(out.weights_dir),
         "runner": _RUNNER.value},
        item_titles=out.graph.item_titles, overwrite=_OVERWRITE.value, item_bias=out.bias,
        pivot_ids=out.graph.pivot_ids if out.pivot_vectors else None,
        pivot_embeddings=out.pivot_vectors or None)
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except RuntimeError as e:
    # Beam integrity checks (lost messages, incomplete shards): nothing written.
    print(f"error: inference failed: {e}", file=sys.stderr)
    sys.exit(3)
  pivots = manifest.get("pivots")
  print(f"wrote {manifest['count']} embeddings of dim {manifest['dim']}"
        + (f" and {pivots['count']} pivot embeddings ({', '.join(pivots['histories'])})"
           if pivots else "")
        + f" to {_OUTPUT_DIR.value} in {time.perf_counter() - started:.1f} s "
        f"({_RUNNER.value} runner)")


def run():
  app.run(main)


if __name__ == "__main__":
  run()
