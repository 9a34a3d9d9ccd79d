r"""Reproducible quality benchmark: prepare -> train -> infer -> evaluate (JSON output).

    .venv/bin/python bench/quality.py --dataset=movielens \
        [--config_json=trainer/configs/movielens.json] [--seeds=0,1,2] \
        [--split=validation|test] [--work_dir=out/quality] \
        [--datasets_dir=../shared/datasets] [--output_json=bench/results/quality_movielens.json] \
        [--train_flag=--set=train.epochs=4 --train_flag=--set=train.temperature=0.05 ...] \
        [--prepare_flag=--train_pair_window=3 ...] [--graph_dir=EXISTING_GRAPH] \
        [--protocol=auto|item|user] [--max_queries=N] [--baselines=popularity,itemknn,pixie,features] \
        [--eval_flag=--user_query=logsumexp ...] [--evaluate_only | --resume] \
        [--jobs=J] [--threads_per_job=N] [--compare_to=itemknn]

Every stage runs as a subprocess of the project's own CLIs, exactly as a user
would run them (the command lines are recorded in the output):

1. `python -m data.prepare` once per dataset, with any `--prepare_flag`s
   (skipped with --reuse_graph when the graph directory already exists, or
   when --graph_dir names an existing graph: ablations then share one graph
   and its cached neighborhood / hard-negative tables);
2. the baselines, evaluated once (they do not depend on the training seed);
3. per seed (with --jobs=J, J tasks at a time, the baselines being one):
   `python -m trainer.train --config_json=... --seed=N`,
   `python -m trainer.infer`, `python -m trainer.evaluate --methods=pinsage`
   (every evaluation gets the `--eval_flag`s; with `--compare_to=BASELINE`
   it is `--methods=pinsage,BASELINE --compare_to=BASELINE`, so each seed
   also gets paired cluster-bootstrap intervals of its ratio to and
   difference from that baseline, `pinsage_tf.significance`). With --evaluate_only, the
   models trained by an earlier run with the same --work_dir are embedded and
   evaluated again (e.g. with another --eval_flag) without training; their
   training wall time is then not part of this run's output. With --resume,
   an interrupted run continues: the seeds' model directories are kept and
   the trainer resumes from their last checkpoint (train_s then covers only
   the resumed part).

Output JSON: the configuration (config file contents, extra train flags, every
command line), per-method metrics (baselines once, PinSage per seed), PinSage's
mean and sample standard deviation over seeds for every metric, and the wall
time of each stage. Tuning belongs on `--split=validation` (the default); the
test split is for one final evaluation per configuration. Progress goes to
stderr; the JSON is written atomically (`pinsage_tf.atomic.atomic_file`).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import shlex
import subprocess
import sys
import time
from typing import Any

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

from pinsage_tf import atomic  # noqa: E402  (imports no TensorFlow)

# dataset name -> (data.prepare --dataset, sub-directory of --datasets_dir or None).
_DATASETS = {
    "movielens": ("movielens", "ml-latest-small"),
    "gowalla": ("lightgcn", "gowalla"),
    "synthetic": ("synthetic", None),
}
_DEFAULT_BASELINES = {
    "movielens": "popularity,itemknn,pixie,features",
    "gowalla": "popularity,itemknn,linear_filter,pixie",  # Gowalla items have no features.
    "synthetic": "popularity,itemknn,pixie,features",
}


def _log(message: str, tag: str = "quality") -> None:
  print(f"[{tag} {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _run(cmd: list[str], log_path: str, tag: str = "quality") -> float:
  """Runs `cmd` from the project root, output to `log_path`; returns wall seconds."""
  _log("$ " + " ".join(shlex.quote(c) for c in cmd), tag)
  env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  started = time.perf_counter()
  with open(log_path, "w") as log:
    proc = subprocess.run(cmd, cwd=_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                          check=False)
  elapsed = time.perf_counter() - started
  if proc.returncode != 0:
    with open(log_path) as f:
      tail = "".join(f.readlines()[-20:])
    raise RuntimeError(f"command failed (exit {proc.returncode}, log {log_path}):\n"
                       f"{' '.join(cmd)}\n{tail}")
  return round(elapsed, 2)


def write_output(output: dict[str, Any], path: str | None, tag: str = "quality") -> None:
  """`output` as indented JSON, atomically to `path` (None: to stdout)."""
  if path:
    with atomic.atomic_file(path) as f:
      json.dump(output, f, indent=2, sort_keys=True)
      f.write("\n")
    _log(f"wrote {path}", tag)
  else:
    json.dump(output, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def _mean_std(values: list[float]) -> dict[str, Any]:
  n = len(values)
  mean = sum(values) / n
  std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
  return {"mean": mean, "std": std, "n": n, "values": values}


def _eval_flags(args: argparse.Namespace) -> list[str]:
  flags = [f"--split={args.split}", f"--protocol={args.protocol}"]
  if args.max_queries:
    flags.append(f"--max_queries={args.max_queries}")
  return flags + args.eval_flag


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dataset", choices=sorted(_DATASETS), default="movielens")
  parser.add_argument("--config_json", default=None,
                      help="Experiment config (default trainer/configs/<data.prepare dataset>.json).")
  parser.add_argument("--seeds", default="0", help="Comma-separated training seeds.")
  parser.add_argument("--split", choices=["validation", "test"], default="validation")
  parser.add_argument("--protocol", choices=["auto", "item", "user"], default="auto")
  parser.add_argument("--max_queries", type=int, default=None,
                      help="Evaluate a seeded subsample of the queries/users.")
  parser.add_argument("--baselines", default=None,
                      help="Comma-separated baselines (default depends on the dataset; "
                           "'' for none).")
  parser.add_argument("--train_flag", action="append", default=[],
                      help="Extra trainer.train flag, repeatable "
                           "(e.g. --train_flag=--set=train.epochs=4).")
  parser.add_argument("--eval_flag", action="append", default=[],
                      help="Extra trainer.evaluate flag for every evaluation (repeatable).")
  parser.add_argument("--evaluate_only", action="store_true",
                      help="Do not train: embed and evaluate the models of an earlier run "
                           "in --work_dir.")
  parser.add_argument("--resume", action="store_true",
                      help="Keep the seeds' model directories in --work_dir: training "
                           "resumes from their last checkpoint.")
  parser.add_argument("--prepare_flag", action="append", default=[],
                      help="Extra data.prepare flag, repeatable (e.g. --prepare_flag=--seed=1).")
  parser.add_argument("--graph_dir", default=None,
                      help="Use this existing graph (no data.prepare; --prepare_flag ignored).")
  parser.add_argument("--jobs", type=int, default=1,
                      help="Seeds trained at the same time (their wall times then overlap).")
  parser.add_argument("--threads_per_job", type=int, default=None,
                      help="TensorFlow intra-/inter-op threads of every stage (e.g. 1 with "
                           "--jobs=2 on 2 cores: two single-threaded trainings made 1.5x "
                           "the steps/s of one two-threaded training here).")
  parser.add_argument("--method", default="pinsage", choices=["pinsage", "pinsage_pivots"],
                      help="What PinSage's rows report: item embeddings (item-item scores) or, "
                           "for models trained with the pivot objective, pivot embeddings "
                           "(user protocol).")
  parser.add_argument("--compare_to", default=None,
                      help="Baseline each seed is compared with (paired cluster-bootstrap "
                           "intervals of the ratio and difference, per metric).")
  parser.add_argument("--work_dir", default="out/quality")
  parser.add_argument("--datasets_dir", default=os.path.join("..", "shared", "datasets"))
  parser.add_argument("--reuse_graph", action="store_true",
                      help="Skip data.prepare when WORK_DIR/DATASET/graph exists.")
  parser.add_argument("--output_json", default=None)
  args = parser.parse_args(argv)

  seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
  if not seeds:
    parser.error("--seeds must list at least one integer seed.")
  if args.threads_per_job is not None:
    if args.threads_per_job < 1:
      parser.error("--threads_per_job must be >= 1.")
    # Inherited by every stage's subprocess (see _run).
    os.environ["TF_NUM_INTRAOP_THREADS"] = str(args.threads_per_job)
    os.environ["TF_NUM_INTEROP_THREADS"] = str(args.threads_per_job)
  known = {b for names in _DEFAULT_BASELINES.values() for b in names.split(",")}
  if args.compare_to is not None and args.compare_to not in known:
    parser.error(f"--compare_to must be one of the baselines {sorted(known)}, "
                 f"got {args.compare_to!r}.")
  if args.evaluate_only and args.resume:
    parser.error("--evaluate_only and --resume exclude each other.")
  if args.evaluate_only or args.resume:
    args.reuse_graph = True  # The models' own graph, never a re-prepared one.
  if args.evaluate_only:
    work = os.path.abspath(os.path.join(args.work_dir, args.dataset))
    missing = [os.path.join(work, f"seed{s}", "model", "model") for s in seeds
               if not os.path.isdir(os.path.join(work, f"seed{s}", "model", "model"))]
    if missing:
      parser.error(f"--evaluate_only: no trained model at {', '.join(missing)}; train them "
                   "first (same --work_dir, without --evaluate_only).")
  # Configs are named after the data.prepare layout (gowalla -> lightgcn.json).
  config_json = args.config_json or os.path.join(
      "trainer", "configs", f"{_DATASETS[args.dataset][0]}.json")
  config_path = os.path.abspath(config_json)
  with open(config_path) as f:
    config_text = f.read()
  config_contents = json.loads(config_text)
  baselines = args.baselines if args.baselines is not None else _DEFAULT_BASELINES[args.dataset]
  baselines = [b for b in baselines.split(",") if b]

  py = sys.executable
  work = os.path.abspath(os.path.join(args.work_dir, args.dataset))
  os.makedirs(work, exist_ok=True)
  graph_dir = os.path.abspath(args.graph_dir) if args.graph_dir else os.path.join(work, "graph")
  commands: dict[str, Any] = {}
  wall: dict[str, Any] = {}

  # 1. prepare.
  prep_name, sub = _DATASETS[args.dataset]
  prepare = [py, "-m", "data.prepare", f"--dataset={prep_name}", f"--output_dir={graph_dir}",
             "--overwrite"] + args.prepare_flag
  if sub:
    prepare.append(f"--input_dir={os.path.abspath(os.path.join(args.datasets_dir, sub))}")
  commands["prepare"] = prepare
  if args.graph_dir:
    if not os.path.isfile(os.path.join(graph_dir, "manifest.json")):
      parser.error(f"--graph_dir={args.graph_dir}: no graph (manifest.json) there.")
    _log(f"using the existing graph {graph_dir}")
    commands["prepare"] = None
    wall["prepare_s"] = None
  elif args.reuse_graph and os.path.isdir(graph_dir):
    _log(f"reusing {graph_dir}")
    wall["prepare_s"] = None
  elif args.evaluate_only:
    parser.error(f"--evaluate_only: no graph at {graph_dir}; pass the models' --graph_dir.")
  else:
    wall["prepare_s"] = _run(prepare, os.path.join(work, "prepare.log"))

  methods: dict[str, Any] = {}
  split_tag = f"{args.split}" + (f"_q{args.max_queries}" if args.max_queries else "")
  if args.compare_to:
    split_tag += f"_vs_{args.compare_to}"
  # Evaluations with other flags get their own files (never overwrite another's).
  for flag in args.eval_flag:
    split_tag += "_" + "".join(c if c.isalnum() or c in ".=" else "_" for c in flag.lstrip("-"))
  # 2. baselines (seed-independent training-wise; pixie's walks use evaluate's --seed=0),
  # run as one more task of the pool below.
  counts = None

  def run_baselines() -> None:
    nonlocal counts
    out = os.path.join(work, f"eval_baselines_{split_tag}.json")
    cmd = [py, "-m", "trainer.evaluate", f"--graph_dir={graph_dir}",
           f"--methods={','.join(baselines)}", f"--output_json={out}"] + _eval_flags(args)
    commands["evaluate_baselines"] = cmd
    wall["evaluate_baselines_s"] = _run(cmd, os.path.join(work, "eval_baselines.log"))
    with open(out) as f:
      base = json.load(f)
    for name, result in base["methods"].items():
      methods[name] = {"metrics": result["metrics"], "wall_time_s": result.get("wall_time_s")}
    counts = base.get("counts")

  # 3. PinSage per seed (--jobs seeds at a time; each seed's stages run in order).
  per_seed: dict[str, Any] = {}

  def run_seed(seed: int) -> None:
    run_dir = os.path.join(work, f"seed{seed}")
    model_dir = os.path.join(run_dir, "model")
    emb_dir = os.path.join(run_dir, "embeddings")
    out = os.path.join(run_dir, f"eval_{split_tag}.json")
    os.makedirs(run_dir, exist_ok=True)
    # A fresh model directory: trainer.train resumes from checkpoints otherwise.
    if os.path.exists(model_dir) and not (args.evaluate_only or args.resume):
      subprocess.run(["rm", "-rf", model_dir], check=True)
    train = [py, "-m", "trainer.train", f"--graph_dir={graph_dir}", f"--model_dir={model_dir}",
             f"--config_json={config_path}", f"--seed={seed}", "--quiet"] + args.train_flag
    infer = [py, "-m", "trainer.infer", f"--graph_dir={graph_dir}", f"--model_dir={model_dir}",
             f"--output_dir={emb_dir}", "--overwrite"]
    compare = ([f"--methods={args.method},{args.compare_to}", f"--compare_to={args.compare_to}"]
               if args.compare_to else [f"--methods={args.method}"])
    evaluate = [py, "-m", "trainer.evaluate", f"--graph_dir={graph_dir}",
                f"--embeddings_dir={emb_dir}", f"--output_json={out}"] + compare + _eval_flags(args)
    commands[f"seed{seed}"] = {"train": None if args.evaluate_only else train,
                               "infer": infer, "evaluate": evaluate}
    times = {"train_s": None if args.evaluate_only else _run(
                 train, os.path.join(run_dir, "train.log")),
             "infer_s": _run(infer, os.path.join(run_dir, "infer.log")),
             "evaluate_s": _run(evaluate, os.path.join(run_dir, "evaluate.log"))}
    with open(out) as f:
      result = json.load(f)
    metrics = result["methods"][args.method]["metrics"]
    per_seed[str(seed)] = {"metrics": metrics, "wall": times, "counts": result.get("counts")}
    if args.compare_to:
      comparison = result["comparison"]
      per_seed[str(seed)]["comparison"] = {"reference": comparison["reference"],
                                           "cluster_by": comparison["cluster_by"],
                                           **comparison["methods"][args.method]}
    wall[f"seed{seed}"] = times
    _log(f"seed {seed}: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())
                                       if "hit_rate" in k or "recall" in k or "ndcg" in k))
    if args.compare_to:
      for k, m in sorted(per_seed[str(seed)]["comparison"]["metrics"].items()):
        r = m["ratio"]
        if r["low"] is not None and ("hit_rate" in k or "recall" in k or "ndcg" in k):
          _log(f"seed {seed}: {k} / {args.compare_to} = {r['estimate']:.3f} "
               f"[{r['low']:.3f}, {r['high']:.3f}]")

  if args.jobs > 1:
    wall["concurrent_seeds"] = min(args.jobs, len(seeds))
  with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
    tasks = ([run_baselines] if baselines else []) + [
        (lambda s=seed: run_seed(s)) for seed in seeds]
    for future in [pool.submit(task) for task in tasks]:
      future.result()  # re-raises the first failure
  counts = counts or per_seed[str(seeds[0])]["counts"]

  names = sorted(next(iter(per_seed.values()))["metrics"])
  summary = {k: _mean_std([float(per_seed[str(s)]["metrics"][k]) for s in seeds]) for k in names}
  methods[args.method] = {"metrics": {k: v["mean"] for k, v in summary.items()},
                        "mean_std": summary, "per_seed": per_seed}

  output = {
      "dataset": args.dataset,
      "split": args.split,
      "protocol": args.protocol,
      "max_queries": args.max_queries,
      "seeds": seeds,
      "counts": counts,
      "config_json": config_path,
      "config": config_contents,
      "train_flags": args.train_flag,
      "eval_flags": args.eval_flag,
      "compare_to": args.compare_to,
      "evaluate_only": args.evaluate_only,
      "resumed": args.resume,
      "threads_per_job": args.threads_per_job,
      "prepare_flags": args.prepare_flag,
      "graph_dir": graph_dir,
      "commands": commands,
      "methods": methods,
      "wall_time_s": wall,
  }
  write_output(output, args.output_json)
  return output


if __name__ == "__main__":
  main()
