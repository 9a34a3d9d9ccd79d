r"""Exports SavedModels for TF Serving: `python -m trainer.export`.

    python -m trainer.export --model_dir=MODEL_DIR --graph_dir=GRAPH \
        --embeddings_dir=EMB_DIR --export_base=EXPORT_BASE \
        [--version=N] [--num_neighbors=10] [--models=a,b,c] [--scann_* overrides]

Writes one new version (default: 1 + the highest existing one) of

    EXPORT_BASE/pinsage_retrieval/N/        related items through ScaNN (and, for a
                                            model trained with the pivot objective,
                                            items for a pivot / a request's item set)
    EXPORT_BASE/pinsage_retrieval_exact/N/  the same by brute force, stock TF ops
    EXPORT_BASE/pinsage_embedder/N/         embed_items + embed_new_items (cold start)
    EXPORT_BASE/models.config               model_config_list of every model
    EXPORT_BASE/models_stock.config         only the models stock TF Serving loads

each version built and checked in a hidden temporary directory and renamed
into place only when all of them are ready (see `pinsage_tf.export` for the
signatures and the checks). A model trained with pivot pairs
(`ExperimentConfig.learns_pivots`) needs the pivot embeddings the inference
job wrote (`EMB_DIR/pivot_embeddings_graph.npy`): its retrieval models get
`items_for_pivot` and `items_for_item_set`. The ScaNN model's recall@k
against exact search is printed and recorded in
`N/assets.extra/export_report.json`.

Serve the latest versions with

    python -m serving.server --model_config_file=EXPORT_BASE/models.config

(`serving.server` imports scann, which the ScaNN model needs; stock
`tensorflow/serving` can load `models_stock.config`'s models).

ScaNN settings default to ScaNN's rules of thumb for the corpus size
(`pinsage_tf.scann_index`); `--scann_algorithm`, `--scann_num_leaves`,
`--scann_num_leaves_to_search`, `--scann_reorder_num_neighbors`,
`--scann_dimensions_per_block`, `--scann_anisotropic_quantization_threshold`,
`--scann_training_sample_size` override them. The query-time knobs left
automatic (partitions searched, candidates re-scored) are then tuned to
`--scann_target_recall` (recall@k, default 0.99; 0 keeps the rules of thumb)
on `--scann_tuning_queries` held-out items (outside the recall check's
sample, each item's own embedding with itself excluded, against exact
search); the chosen and the automatic point, their recall and queries/s are
in the report's `search.tuning`.
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
from pinsage_tf import embeddings_io
from pinsage_tf import export as export_lib
from pinsage_tf import graph as graph_lib
from pinsage_tf import model as model_lib
from pinsage_tf import scann_index
from pinsage_tf import training

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Training output directory (trainer.train).")
_GRAPH_DIR = flags.DEFINE_string("graph_dir", None, "Graph directory (data.prepare output).")
_EMBEDDINGS_DIR = flags.DEFINE_string("embeddings_dir", None,
                                      "Embeddings directory (trainer.infer output).")
_EXPORT_BASE = flags.DEFINE_string("export_base", None,
                                   "Root of the TF Serving model directories.")
_VERSION = flags.DEFINE_integer("version", None,
                                "Version number to write (default: 1 + the highest existing).")
_NUM_NEIGHBORS = flags.DEFINE_integer("num_neighbors", 10,
                                      "k: neighbors returned by the retrieval signatures.")
_MODELS = flags.DEFINE_list("models", list(export_lib.ALL_MODELS), "Models to export.")
_RECALL_QUERIES = flags.DEFINE_integer(
    "recall_queries", 1000, "Items sampled to measure ScaNN recall@k against exact search.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the sampled check queries.")
_EXACT_BLOCK_SIZE = flags.DEFINE_integer(
    "exact_block_size", 32768, "Corpus rows per step of the exact model's search.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8192,
                                   "Items per block of the export-time layer-wise pass.")
_SCANN_ALGORITHM = flags.DEFINE_enum(
    "scann_algorithm", "auto", list(scann_index.ALGORITHMS),
    "auto: brute_force below 20k items, ah below 100k, tree_ah above.")
_SCANN_NUM_LEAVES = flags.DEFINE_integer("scann_num_leaves", None,
                                         "Tree partitions (default ~sqrt(N)).")
_SCANN_LEAVES_TO_SEARCH = flags.DEFINE_integer(
    "scann_num_leaves_to_search", None, "Partitions searched per query (default leaves/10).")
_SCANN_REORDER = flags.DEFINE_integer(
    "scann_reorder_num_neighbors", None, "Candidates re-scored exactly (default max(100, 40k)).")
_SCANN_DIMS_PER_BLOCK = flags.DEFINE_integer("scann_dimensions_per_block", 2,
                                             "Asymmetric-hashing block width.")
_SCANN_AQ_THRESHOLD = flags.DEFINE_float(
    "scann_anisotropic_quantization_threshold", 0.2,
    "Anisotropic quantization threshold (nan disables it).")
_SCANN_SAMPLE = flags.DEFINE_integer("scann_training_sample_size", 100_000,
                                     "Points sampled to train the tree and codebooks.")

_SCANN_TARGET_RECALL = flags.DEFINE_float(
    "scann_target_recall", 0.99,
    "Recall@k the automatic leaves-to-search / reorder are tuned to on held-out items "
    "(0 = no tuning, ScaNN's rules of thumb).")
_SCANN_TUNING_QUERIES = flags.DEFINE_integer(
    "scann_tuning_queries", 1000, "Held-out items the ScaNN tuning measures recall on.")

_PIVOT_SIGNATURES = flags.DEFINE_bool(
    "pivot_signatures", True,
    "For a model trained with pivot pairs: export the retrieval models' pivot signatures "
    "(items_for_pivot, items_for_item_set). They hold every item's h^(K-1) ([N, hidden] "
    "floats) and need the layer tables of all items at export time, ~2 kB per item; "
    "--nopivot_signatures leaves them out where that does not fit in memory.")

flags.mark_flags_as_required(["model_dir", "graph_dir", "embeddings_dir", "export_base"])


def config_from_flags() -> export_lib.ExportConfig:
  """The `ExportConfig` described by the flags."""
  scann = scann_index.ScannConfig(
      algorithm=_SCANN_ALGORITHM.value,
      num_leaves=_SCANN_NUM_LEAVES.value,
      num_leaves_to_search=_SCANN_LEAVES_TO_SEARCH.value,
      dimensions_per_block=_SCANN_DIMS_PER_BLOCK.value,
      anisotropic_quantization_threshold=_SCANN_AQ_THRESHOLD.value,
      reorder_num_neighbors=_SCANN_REORDER.value,
      training_sample_size=_SCANN_SAMPLE.value,
      target_recall=_SCANN_TARGET_RECALL.value or None,
      tuning_queries=_SCANN_TUNING_QUERIES.value)
  return export_lib.ExportConfig(
      num_neighbors=_NUM_NEIGHBORS.value, scann=scann, recall_queries=_RECALL_QUERIES.value,
      seed=_SEED.value, exact_block_size=_EXACT_BLOCK_SIZE.value,
      batch_size=_BATCH_SIZE.value, models=tuple(_MODELS.value))


def export(model_dir: str, graph_dir: str, embeddings_dir: str, export_base: str,
           config: export_lib.ExportConfig, version: int | None = None,
           pivot_signatures: bool = True) -> dict:
  """Loads the trained model, its tables and embeddings, and exports them.

  `pivot_signatures=False` exports a pivot model without its pivot signatures.
  """
  if version is not None:  # fail before the slow loading (export_models checks again)
    for name in config.models:
      dest = os.path.join(export_base, name, str(version))
      if os.path.exists(dest):
        raise FileExistsError(f"{dest} already exists; versions are immutable, pass another "
                              "--version or omit it for the next one.")
  experiment = training.ExperimentConfig.load(model_dir)
  inputs = training.prepare_inputs(graph_dir, experiment, hard_negatives=False)
  weights_dir = os.path.join(model_dir, training.MODEL_DIR)
  model = model_lib.load_model(weights_dir)
  fingerprint = graph_lib.graph_fingerprint(graph_dir)
  embeddings = embeddings_io.load_embeddings(embeddings_dir, inputs.graph,
                                             graph_fingerprint=fingerprint)
  if (embeddings.manifest.get("refresh_scope") or {}).get("mode") == "bounded":
    raise ValueError(
        f"{embeddings_dir}: written by a bounded trainer.refresh, which keeps some rows from the "
        "previous tables (they would fail the export's consistency check); that refresh "
        "published its own exports. For a fresh export, re-run trainer.infer and then "
        "trainer.export.")
  source = {"model_dir": os.path.abspath(model_dir), "graph_dir": os.path.abspath(graph_dir),
            "embeddings_dir": os.path.abspath(embeddings_dir),
            "graph_fingerprint": fingerprint,
            "embeddings_model_checkpoint": embeddings.manifest.get("model_checkpoint")}
  pivot_vectors = None
  if experiment.learns_pivots and pivot_signatures:
    pivot_vectors = embeddings.pivot_vectors.get("graph")
    if pivot_vectors is None:
      raise ValueError(
          f"{embeddings_dir}: the model was trained with pivot pairs but the directory has no "
          f"{embeddings_io.pivot_file('graph')}; re-run trainer.infer with this model_dir.")
  return export_lib.export_models(
      export_base, model=model, graph=inputs.graph, tables=inputs.tables,
      embeddings=embeddings.vectors, config=config, version=version, source=source,
      item_bias=embeddings.item_bias, pivot_embeddings=pivot_vectors)


def _summary(result: dict) -> dict:
  out = {"version": result["version"], "seconds": result["seconds"],
         "models_config": result["models_config"],
         "models_stock_config": result["models_stock_config"], "models": {}}
  for name, entry in result["models"].items():
    report = entry["report"]
    item = {"path": entry["path"], "signatures": sorted(report["signatures"]),
            "custom_ops": report["custom_ops"]}
    if "search" in report:
      item["search"] = report["search"]
    for key in ("check", "cold_start", "pivots"):
      if report.get(key):
        item[key] = report[key]
    out["models"][name] = item
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    config = config_from_flags()
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  try:
    result = export(_MODEL_DIR.value, _GRAPH_DIR.value, _EMBEDDINGS_DIR.value,
                    _EXPORT_BASE.value, config, _VERSION.value,
                    pivot_signatures=_PIVOT_SIGNATURES.value)
  except (ValueError, FileNotFoundError, FileExistsError, export_lib.ExportError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  summary = _summary(result)
  retrieval = summary["models"].get(export_lib.RETRIEVAL)
  if retrieval and retrieval["check"].get("queries"):
    k = config.num_neighbors
    logging.info("ScaNN (%s) recall@%d vs exact: %.4f on %d queries",
                 retrieval["search"]["scann"]["algorithm"], k,
                 retrieval["check"][f"recall@{k}"], retrieval["check"]["queries"])
  print(json.dumps(summary, indent=2, sort_keys=True))


def run():
  app.run(main)


if __name__ == "__main__":
  run()
