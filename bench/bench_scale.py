r"""Every offline stage on synthetic graphs of growing size: wall time and peak memory.

    nice -n 10 .venv/bin/python bench/bench_scale.py [--sizes=100000,1000000,10000000] \
        [--work_dir=/tmp/bench_scale] [--output_json=results/scale.json]

For each size N, the synthetic generator (`data.prepare --dataset=synthetic`)
with `num_boards = 0.3 N` and `num_pairs = 8 N`, then each stage as its own
process, in order, each reusing the previous stages' outputs:

* prepare: `data.prepare` (generate, validate, write the graph);
* neighborhoods: the importance-neighborhood tables of all items and pivots
  (`trainer/configs/synthetic.json`'s settings);
* hard_negatives: the hard-negative pools of all train queries (the default
  estimator: random walks above 50k items);
* train: `trainer.train`, 200 steps (2 epochs of 100, so the second uses a
  hard negative), validation off; `examples_per_second` from its summary;
* infer: `trainer.infer`, layer-wise inference of all items (and pivots);
* export: `trainer.export --models=pinsage_retrieval --nopivot_signatures`
  (ScaNN index, its tuning and recall check; the item-item signatures: the
  pivot signatures hold every item's h^(K-1), ~2 kB per item at export);
* evaluate: `trainer.evaluate --methods=pinsage --max_queries=10000`.

Every number is measured: `seconds` is the stage process's wall time and
`max_rss_gb` its peak resident set size, `cpu_seconds` its user + system CPU
time (`os.wait4` of that process, so both are per stage). The JSON is rewritten after every stage, so an interrupted run
keeps what it measured:

    {"sizes": [{"items": N, "edges": E, "stages": {"prepare": {"seconds": s,
     "max_rss_gb": g}, "neighborhoods": {...}, ...}}], "config": {...}}

A failed stage is recorded with its exit code and the size stops there.
`--stages=infer,export,evaluate` re-measures only those stages on the outputs an
earlier run left in `--work_dir` (e.g. after a change to one stage); the
stages before them must have run there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)

STAGES = ("prepare", "neighborhoods", "hard_negatives", "train", "infer", "export", "evaluate")
_CONFIG_JSON = os.path.join(_REPO, "trainer", "configs", "synthetic.json")
_TRAIN_SETTINGS = ("train.epochs=2", "train.steps_per_epoch=100", "train.validation_queries=0")
_EVAL_QUERIES = 10_000


def _experiment():
  """The experiment every stage uses: the synthetic config with the bench's settings."""
  from pinsage_tf import training  # pylint: disable=g-import-not-at-top
  with open(_CONFIG_JSON) as f:
    config = training.ExperimentConfig.from_dict(json.load(f))
  return config.with_overrides(list(_TRAIN_SETTINGS))


def _table_stage(stage: str, graph_dir: str) -> dict:
  """Computes (and stores) the tables of one stage in this process; returns extra keys."""
  import pinsage_tf  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  from pinsage_tf import graph as graph_lib  # pylint: disable=g-import-not-at-top
  from pinsage_tf import hard_negatives as hard_lib  # pylint: disable=g-import-not-at-top
  from pinsage_tf import neighborhoods as nb_lib  # pylint: disable=g-import-not-at-top
  config = _experiment()
  graph = graph_lib.load_graph(graph_dir)
  started = time.perf_counter()
  if stage == "neighborhoods":
    nb_lib.load_or_compute_neighborhoods(graph_dir, graph, config.neighborhoods)
    if config.learns_pivots:
      nb_lib.load_or_compute_pivot_neighborhoods(graph_dir, graph, config.pivot_neighborhoods)
    return {"compute_seconds": round(time.perf_counter() - started, 2)}
  table = hard_lib.load_or_compute_hard_negatives(graph_dir, graph, config.hard_negatives)
  return {"compute_seconds": round(time.perf_counter() - started, 2),
          "queries": int(table.queries.size), "estimator": table.config.estimator,
          "mean_pool": round(float(table.counts[table.queries].mean()), 2)}


