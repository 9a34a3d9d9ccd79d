"""Benchmark: incremental refresh vs a full rebuild on Gowalla.

For each fraction f of the Gowalla training edges (`bench/refresh_split.py`:
a seeded draw, nested across fractions, `--new_item_share` of it being ALL
edges of drawn items, which the base graph therefore does not contain):

1. base: the graph without the held-back edges, its neighborhood tables,
   embeddings and export version 1 (the state a deployment is in);
2. refresh: `trainer.refresh.run_refresh` with the held-back edges as the
   new-edges CSV (rows in a seeded random order), once per `--variants`
   scope (exact; bounded with walk traversals and embedding hops), each on
   its own copy of the base -- wall time per stage, items walked / embedded;
3. full rebuild of the same stages on the grown graph: prepare the graph
   from the raw files (same rows as the refreshed one), neighborhood tables,
   layer-wise inference of items and pivots, export;
4. checks and quality: whether the refreshed graph and tables equal the
   rebuilt ones, the largest embedding difference, and test Recall@20 /
   NDCG@20 (user protocol, pivot embeddings, `pinsage_tf.evaluation` as
   `trainer.evaluate` runs it) of the stale base embeddings, the refreshed
   and the rebuilt ones, on all test users and on the users that got new edges.

The model is trained beforehand on the base graph of the LARGEST fraction
(`--write_train_graph` writes it), so every base graph extends its rows.

    python bench/refresh_split.py  # (library of this benchmark)
    python bench/bench_refresh.py --write_train_graph=out/refresh/train_graph
    python -m trainer.train --graph_dir=out/refresh/train_graph --model_dir=out/refresh/model \
        --config_json=trainer/configs/lightgcn.json --set=train.epochs=2
    python bench/bench_refresh.py --model_dir=out/refresh/model --work_dir=out/refresh/work \
        --output_json=results/bench_refresh.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from trainer import startup  # noqa: E402,F401
import pinsage_tf  # noqa: E402,F401
from data import lightgcn  # noqa: E402
from pinsage_tf import atomic  # noqa: E402
from pinsage_tf import baselines  # noqa: E402
from pinsage_tf import embeddings_io  # noqa: E402
from pinsage_tf import evaluation  # noqa: E402
from pinsage_tf import export as export_lib  # noqa: E402
from pinsage_tf import graph as graph_lib  # noqa: E402
from pinsage_tf import inference  # noqa: E402
from pinsage_tf import model as model_lib  # noqa: E402
from pinsage_tf import neighborhoods as nb_lib  # noqa: E402
from pinsage_tf import refresh as refresh_lib  # noqa: E402
from pinsage_tf import training  # noqa: E402
from trainer import refresh as refresh_job  # noqa: E402
import refresh_split  # noqa: E402


def _load_raw(input_dir: str) -> graph_lib.Graph:
  return lightgcn.load_lightgcn(input_dir, lightgcn.LightGCNConfig())


def rebuild(raw_dir: str, order: np.ndarray, eval_rows: int, work: str, model_dir: str,
            export_config: export_lib.ExportConfig) -> dict:
  """prepare -> neighborhoods -> inference -> export from scratch; seconds per stage."""
  t = time.perf_counter()
  full = _load_raw(raw_dir)
  empty = refresh_split.HeldBack(0.0, np.zeros(0, np.int64), np.zeros(0, np.int64),
                                 np.zeros(0, np.int64))
  graph = refresh_split.base_graph(full, order, empty, eval_rows=eval_rows)
  graph_dir = os.path.join(work, "graph")
  graph_lib.save_graph(graph, graph_dir)
  prepare = round(time.perf_counter() - t, 2)
  out = rebuild_from_graph(graph_dir, work, model_dir, export_config)
  seconds = {"prepare": prepare, **out["seconds"]}
  seconds["total"] = round(seconds["total"] + prepare, 2)
  return {"graph_dir": graph_dir, "embeddings_dir": os.path.join(work, "embeddings"),
          "seconds": seconds}


def quality(graph_dir: str, emb_dir: str, users: np.ndarray) -> dict:
  """Test Recall/NDCG@20 with the pivot embeddings, on all users and on `users`."""
  graph = graph_lib.load_graph(graph_dir)
  emb = embeddings_io.load_embeddings(emb_dir, graph)
  config = evaluation.EvalConfig(protocol="user", split="test", user_ks=(20,))
  history = evaluation.history_name(graph, config)
  scorer = baselines.PivotScorer(emb.vectors, emb.pivot_vectors[history], name="pinsage_pivots",
                                 bias=emb.item_bias)
  out = {}
  result = evaluation.evaluate(graph, scorer, config, keep_values=True)
  out["all_users"] = {k: v for k, v in result["metrics"].items()
                      if k in ("recall@20", "ndcg@20")}
  per = result["per_query"]
  mask = np.isin(np.asarray(per.clusters), users)
  out["users_with_new_edges"] = {
      name: round(float(np.mean(np.asarray(values)[mask])), 4)
      for name, values in per.values.items() if name in ("recall@20", "ndcg@20")}
  out["users_with_new_edges"]["users"] = int(mask.sum())
  out["counts"] = result["counts"]
  return out


def _train_summary(model_dir: str) -> dict | None:
  path = os.path.join(model_dir, "train_summary.json")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def bound_sweep(graph: graph_lib.Graph, experiment: training.ExperimentConfig, seed: int,
                sizes=(1, 10, 100, 1000)) -> list[dict]:
  """Share of items inside the walk bound for a few uniformly drawn new edges."""
  rng = np.random.default_rng(seed)
  ip = graph.item_to_pivot
  edge_item = np.repeat(np.arange(graph.num_items), ip.degrees())
  out = []
  for size in sizes:
    pick = rng.choice(edge_item.size, size=size, replace=False)
    items, pivots = edge_item[pick], ip.indices[pick].astype(np.int64)
    pi = graph.pivot_to_item
    changed_pivots = np.unique(pivots)
    delta = refresh_lib.GraphDelta(graph.num_items, graph.num_pivots, np.unique(items),
                                   changed_pivots, size)
    row = {"edges": size}
    for hops in sorted({1, 2, experiment.neighborhoods.max_hops}):
      config = nb_lib.NeighborhoodConfig(**{**experiment.neighborhoods.to_json(),
                                            "max_hops": hops})
      share = refresh_lib.walk_affected_items(graph, delta, config).mean()
      row[f"walk_affected_share_max_hops_{hops}"] = round(float(share), 4)
    row["items_of_changed_pivots"] = int(np.unique(
        pi.indices[np.repeat(np.isin(np.arange(graph.num_pivots), changed_pivots),
                             pi.degrees())]).size)
    out.append(row)
  return out


def write_edges_csv(path: str, graph: graph_lib.Graph, held: refresh_split.HeldBack,
                    seed: int) -> np.ndarray:
  """Writes the held-back edges (raw ids, seeded order); returns new items in row order."""
  order = np.random.default_rng(seed).permutation(held.items.size)
  items, pivots = held.items[order], held.pivots[order]
  with atomic.atomic_file(path) as f:
    f.write("pivot_id,item_id\n")
    for p, i in zip(graph.pivot_ids[pivots].tolist(), graph.item_ids[items].tolist()):
      f.write(f"{p},{i}\n")
  new = set(held.new_items.tolist())
  seen, first = set(), []
  for i in items.tolist():
    if i in new and i not in seen:
      seen.add(i)
      first.append(i)
  return np.asarray(first, np.int64)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--datasets_dir", default=os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "datasets"))
  parser.add_argument("--fractions", default="0.01,0.05")
  parser.add_argument("--new_item_share", type=float, default=0.2)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--write_train_graph", default=None,
                      help="Only write the base graph of the largest fraction (to train on).")
  parser.add_argument("--model_dir", default=None)
  parser.add_argument("--work_dir", default="out/bench_refresh")
  parser.add_argument("--output_json", default=None)
  parser.add_argument("--variants", default="exact,bounded:0:1,bounded:0:0",
                      help="Refresh scopes run side by side: exact, or "
                      "bounded:<walk_traversals>:<embed_hops>.")
  parser.add_argument("--sweep_only", action="store_true",
                      help="Only the walk-bound sweep (no pipeline runs).")
  args = parser.parse_args()
  raw_dir = os.path.join(args.datasets_dir, "gowalla")
  fractions = [float(f) for f in args.fractions.split(",")]
  full = _load_raw(raw_dir)
  sets = refresh_split.draw(full, fractions, new_item_share=args.new_item_share, seed=args.seed)
  if args.write_train_graph:
    order = refresh_split.base_order(full.num_items, sets, sets[-1])
    manifest = graph_lib.save_graph(refresh_split.base_graph(full, order, sets[-1]),
                                    args.write_train_graph)
    print(json.dumps(manifest["counts"]))
    return
  if not args.model_dir:
    parser.error("--model_dir is required (or --write_train_graph).")
  export_config = export_lib.ExportConfig()
  experiment = training.ExperimentConfig.load(args.model_dir)
  variants = {}
  for name in args.variants.split(","):
    mode, *hops = name.split(":")
    variants[name] = refresh_lib.RefreshScope(
        mode=mode, **dict(zip(("walk_traversals", "embed_hops"), map(int, hops))))
  report = {"dataset": "gowalla (data.lightgcn, default config)", "seed": args.seed,
            "new_item_share": args.new_item_share,
            "command": " ".join(["python", *sys.argv]),
            "model": {"model_dir": os.path.abspath(args.model_dir),
                      "trained_on": "base graph of the largest fraction (--write_train_graph)",
                      "train_summary": _train_summary(args.model_dir),
                      "config": experiment.to_dict()},
            "load_average_at_start": os.getloadavg(), "fractions": {}}
  # The bound on the full training graph, for deltas far below 1 %.
  report["walk_bound_sweep"] = bound_sweep(full, experiment, args.seed)
  print(json.dumps(report["walk_bound_sweep"]), flush=True)
  if args.sweep_only:
    return
  for held in sets:
    work = os.path.join(args.work_dir, f"f{held.fraction}")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    print(f"== fraction {held.fraction}: {held.items.size} held-back edges, "
          f"{held.new_items.size} new items", flush=True)
    order = refresh_split.base_order(full.num_items, sets, held)
    base_dir = os.path.join(work, "base")
    base_graph = refresh_split.base_graph(full, order, held)
    # The base deployment is built like the full rebuild (its timing is a second sample).
    os.makedirs(base_dir)
    t = time.perf_counter()
    graph_lib.save_graph(base_graph, os.path.join(base_dir, "graph"))
    base = rebuild_from_graph(os.path.join(base_dir, "graph"), base_dir, args.model_dir,
                              export_config)
    base["seconds"]["prepare"] = round(time.perf_counter() - t - base["seconds"]["total"], 2)
    edges_csv = os.path.join(work, "new_edges.csv")
    new_rows = write_edges_csv(edges_csv, full, held, args.seed + 1)
    # Every variant refreshes its own copy of the same base deployment.
    refreshed = {}
    for name in variants:
      variant_dir = os.path.join(work, f"base_{name}")
      shutil.copytree(base_dir, variant_dir, symlinks=True)
      print(f"refresh {name} ...", flush=True)
      t = time.perf_counter()
      summary = refresh_job.run_refresh(
          os.path.join(variant_dir, "graph"), edges_csv, args.model_dir,
          os.path.join(variant_dir, "embeddings"), os.path.join(variant_dir, "exports"),
          export_config=export_config, scope=variants[name])
      refreshed[name] = (summary, time.perf_counter() - t)
      print(f"refresh {name}: {refreshed[name][1]:.1f} s", flush=True)
    print("full rebuild ...", flush=True)
    full_order = np.concatenate([order, new_rows])
    rebuilt = rebuild(raw_dir, full_order, order.size, os.path.join(work, "full"),
                      args.model_dir, export_config)
    print(f"full rebuild: {rebuilt['seconds']['total']:.1f} s; checks and quality ...", flush=True)
    g_full = graph_lib.load_graph(rebuilt["graph_dir"])
    t_full = nb_lib.load_neighborhoods(rebuilt["graph_dir"], experiment.neighborhoods)
    e_full = embeddings_io.load_embeddings(rebuilt["embeddings_dir"], g_full)
    users = np.unique(held.pivots)
    entry = {
        "held_back_edges": int(held.items.size), "new_items": int(held.new_items.size),
        "base": {"items": base_graph.num_items, "edges": base_graph.num_edges,
                 "build_seconds": base["seconds"]},
        "full_rebuild": {"seconds": rebuilt["seconds"]},
        "quality_test": {
            "stale_base_embeddings": quality(os.path.join(base_dir, "graph"),
                                             os.path.join(base_dir, "embeddings"), users),
            "full_rebuild": quality(rebuilt["graph_dir"], rebuilt["embeddings_dir"], users)},
        "refresh": {}}
    for name, (summary, wall) in refreshed.items():
      g_ref = graph_lib.load_graph(summary["graph_dir"])
      t_ref = nb_lib.load_neighborhoods(summary["graph_dir"], experiment.neighborhoods)
      e_ref = embeddings_io.load_embeddings(summary["embeddings_dir"], g_ref)
      entry["refresh"][name] = {
          "scope": variants[name].to_json(),
          "wall_seconds": round(wall, 2), "stages": summary["seconds"],
          "time_ratio_refresh_over_full": round(wall / rebuilt["seconds"]["total"], 3),
          "recomputed": summary["recomputed"], "export": summary["export"],
          "skipped_existing_edges": summary["skipped_existing_edges"],
          "equal_to_full_rebuild": {
              "graph_fingerprint": graph_lib.graph_fingerprint(summary["graph_dir"])
              == graph_lib.graph_fingerprint(rebuilt["graph_dir"]),
              "neighborhood_table": bool(np.array_equal(t_ref.ids, t_full.ids)
                                         and np.array_equal(t_ref.weights, t_full.weights)),
              "max_abs_item_embedding_diff": float(np.abs(e_ref.vectors - e_full.vectors).max()),
              "max_abs_pivot_embedding_diff": float(max(
                  np.abs(e_ref.pivot_vectors[h] - e_full.pivot_vectors[h]).max()
                  for h in e_full.pivot_vectors)),
          },
          "quality_test": quality(summary["graph_dir"], summary["embeddings_dir"], users),
      }
    report["fractions"][str(held.fraction)] = entry
    print(json.dumps(report["fractions"][str(held.fraction)], indent=1), flush=True)
    if args.output_json:
      atomic.write_json(args.output_json, report)
  if args.output_json:
    atomic.write_json(args.output_json, report)


def rebuild_from_graph(graph_dir: str, work: str, model_dir: str,
                       export_config: export_lib.ExportConfig) -> dict:
  """The base deployment: neighborhoods, inference, export of a saved graph."""
  seconds = {}
  t = time.perf_counter()
  experiment = training.ExperimentConfig.load(model_dir)
  inputs = training.prepare_inputs(graph_dir, experiment, hard_negatives=False)
  pivot_tables = {"graph": inputs.pivot_neighborhoods}
  for history, lists in refresh_lib.pivot_lists(inputs.graph).items():
    if history != "graph":
      pivot_tables[history] = nb_lib.compute_pivot_neighborhoods(
          inputs.graph, experiment.pivot_neighborhoods, lists)
  seconds["neighborhoods"] = time.perf_counter() - t
  t = time.perf_counter()
  model = model_lib.load_model(os.path.join(model_dir, training.MODEL_DIR))
  runner = inference.LayerwiseInference(model, inputs.tables)
  vectors, bias = runner.outputs()
  pivots = {h: runner.pivot_embeddings(np.asarray(tab.ids), np.asarray(tab.weights))
            for h, tab in pivot_tables.items()}
  embeddings_io.save_embeddings(os.path.join(work, "embeddings"), vectors, inputs.graph.item_ids,
                                {"graph_fingerprint": graph_lib.graph_fingerprint(graph_dir),
                                 "graph_dir": graph_dir},
                                item_bias=bias, pivot_ids=inputs.graph.pivot_ids,
                                pivot_embeddings=pivots)
  seconds["inference"] = time.perf_counter() - t
  t = time.perf_counter()
  export_lib.export_models(os.path.join(work, "exports"), model=model, graph=inputs.graph,
                           tables=inputs.tables, embeddings=vectors, config=export_config,
                           item_bias=bias, pivot_embeddings=pivots["graph"])
  seconds["export"] = time.perf_counter() - t
  seconds = {k: round(v, 2) for k, v in seconds.items()}
  seconds["total"] = round(sum(seconds.values()), 2)
  return {"seconds": seconds}


if __name__ == "__main__":
  main()
