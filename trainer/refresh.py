r"""Adds new edges and items, re-embeds what changed, publishes new versions: `trainer.refresh`.

    python -m trainer.refresh --graph_dir=GRAPH --new_edges_csv=EDGES.csv \
        [--new_item_features_csv=FEATURES.csv] --model_dir=MODEL_DIR \
        --embeddings_dir=EMB_DIR --export_base=EXPORT_BASE [--report_json=FILE]

No training: the model in MODEL_DIR embeds the grown graph.
`--refresh_mode=exact` (default) gives what a full rebuild with the same
model gives; `--refresh_mode=bounded` recomputes only near the new edges
(`--walk_traversals`, `--embed_hops`) and keeps the other rows, which is what
makes a refresh cheaper than a rebuild on a dense graph (`pinsage_tf.refresh`
states what is recomputed, why the exact mode is exact and the bounded mode's
staleness bound). The ScaNN search keeps the query-time settings the served
`pinsage_retrieval` version was tuned to (`--retune_scann` tunes again).
The export is incremental: each model's new version reuses the previous
version's graph (nothing is traced; `pinsage_tf.export.reuse`), the ScaNN
index is the previous one with the changed and new rows upserted while few
rows changed since its training (`scann_index.update_state`), and the checks
that query the built models draw their queries among the rows the refresh
recomputed (the scope's `fresh` rows, all rows in the exact scope). By default
(`--verify_reused=artifacts`) a new version is checked on its files: its
checkpoint and vocabularies are read back and compared with what was exported,
and the check queries and warm-up requests are answered from them (numpy, and
ScaNN's pybind searcher on the version's index; `pinsage_tf.export.artifact_checks`);
`--verify_reused=load` loads every version through TensorFlow and queries it. Steps:

1. read the newest published versions of GRAPH and EMB_DIR
   (`pinsage_tf.versions_on_disk`: `GRAPH.latest` names it; GRAPH itself
   before the first refresh) and check the new edges against that graph
   (`data.new_edges`: unknown columns, an id used as item and pivot, a new
   item without features in a graph with features -- file:line errors);
2. append the edges, walk again the neighborhood chunks whose walks can
   change, embed again the items (and pivots) whose K-layer inputs changed;
3. write `GRAPH.v<N>` (graph, checksums, neighborhood tables) and
   `EMB_DIR.v<N>` (the embeddings directory format of `trainer.infer`),
   export a new integer version of every model into EXPORT_BASE
   (`pinsage_tf.export`, incrementally as above), which a running
   `serving.server` loads and swaps to;
4. only then move the pointers `GRAPH.latest` and `EMB_DIR.latest`.

A file whose edges are all in the graph already publishes nothing (the
summary says so). Bad input or a failed step prints `error: ...`, exits with status 2 and
publishes nothing (versions written before the failure are removed).
Previous versions are never modified; delete old ones when no server or job
uses them.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from typing import Any

from absl import app
from absl import flags
from absl import logging

from trainer import startup  # noqa: F401  (TensorFlow's log level; before TF loads)
import pinsage_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF loads)
from data import new_edges as new_edges_lib
from data.errors import InputError
from pinsage_tf import atomic
from pinsage_tf import embeddings_io
from pinsage_tf import export as export_lib
from pinsage_tf import graph as graph_lib
from pinsage_tf import model as model_lib
from pinsage_tf import refresh as refresh_lib
from pinsage_tf import training
from pinsage_tf import versions_on_disk

_GRAPH_DIR = flags.DEFINE_string(
    "graph_dir", None, "Graph directory (data.prepare output); its newest version is refreshed.")
_NEW_EDGES_CSV = flags.DEFINE_string("new_edges_csv", None,
                                     "New edges: header pivot_id,item_id[,timestamp].")
_NEW_ITEM_FEATURES_CSV = flags.DEFINE_string(
    "new_item_features_csv", None,
    "Dense features of the new items: header item_id,<the graph's dense feature names>.")
_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Training output directory (trainer.train).")
_EMBEDDINGS_DIR = flags.DEFINE_string(
    "embeddings_dir", None, "Embeddings directory (trainer.infer output); versions go beside it.")
_EXPORT_BASE = flags.DEFINE_string("export_base", None,
                                   "Root of the TF Serving model directories.")
_NUM_NEIGHBORS = flags.DEFINE_integer("num_neighbors", 10,
                                      "k: neighbors returned by the retrieval signatures.")
_MODELS = flags.DEFINE_list("models", list(export_lib.ALL_MODELS), "Models to export.")
_REPORT_JSON = flags.DEFINE_string("report_json", None, "Also write the summary here.")
_REFRESH_MODE = flags.DEFINE_enum(
    "refresh_mode", "exact", list(refresh_lib.REFRESH_MODES),
    "exact: equal to a full rebuild with the same model; bounded: only rows near the new edges "
    "are walked and embedded again (pinsage_tf/refresh.py states the staleness bound).")
_WALK_TRAVERSALS = flags.DEFINE_integer(
    "walk_traversals", 0, "bounded: items within this many item-pivot-item traversals of an "
    "item with new edges are walked again (0: those items).")
_EMBED_HOPS = flags.DEFINE_integer(
    "embed_hops", 1, "bounded: items within this many neighbor-table steps of a changed input "
    "are embedded again.")
_VERIFY_REUSED = flags.DEFINE_enum(
    "verify_reused", export_lib.ExportConfig.verify_reused, list(export_lib.VERIFY_MODES),
    "How each new export version (the previous version's graph with new variables) is checked "
    "before it is published: artifacts = its files are read back and the check queries are "
    "answered from them; load = it is loaded through TensorFlow and queried.")
_RETUNE_SCANN = flags.DEFINE_bool(
    "retune_scann", False, "Tune the ScaNN search again instead of keeping the served version's "
    "leaves_to_search / reorder_num_neighbors.")

flags.mark_flags_as_required(["graph_dir", "new_edges_csv", "model_dir", "embeddings_dir",
                              "export_base"])


def run_refresh(graph_dir: str, new_edges_csv: str, model_dir: str, embeddings_dir: str,
                export_base: str, *, new_item_features_csv: str | None = None,
                export_config: export_lib.ExportConfig | None = None,
                num_threads: int | None = None,
                scope: refresh_lib.RefreshScope | None = None,
                retune_scann: bool = False) -> dict[str, Any]:
  """One refresh (module docstring); returns the summary.

  Raises:
    InputError: bad new edges or features (nothing written).
    ValueError, FileNotFoundError, FileExistsError, export_lib.ExportError:
      other failures (nothing published).
  """
  started = time.perf_counter()
  export_config = export_config or export_lib.ExportConfig()
  scope = scope or refresh_lib.RefreshScope()
  if not retune_scann:
    export_config = export_lib.served_scann_settings(export_base, export_config)
  seconds: dict[str, float] = {}

  def lap(name: str, since: float) -> float:
    now = time.perf_counter()
    seconds[name] = round(now - since, 3)
    return now

  current_graph = versions_on_disk.resolve(graph_dir)
  current_emb = versions_on_disk.resolve(embeddings_dir)
  experiment = training.ExperimentConfig.load(model_dir)
  if experiment.pipeline.content_neighbors:
    raise ValueError(f"{model_dir}: pipeline.content_neighbors is not supported by the "
                     "refresh; rebuild with trainer.infer and trainer.export.")
  inputs = training.prepare_inputs(current_graph, experiment, hard_negatives=False)
  graph = inputs.graph
  embeddings = embeddings_io.load_embeddings(
      current_emb, graph, graph_fingerprint=graph_lib.graph_fingerprint(current_graph))
  edges = new_edges_lib.read_new_edges(new_edges_csv, graph, new_item_features_csv)
  if not edges.item_ids.size:
    # Every edge is in the graph already: the current versions stay the newest.
    return {"graph_dir": current_graph, "embeddings_dir": current_emb, "export_version": None,
            "export": None,
            "new_items": 0, "skipped_existing_edges": edges.skipped_existing,
            "recomputed": None,
            "seconds": {"total": round(time.perf_counter() - started, 3)}}
  model = model_lib.load_model(os.path.join(model_dir, training.MODEL_DIR))
  t = lap("load", started)
  pivot_vectors = None
  if experiment.learns_pivots:
    pivot_vectors = dict(embeddings.pivot_vectors)
    missing = set(refresh_lib.pivot_lists(graph)) - set(pivot_vectors)
    if missing:
      raise ValueError(f"{current_emb}: no pivot embeddings for {sorted(missing)}; re-run "
                       "trainer.infer with this model_dir.")
  version = versions_on_disk.next_version(graph_dir)
  result = refresh_lib.refresh(
      model, graph, inputs.neighborhoods, embeddings.vectors, bias=embeddings.item_bias,
      pivot_ids=edges.pivot_ids, item_ids=edges.item_ids, new_item_dense=edges.new_item_dense,
      pivot_neighborhoods=inputs.pivot_neighborhoods, pivot_vectors=pivot_vectors,
      max_sparse_length=experiment.pipeline.max_sparse_length,
      negative_sampling=experiment.pipeline.negative_sampling,
      metadata={"refresh": {"parent": current_graph,
                            "parent_fingerprint": graph_lib.graph_fingerprint(current_graph),
                            "new_edges_csv": os.path.abspath(new_edges_csv),
                            "new_edges_sha256": atomic.sha256_file(new_edges_csv),
                            "version": version}},
      num_threads=num_threads, batch_size=export_config.batch_size, scope=scope)
  t = lap("refresh", t)

  written: list[str] = []
  try:
    new_graph_dir = refresh_lib.publish_graph_version(
        graph_dir, result.graph, result.neighborhoods, result.pivot_neighborhoods,
        version=version)
    written.append(new_graph_dir)
    fingerprint = graph_lib.graph_fingerprint(new_graph_dir)
    emb_version = max(versions_on_disk.next_version(embeddings_dir), version)
    new_emb_dir = versions_on_disk.version_path(embeddings_dir, emb_version)
    embeddings_io.save_embeddings(
        new_emb_dir, result.vectors, result.graph.item_ids,
        {"graph_fingerprint": fingerprint, "graph_dir": new_graph_dir,
         "model_checkpoint": os.path.abspath(os.path.join(model_dir, training.MODEL_DIR)),
         "runner": "refresh", "refreshed_from": current_emb,
         "refresh_scope": scope.to_json()},
        item_titles=result.graph.item_titles, item_bias=result.bias,
        pivot_ids=result.graph.pivot_ids if result.pivot_vectors else None,
        pivot_embeddings=result.pivot_vectors or None, projector_from=current_emb)
    written.append(new_emb_dir)
    t = lap("write", t)
    exported = export_lib.export_models(
        export_base, model=model, graph=result.graph, tables=result.tables,
        embeddings=result.vectors, config=export_config, item_bias=result.bias,
        pivot_embeddings=result.pivot_vectors.get("graph"),
        fresh_items=result.fresh_items, fresh_pivots=result.fresh_pivots,
        source={"model_dir": os.path.abspath(model_dir), "graph_dir": new_graph_dir,
                "embeddings_dir": new_emb_dir, "graph_fingerprint": fingerprint,
                "refresh": True},
        reuse_graphs=True, update_index=True, checks_on_fresh_rows=True)
    t = lap("export", t)
  except BaseException:
    for path in written:
      shutil.rmtree(path, ignore_errors=True)
    raise
  versions_on_disk.publish(graph_dir, new_graph_dir)
  versions_on_disk.publish(embeddings_dir, new_emb_dir)
  seconds["total"] = round(time.perf_counter() - started, 3)
  reports = {name: model["report"] for name, model in exported["models"].items()}
  return {"graph_dir": new_graph_dir, "embeddings_dir": new_emb_dir,
          "export_version": exported["version"],
          # How incremental the export was (pinsage_tf.export.export_models).
          "export": {name: {"graph_reused_from": report["graph"]["reused_from"],
                            "verification": report["verification"],
                            "check_queries": report["check_queries"],
                            **({"scann_index": report["search"]["index"]}
                               if "index" in report.get("search", {}) else {})}
                     for name, report in reports.items()},
          "new_items": int(edges.new_item_ids.size),
          "skipped_existing_edges": edges.skipped_existing,
          "recomputed": result.stats, "seconds": seconds}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = export_lib.ExportConfig(num_neighbors=_NUM_NEIGHBORS.value,
                                   models=tuple(_MODELS.value),
                                   verify_reused=_VERIFY_REUSED.value)
  try:
    summary = run_refresh(_GRAPH_DIR.value, _NEW_EDGES_CSV.value, _MODEL_DIR.value,
                          _EMBEDDINGS_DIR.value, _EXPORT_BASE.value,
                          new_item_features_csv=_NEW_ITEM_FEATURES_CSV.value,
                          export_config=config,
                          scope=refresh_lib.RefreshScope(
                              mode=_REFRESH_MODE.value, walk_traversals=_WALK_TRAVERSALS.value,
                              embed_hops=_EMBED_HOPS.value),
                          retune_scann=_RETUNE_SCANN.value)
  except (InputError, ValueError, FileNotFoundError, FileExistsError,
          export_lib.ExportError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  logging.info("refresh done in %.1f s", summary["seconds"]["total"])
  if _REPORT_JSON.value:
    atomic.write_json(_REPORT_JSON.value, summary)
  print(json.dumps(summary, indent=2, sort_keys=True))


def run():
  app.run(main)


if __name__ == "__main__":
  run()