def _run(argv: list[str], log_path: str) -> tuple[int, float, float, float]:
  """Runs `argv` to completion: (exit code, wall seconds, peak RSS in GB, CPU seconds) of
  that process (CPU time tells growth apart from waiting for a shared core)."""
  started = time.perf_counter()
  with open(log_path, "w") as log:
    process = subprocess.Popen(argv, cwd=_REPO, stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(process.pid, 0)
  seconds = time.perf_counter() - started
  process.returncode = os.waitstatus_to_exitcode(status)
  return (process.returncode, seconds, usage.ru_maxrss / 2**20,  # KiB on Linux
          usage.ru_utime + usage.ru_stime)


def _stage_argv(stage: str, n: int, paths: dict[str, str]) -> list[str]:
  py = sys.executable
  if stage == "prepare":
    return [py, "-m", "data.prepare", "--dataset=synthetic", f"--num_items={n}",
            f"--num_boards={int(0.3 * n)}", f"--num_pairs={8 * n}",
            f"--output_dir={paths['graph']}", "--overwrite"]
  if stage in ("neighborhoods", "hard_negatives"):
    return [py, os.path.abspath(__file__), f"--_stage={stage}", f"--_graph_dir={paths['graph']}",
            f"--_result_json={paths['result']}"]
  if stage == "train":
    return [py, "-m", "trainer.train", f"--graph_dir={paths['graph']}",
            f"--model_dir={paths['model']}", f"--config_json={_CONFIG_JSON}", "--quiet"] + [
                f"--set={s}" for s in _TRAIN_SETTINGS]
  if stage == "infer":
    return [py, "-m", "trainer.infer", f"--graph_dir={paths['graph']}",
            f"--model_dir={paths['model']}", f"--output_dir={paths['embeddings']}",
            "--overwrite"]
  if stage == "export":
    return [py, "-m", "trainer.export", f"--model_dir={paths['model']}",
            f"--graph_dir={paths['graph']}", f"--embeddings_dir={paths['embeddings']}",
            f"--export_base={paths['export']}", "--models=pinsage_retrieval",
            "--nopivot_signatures"]
  if stage == "evaluate":
    return [py, "-m", "trainer.evaluate", f"--graph_dir={paths['graph']}",
            f"--embeddings_dir={paths['embeddings']}", "--methods=pinsage",
            f"--max_queries={_EVAL_QUERIES}", f"--output_json={paths['result']}"]
  raise ValueError(f"unknown stage {stage!r}")


def _extra(stage: str, paths: dict[str, str]) -> dict:
  """Stage-specific measured numbers from the stage's own outputs."""
  if stage in ("neighborhoods", "hard_negatives") and os.path.exists(paths["result"]):
    with open(paths["result"]) as f:
      return json.load(f)
  if stage == "train":
    with open(os.path.join(paths["model"], "train_summary.json")) as f:
      summary = json.load(f)
    return {k: summary[k] for k in ("examples_per_second", "steps") if k in summary}
  if stage == "evaluate":
    with open(paths["result"]) as f:
      result = json.load(f)
    method = result["methods"]["pinsage"]
    return {"queries": method.get("counts", {}).get("queries"),
            "wall_time_s": method.get("wall_time_s")}
  return {}


def bench_size(n: int, work_dir: str, record: dict, write,
               stages: tuple[str, ...] = STAGES) -> None:
  """Runs `stages` for `n` items, filling `record["stages"]` and calling `write()`."""
  import shutil  # pylint: disable=g-import-not-at-top
  root = os.path.join(work_dir, f"n{n}")
  paths = {name: os.path.join(root, name) for name in ("graph", "model", "embeddings", "export")}
  # Fresh outputs for the stages that run: a stale checkpoint would be resumed.
  for stage, name in (("train", "model"), ("export", "export")):
    if stage in stages:
      shutil.rmtree(paths[name], ignore_errors=True)
  first = STAGES.index(stages[0])
  needs = {"neighborhoods": "graph", "hard_negatives": "graph", "train": "graph",
           "infer": "model", "export": "embeddings", "evaluate": "embeddings"}
  if first > 0 and not os.path.isdir(paths[needs[stages[0]]]):
    raise SystemExit(f"--stages starts at {stages[0]}, but {paths[needs[stages[0]]]} is "
                     f"missing: run the stages before it into --work_dir={work_dir} first.")
  os.makedirs(root, exist_ok=True)
  for stage in stages:
    paths["result"] = os.path.join(root, f"{stage}.json")
    if os.path.exists(paths["result"]):
      os.remove(paths["result"])
    print(f"[{n}] {stage} ...", file=sys.stderr, flush=True)
    code, seconds, rss, cpu = _run(_stage_argv(stage, n, paths),
                                   os.path.join(root, f"{stage}.log"))
    entry = {"seconds": round(seconds, 2), "max_rss_gb": round(rss, 3),
             "cpu_seconds": round(cpu, 2)}
    if code != 0:
      entry["exit_code"] = code
      record["stages"][stage] = entry
      write()
      print(f"[{n}] {stage} failed ({code}): see {root}/{stage}.log", file=sys.stderr)
      return
    entry.update(_extra(stage, paths))
    record["stages"][stage] = entry
    if stage == "prepare":
      from pinsage_tf import graph as graph_lib  # pylint: disable=g-import-not-at-top
      record["edges"] = int(graph_lib.read_manifest(paths["graph"])["counts"]["edges"])
    write()
    print(f"[{n}] {stage}: {entry}", file=sys.stderr, flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="100000,1000000,10000000")
  parser.add_argument("--work_dir", default="/tmp/bench_scale")
  parser.add_argument("--output_json", default=None)
  parser.add_argument("--stages", default=",".join(STAGES),
                      help="the stages to run, in order (default: all)")
  parser.add_argument("--_stage", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--_graph_dir", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--_result_json", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  from pinsage_tf import atomic  # pylint: disable=g-import-not-at-top
  if args._stage:  # pylint: disable=protected-access
    atomic.write_json(args._result_json, _table_stage(args._stage, args._graph_dir))
    return
  stages = tuple(args.stages.split(","))
  unknown = sorted(set(stages) - set(STAGES))
  if unknown or list(stages) != sorted(stages, key=STAGES.index):
    parser.error(f"--stages must list stages of {','.join(STAGES)} in that order, got "
                 f"{args.stages!r}.")
  results = {"sizes": [], "config": {
      "config_json": os.path.relpath(_CONFIG_JSON, _REPO), "train_settings": list(_TRAIN_SETTINGS),
      "boards_per_item": 0.3, "pairs_per_item": 8, "eval_queries": _EVAL_QUERIES,
      "cpu_count": os.cpu_count(), "stages": list(stages)}}

  def write():
    if args.output_json:
      atomic.write_json(args.output_json, results)

  for n in (int(s) for s in args.sizes.split(",")):
    record = {"items": n, "edges": None, "stages": {}}
    results["sizes"].append(record)
    bench_size(n, args.work_dir, record, write, stages)
  print(json.dumps(results, indent=2))


if __name__ == "__main__":
  main()
