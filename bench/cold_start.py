r"""Cold-start benchmark on MovieLens: held-out items embedded inductively (JSON output).

    .venv/bin/python bench/cold_start.py [--split=validation|test] [--seeds=0,1,2] \
        [--fraction=0.1] [--cold_seed=0] [--config_json=trainer/configs/movielens.json] \
        [--work_dir=out/cold_start] [--datasets_dir=../shared/datasets] [--reuse_graph] \
        [--train_flag=--set=train.epochs=4 ...] [--prepare_flag=--train_pair_window=3 ...] \
        [--output_json=out/cold_start/validation_seed0.json]

Steps (`bench/cold_start_lib.py` documents the split and the embedding path):

1. `python -m data.prepare --dataset=movielens [--prepare_flag ...]` (subprocess) into
   WORK_DIR/graph, skipped with --reuse_graph when it exists;
2. in-process: `cold_start_lib.hold_out_items(fraction, cold_seed)` picks the cold
   movies among those with training edges that query a validation or test
   pair, removes their edges and the train pairs touching them, and saves the
   reduced graph atomically to WORK_DIR/graph_cold (its cold item list to
   WORK_DIR/cold_items.json);
3. the baselines, once (they do not depend on the training seed), on the
   reduced graph: "features" (`baselines.FeatureScorer`, content only) and
   "popularity" (training degree in the reduced graph, so cold items rank last);
4. per seed: `python -m trainer.train --graph_dir=WORK_DIR/graph_cold ...`
   (subprocess), then in-process: layer-wise embeddings of all items of the
   reduced graph, and the cold items' rows replaced by
   - "pinsage_cold_start": `cold_start_lib.embed_inductively` from their features
     and the pivots (users) whose training edges were removed;
   - "pinsage_features_only": the same with an empty pivot list (features
     only; equal to their layer-wise rows in the reduced graph).
   Every cold row of the corpus is replaced, so cold items are also ranked
   as candidates with their cold-start vectors.

Evaluation: the split's item pairs whose QUERY is a cold item
(`cold_start_lib.cold_query_pairs`), scored by `pinsage_tf.evaluation` exactly as
`trainer.evaluate` would: all items ranked, the query masked, self-pairs
skipped, ties "expected". Metrics: hit-rate@10/50/100, MRR (plus the
evaluator's scaled MRR and ranks).

Output JSON: configuration (config file contents, train flags, commands),
counts (cold / eligible items, removed edges, dropped train pairs, evaluated
pairs and queries), per-method metrics (baselines once, PinSage variants per
seed with mean and sample std over seeds), diagnostics (how close the
inductive path gets to the layer-wise embeddings of warm items), and wall
times. Progress goes to stderr; the JSON is written atomically. Tune on
--split=validation; the test split is for the final configuration only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

import pinsage_tf  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TF loads)
import numpy as np  # noqa: E402

from pinsage_tf import atomic  # noqa: E402
from pinsage_tf import baselines  # noqa: E402
from pinsage_tf import evaluation  # noqa: E402
from pinsage_tf import export  # noqa: E402
from pinsage_tf import graph as graph_lib  # noqa: E402
from pinsage_tf import inference  # noqa: E402
from pinsage_tf import model as model_lib  # noqa: E402
from pinsage_tf import retrieval_exact  # noqa: E402
from pinsage_tf import training  # noqa: E402
import cold_start_lib  # noqa: E402  (bench/cold_start_lib.py: split, inductive embedding)
import quality  # noqa: E402  (bench/quality.py: subprocess runner, mean/std)

_KS = (10, 50, 100)
_WARM_SAMPLE = 1000  # warm items re-embedded through the cold-start path (diagnostic)


def _log(message: str) -> None:
  quality._log(message, tag="cold_start")


def _run(cmd: list[str], log_path: str) -> float:
  return quality._run(cmd, log_path, tag="cold_start")


def _metric_line(metrics: dict[str, float]) -> str:
  return ", ".join(f"{k}={metrics[k]:.4f}" for k in [f"hit_rate@{k}" for k in _KS] + ["mrr"])


def _evaluate(eval_graph: graph_lib.Graph, scorer: baselines.ItemScorer,
              config: evaluation.EvalConfig) -> dict[str, Any]:
  result = evaluation.evaluate(eval_graph, scorer, config)
  _log(f"  {scorer.name}: {_metric_line(result['metrics'])}")
  return result


def _pinsage_eval(model_dir: str, reduced_dir: str, split: cold_start_lib.ColdStartSplit,
                  eval_graph: graph_lib.Graph, config: evaluation.EvalConfig
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
  """Both PinSage variants of one trained model: (results by method, diagnostics)."""
  experiment = training.ExperimentConfig.load(model_dir)
  inputs = training.prepare_inputs(reduced_dir, experiment, hard_negatives=False)
  graph, tables = inputs.graph, inputs.tables
  model = model_lib.load_model(os.path.join(model_dir, training.MODEL_DIR))
  if model.config.item_bias:
    # The cold items would need their own inductive biases as candidates.
    raise ValueError(f"{model_dir}: the cold-start study does not support item_bias models "
                     "(cold_start_lib.embed_inductively returns embeddings only).")
  warm_vectors = inference.layerwise_embeddings(model, tables)
  transformed, _ = export.layer_tables(model, tables)
  cold = split.cold_items
  with_pivots = cold_start_lib.embed_inductively(model, graph, tables, cold, split.pivot_lists,
                                                 transformed=transformed)
  features_only = cold_start_lib.embed_inductively(model, graph, tables, cold,
                                                   graph_lib.empty_csr(cold.shape[0]),
                                                   transformed=transformed)
  # Diagnostic: warm items re-embedded from their own pivots vs layer-wise.
  warm = np.flatnonzero(graph.item_degrees() > 0)
  sample = np.sort(np.random.default_rng(0).choice(
      warm, size=min(_WARM_SAMPLE, warm.size), replace=False))
  warm_again = cold_start_lib.embed_inductively(
      model, graph, tables, sample, retrieval_exact.take_rows(graph.item_to_pivot, sample),
      transformed=transformed)
  warm_cos = cold_start_lib.cosines(warm_again, warm_vectors[sample])
  diagnostics = {
      "warm_items_inductive_vs_layerwise_cosine": {
          "items": int(sample.size), "mean": float(warm_cos.mean()),
          "median": float(np.median(warm_cos)), "min": float(warm_cos.min())},
      "cold_features_only_vs_layerwise_max_abs_diff": float(
          np.max(np.abs(features_only - warm_vectors[cold]))) if cold.size else 0.0,
      "cold_with_vs_without_pivots_cosine_mean": float(
          cold_start_lib.cosines(with_pivots, features_only).mean()),
  }
  results = {}
  for name, rows in (("pinsage_cold_start", with_pivots),
                     ("pinsage_features_only", features_only)):
    vectors = warm_vectors.copy()
    vectors[cold] = rows
    results[name] = _evaluate(eval_graph, baselines.EmbeddingScorer(vectors, name=name), config)
  return results, diagnostics


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--datasets_dir", default=os.path.join("..", "shared", "datasets"))
  parser.add_argument("--config_json", default=os.path.join("trainer", "configs",
                                                            "movielens.json"))
  parser.add_argument("--seeds", default="0", help="Comma-separated training seeds.")
  parser.add_argument("--split", choices=["validation", "test"], default="validation")
  parser.add_argument("--fraction", type=float, default=0.1,
                      help="Share of the evaluable items held out of training.")
  parser.add_argument("--cold_seed", type=int, default=0,
                      help="Seed of the cold item draw (fixed across training seeds).")
  parser.add_argument("--train_flag", action="append", default=[],
                      help="Extra trainer.train flag, repeatable "
                           "(e.g. --train_flag=--set=train.epochs=4).")
  parser.add_argument("--prepare_flag", action="append", default=[],
                      help="Extra data.prepare flag, repeatable "
                           "(e.g. --prepare_flag=--train_pair_window=3).")
  parser.add_argument("--work_dir", default=os.path.join("out", "cold_start"))
  parser.add_argument("--reuse_graph", action="store_true",
                      help="Skip data.prepare when WORK_DIR/graph exists.")
  parser.add_argument("--output_json", default=None)
  args = parser.parse_args(argv)

  seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
  if not seeds:
    parser.error("--seeds must list at least one integer seed.")
  if not 0.0 < args.fraction < 1.0:
    parser.error(f"--fraction must lie in (0, 1), got {args.fraction}.")
  config_path = os.path.abspath(args.config_json)
  with open(config_path) as f:
    config_contents = json.load(f)

  py = sys.executable
  work = os.path.abspath(args.work_dir)
  os.makedirs(work, exist_ok=True)
  graph_dir = os.path.join(work, "graph")
  reduced_dir = os.path.join(work, "graph_cold")
  commands: dict[str, Any] = {}
  wall: dict[str, Any] = {}
  started = time.perf_counter()

  # 1. prepare.
  prepare = [py, "-m", "data.prepare", "--dataset=movielens", f"--output_dir={graph_dir}",
             "--overwrite",
             f"--input_dir={os.path.abspath(os.path.join(args.datasets_dir, 'ml-latest-small'))}"
             ] + args.prepare_flag
  commands["prepare"] = prepare
  if args.reuse_graph and os.path.isdir(graph_dir):
    _log(f"reusing {graph_dir}")
    wall["prepare_s"] = None
  else:
    wall["prepare_s"] = _run(prepare, os.path.join(work, "prepare.log"))

  # 2. the cold split.
  t0 = time.perf_counter()
  graph = graph_lib.load_graph(graph_dir)
  split = cold_start_lib.hold_out_items(graph, fraction=args.fraction, seed=args.cold_seed)
  graph_lib.save_graph(split.graph, reduced_dir, overwrite=True)
  cold = split.cold_items
  atomic.write_json(os.path.join(work, "cold_items.json"), {
      "source_graph": graph_dir, "fraction": args.fraction, "cold_seed": args.cold_seed,
      "items": cold.tolist(), "item_ids": graph.item_ids[cold].tolist(),
      "num_pivots": split.pivot_lists.degrees().tolist()})
  eval_graph = cold_start_lib.cold_query_pairs(split.graph, cold, args.split)
  wall["split_s"] = round(time.perf_counter() - t0, 2)
  split_enum = evaluation.SPLITS[args.split]
  eval_q, eval_p = eval_graph.pairs.of(split_enum)
  is_cold = np.zeros(graph.num_items, bool)
  is_cold[cold] = True
  counts: dict[str, Any] = {
      **split.summary(),
      "items": graph.num_items,
      "full_graph_edges": graph.num_edges,
      "full_graph_train_pairs": graph.pairs.count(graph_lib.Split.TRAIN),
      "cold_pivots_per_item": {
          "min": int(split.pivot_lists.degrees().min()),
          "median": float(np.median(split.pivot_lists.degrees())),
          "max": int(split.pivot_lists.degrees().max())},
      f"{args.split}_pairs": graph.pairs.count(split_enum),
      f"{args.split}_pairs_with_cold_query": int(eval_q.shape[0]),
      f"{args.split}_pairs_with_cold_query_and_cold_positive": int(
          np.count_nonzero(is_cold[eval_p])),
  }
  _log(f"cold split: {json.dumps(split.summary())}; {eval_q.shape[0]} {args.split} pairs "
       f"with a cold query")
  if eval_q.shape[0] == 0:
    raise SystemExit(f"error: no {args.split} pair has a cold query; raise --fraction.")
  eval_config = evaluation.EvalConfig(protocol="item", split=args.split, ks=_KS)

  # 3. baselines (seed-independent).
  methods: dict[str, Any] = {}
  t0 = time.perf_counter()
  for scorer in (baselines.FeatureScorer(split.graph), baselines.PopularityScorer(split.graph)):
    result = _evaluate(eval_graph, scorer, eval_config)
    methods[scorer.name] = {"metrics": result["metrics"], "wall_time_s": result["wall_time_s"],
                            "ties_at_positive": result["counts"]["ties_at_positive"]}
    counts.setdefault("evaluated", {k: result["counts"][k] for k in (
        "pairs", "queries", "skipped_self_pairs")})
  wall["baselines_s"] = round(time.perf_counter() - t0, 2)

  # 4. PinSage per seed.
  per_seed: dict[str, dict[str, Any]] = {}
  diagnostics: dict[str, Any] = {}
  for seed in seeds:
    run_dir = os.path.join(work, f"seed{seed}")
    model_dir = os.path.join(run_dir, "model")
    os.makedirs(run_dir, exist_ok=True)
    # A fresh model directory: trainer.train resumes from checkpoints otherwise.
    if os.path.exists(model_dir):
      subprocess.run(["rm", "-rf", model_dir], check=True)
    train = [py, "-m", "trainer.train", f"--graph_dir={reduced_dir}", f"--model_dir={model_dir}",
             f"--config_json={config_path}", f"--seed={seed}", "--quiet"] + args.train_flag
    commands[f"seed{seed}"] = {"train": train}
    times = {"train_s": _run(train, os.path.join(run_dir, "train.log"))}
    t0 = time.perf_counter()
    _log(f"seed {seed}: evaluating")
    results, diagnostics[str(seed)] = _pinsage_eval(model_dir, reduced_dir, split, eval_graph,
                                                    eval_config)
    times["evaluate_s"] = round(time.perf_counter() - t0, 2)
    wall[f"seed{seed}"] = times
    for name, result in results.items():
      per_seed.setdefault(name, {})[str(seed)] = {
          "metrics": result["metrics"], "wall_time_s": result["wall_time_s"],
          "ties_at_positive": result["counts"]["ties_at_positive"]}
  for name, runs in per_seed.items():
    keys = sorted(next(iter(runs.values()))["metrics"])
    summary = {k: quality._mean_std([float(runs[str(s)]["metrics"][k]) for s in seeds]) for k in keys}
    methods[name] = {"metrics": {k: v["mean"] for k, v in summary.items()},
                     "mean_std": summary, "per_seed": runs}
  wall["total_s"] = round(time.perf_counter() - started, 2)

  output = {
      "dataset": "movielens",
      "split": args.split,
      "fraction": args.fraction,
      "cold_seed": args.cold_seed,
      "seeds": seeds,
      "ks": list(_KS),
      "ties": eval_config.ties,
      "graph_dir": graph_dir,
      "reduced_graph_dir": reduced_dir,
      "reduced_graph_fingerprint": graph_lib.graph_fingerprint(reduced_dir),
      "counts": counts,
      "config_json": config_path,
      "config": config_contents,
      "train_flags": args.train_flag,
      "prepare_flags": args.prepare_flag,
      "commands": commands,
      "methods": methods,
      "diagnostics": diagnostics,
      "wall_time_s": wall,
  }
  _log("summary (mean over seeds):\n" + evaluation.format_table(
      {name: {"metrics": {k: m["metrics"][k] for k in [f"hit_rate@{k}" for k in _KS] + ["mrr"]},
              "wall_time_s": m.get("wall_time_s")}
       for name, m in methods.items()}))
  quality.write_output(output, args.output_json, tag="cold_start")
  return output


if __name__ == "__main__":
  main()
