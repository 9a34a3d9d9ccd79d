r"""Offline evaluation CLI: learned embeddings and baselines, exact by default.

    python -m trainer.evaluate --graph_dir=GRAPH \
        --embeddings=pinsage=EMB_DIR1,pinsage_mean=EMB_DIR2 \
        --methods=pinsage,pinsage_mean,popularity,itemknn,pixie,features \
        --protocol=auto --split=test --output_json=results.json \
        [--dump_topk=topk.jsonl] [--ks=10,50,100,500] [--mrr_scale=100] \
        [--max_queries=N] [--scann] [--compare_to=itemknn [--bootstrap_resamples=2000]]

Methods are embedding directories (`--embeddings_dir` is the method
"pinsage"; `--embeddings=name=DIR,...` adds named ones, e.g. the paper's
Table 1 variants) and the baselines popularity, itemknn, linear_filter, pixie, features
(`pinsage_tf.baselines`). Under the user protocol, an embeddings directory
that holds pivot embeddings (a model trained with pivot pairs) also gives the
method "<name>_pivots": each user scored by its own pivot embedding (the one
embedded from the history the protocol uses: graph items, plus validation
items on the test split), next to "<name>", the aggregate of the user's
item-item scores. Without `--methods`, every given embedding set (and its
pivots) plus popularity, itemknn, linear_filter, pixie and (when the graph has item
features) features.

Prints a table and writes JSON: {"dataset", "protocol", "split", "config",
"methods": {name: {"metrics", "counts", "wall_time_s", "source", ["scann"]}},
"total_wall_time_s", ["comparison"], ...}. `--dump_topk` writes JSON lines, one per evaluated
query (item protocol: {"method", "query", "positives", "topk", "scores"}, plus
"user" on graphs whose pairs also exclude their user's items) or
user ({"method", "user", "relevant", "topk", "scores"}), raw ids, so results
can be re-scored independently. `--scann` also scores each embedding method
through a ScaNN index and reports its recall@10 against exact search.

`--compare_to=METHOD` (one of `--methods`) adds "comparison": every other
method against that reference, per metric, with paired cluster-bootstrap
intervals of the ratio and the difference (`pinsage_tf.significance`). The
clusters are the pairs' users when the graph records them (`pairs_group`),
else the pairs (item protocol), and the users (user protocol).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from typing import Any, Mapping, Sequence

from trainer import startup  # noqa: F401  (TensorFlow's log level; before TF loads)
import pinsage_tf  # noqa: F401  (must precede any TensorFlow import, e.g. by scann)

from absl import app
from absl import flags
from absl import logging

from pinsage_tf import atomic
from pinsage_tf import baselines
from pinsage_tf import embeddings_io
from pinsage_tf import evaluation
from pinsage_tf import graph as graph_lib
from pinsage_tf import metrics
from pinsage_tf import retrieval_exact
from pinsage_tf import significance

_GRAPH_DIR = flags.DEFINE_string("graph_dir", None, "Graph directory (data.prepare output).")
_EMBEDDINGS_DIR = flags.DEFINE_string(
    "embeddings_dir", None, "Embeddings directory of the method 'pinsage'.")
_EMBEDDINGS = flags.DEFINE_list(
    "embeddings", [], "More embedding sets as name=DIR (e.g. pinsage_mean=/path/emb).")
_METHODS = flags.DEFINE_list(
    "methods", None, "Methods to evaluate: embedding names and/or "
    f"{','.join(baselines.BASELINES)}. Default: all embeddings + applicable baselines.")
_PROTOCOL = flags.DEFINE_enum("protocol", "auto", list(evaluation.PROTOCOLS),
                              "item (PinSage pairs), user (NGCF/LightGCN) or auto (the "
                              "graph's metadata primary_protocol, else item when it has pairs).")
_SPLIT = flags.DEFINE_enum("split", "test", list(evaluation.SPLITS), "Held-out split.")
_OUTPUT_JSON = flags.DEFINE_string("output_json", None, "Write the results JSON here.")
_DUMP_TOPK = flags.DEFINE_string("dump_topk", None, "Write per-query top-K raw ids (JSONL).")
_DUMP_K = flags.DEFINE_integer("dump_k", None, "Length of dumped lists (default: max cutoff).")
_KS = flags.DEFINE_list("ks", [str(k) for k in metrics.DEFAULT_ITEM_KS],
                        "Hit-rate cutoffs (item protocol).")
_USER_KS = flags.DEFINE_list("user_ks", [str(k) for k in metrics.DEFAULT_USER_KS],
                             "Recall/NDCG cutoffs (user protocol).")
_MRR_SCALE = flags.DEFINE_float("mrr_scale", metrics.DEFAULT_MRR_SCALE,
                                "Scale s of the paper's MRR = mean 1/ceil(rank/s) (paper: "
                                "100 for ~5M items).")
_TIES = flags.DEFINE_enum("ties", "expected", list(metrics.TIES),
                          "How a positive is ranked among equal scores (item protocol).")
_USER_QUERY = flags.DEFINE_enum("user_query", "mean", list(baselines.SET_AGGREGATIONS),
                                "User scores: mean, max or logsumexp (soft max) over the "
                                "user's train items.")
_USER_QUERY_TEMPERATURE = flags.DEFINE_float(
    "user_query_temperature", baselines.DEFAULT_SET_TEMPERATURE,
    "Temperature of --user_query=logsumexp.")
_TEST_HISTORY_VALIDATION = flags.DEFINE_bool(
    "test_history_includes_validation", True,
    "User protocol, test split: a user's history also holds their validation items (known "
    "before the test; held out of the graph only for tuning).")
_MAX_QUERIES = flags.DEFINE_integer("max_queries", None,
                                    "Evaluate a seeded subsample of pairs/users.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the subsample and of the pixie walks.")
_SCANN = flags.DEFINE_bool("scann", False, "Also search embeddings through a ScaNN index.")
_PIXIE_STEPS = flags.DEFINE_integer("pixie_steps", baselines.DEFAULT_PIXIE_STEPS,
                                    "Pixie visits per query (or per user).")
_PIXIE_RESTART = flags.DEFINE_float("pixie_restart_prob", baselines.DEFAULT_PIXIE_RESTART_PROB,
                                    "Pixie restart probability.")
_COMPARE_TO = flags.DEFINE_string(
    "compare_to", None, "Reference method (one of --methods): report every other method's "
    "ratio and difference to it with paired cluster-bootstrap confidence intervals "
    "(resamples seeded by --seed).")
_BOOTSTRAP_RESAMPLES = flags.DEFINE_integer(
    "bootstrap_resamples", significance.BootstrapConfig.resamples,
    "Bootstrap resamples of --compare_to.")
_BOOTSTRAP_CONFIDENCE = flags.DEFINE_float(
    "bootstrap_confidence", significance.BootstrapConfig.confidence,
    "Two-sided level of the --compare_to intervals.")
_MAX_BLOCK_MB = flags.DEFINE_integer(
    "max_block_mb", retrieval_exact.DEFAULT_MAX_BLOCK_ELEMENTS * 4 >> 20,
    "Size bound (MiB, float32) of one [queries, items] score block.")


def parse_embedding_specs(embeddings_dir: str | None, specs: Sequence[str]) -> dict[str, str]:
  """{"pinsage": embeddings_dir, name: dir for each "name=dir"}; rejects bad specs."""
  out: dict[str, str] = {}
  if embeddings_dir:
    out["pinsage"] = embeddings_dir
  for spec in specs:
    name, sep, path = spec.partition("=")
    name = name.strip()
    if not sep or not name or not path:
      raise ValueError(f"--embeddings entry {spec!r} must look like name=DIR.")
    if name in baselines.BASELINES:
      raise ValueError(f"--embeddings name {name!r} clashes with a baseline; rename it.")
    if name in out:
      raise ValueError(f"--embeddings name {name!r} is given twice.")
    out[name] = path
  return out


PIVOT_SUFFIX = "_pivots"


def _default_methods(graph: graph_lib.Graph, embedding_names: Sequence[str]) -> list[str]:
  methods = list(embedding_names) + ["popularity", "itemknn", "linear_filter", "pixie"]
  f = graph.features
  if f.dense_dim or any(s.values.nnz for s in f.sparse):
    methods.append("features")
  return methods


def _progress_logger(method: str, unit: str):
  started = time.monotonic()

  def log(done: int, total: int) -> None:
    logging.info("%s: %d/%d %s (%.0f%%), %.1f s", method, done, total, unit,
                 100.0 * done / max(total, 1), time.monotonic() - started)
  return log


def run(
    *,
    graph_dir: str,
    embeddings: Mapping[str, str],
    methods: Sequence[str] | None,
    config: evaluation.EvalConfig,
    output_json: str | None = None,
    dump_topk: str | None = None,
    use_scann: bool = False,
    pixie_steps: int = baselines.DEFAULT_PIXIE_STEPS,
    pixie_restart_prob: float = baselines.DEFAULT_PIXIE_RESTART_PROB,
    compare_to: str | None = None,
    bootstrap: significance.BootstrapConfig = significance.BootstrapConfig(),
) -> dict[str, Any]:
  """Evaluates `methods` and returns (and optionally writes) the results dict."""
  started = time.perf_counter()
  graph = graph_lib.load_graph(graph_dir)
  fingerprint = graph_lib.graph_fingerprint(graph_dir)
  protocol = evaluation.resolve_protocol(graph, config.protocol, config.split)
  loaded = {name: embeddings_io.load_embeddings(path, graph, graph_fingerprint=fingerprint)
            for name, path in embeddings.items()}
  pivot_methods = {name + PIVOT_SUFFIX: name for name, emb in loaded.items()
                   if emb.pivot_vectors and protocol == "user"}
  if methods:
    methods = list(methods)
  else:
    methods = _default_methods(graph, [m for name in embeddings for m in
                                       [name] + [p for p in pivot_methods
                                                 if pivot_methods[p] == name]])
  if len(set(methods)) != len(methods):
    raise ValueError(f"--methods lists a method twice: {methods}.")
  if compare_to is not None and (compare_to not in methods or len(methods) < 2):
    raise ValueError(f"--compare_to={compare_to} must be one of --methods ({','.join(methods)}) "
                     "and at least one other method must be evaluated.")
  # Build every scorer before evaluating anything, so bad inputs fail fast.
  scorers: dict[str, baselines.ItemScorer] = {}
  sources: dict[str, str] = {}
  for name in methods:
    if name in embeddings:
      emb = loaded[name]
      scorers[name] = baselines.EmbeddingScorer(emb.vectors, name=name,
                                                max_block_elements=config.max_block_elements,
                                                bias=emb.item_bias)
      sources[name] = os.path.abspath(embeddings[name])
    elif name in pivot_methods:
      emb = loaded[pivot_methods[name]]
      history = evaluation.history_name(graph, config)
      if history not in emb.pivot_vectors:
        raise ValueError(f"{embeddings[pivot_methods[name]]} has pivot embeddings for "
                         f"{sorted(emb.pivot_vectors)}, but this evaluation needs {history!r}.")
      scorers[name] = baselines.PivotScorer(emb.vectors, emb.pivot_vectors[history], name=name,
                                            max_block_elements=config.max_block_elements,
                                            bias=emb.item_bias)
      sources[name] = f"{os.path.abspath(embeddings[pivot_methods[name]])} (pivots: {history})"
    elif name in baselines.BASELINES:
      scorers[name] = baselines.make_baseline(
          name, graph, seed=config.seed, pixie_steps=pixie_steps,
          pixie_restart_prob=pixie_restart_prob, max_block_elements=config.max_block_elements)
      sources[name] = "baseline"
    elif name == "pinsage":
      raise ValueError("method 'pinsage' needs --embeddings_dir (or --embeddings=pinsage=DIR).")
    elif name.endswith(PIVOT_SUFFIX) and name[:-len(PIVOT_SUFFIX)] in embeddings:
      raise ValueError(f"method {name!r} needs pivot embeddings (a model trained with pivot "
                       "pairs) and the user protocol.")
    else:
      raise ValueError(f"unknown method {name!r}: not a baseline {baselines.BASELINES} nor an "
                       f"--embeddings name {sorted(embeddings)}.")
  if use_scann:
    evaluation._import_scann()  # fail before the long exact runs

  results: dict[str, dict[str, Any]] = {}
  with contextlib.ExitStack() as stack:
    # The dump is published only when every method succeeded (atomic_file).
    dump = stack.enter_context(atomic.atomic_file(dump_topk)) if dump_topk else None
    sink = (lambda record: dump.write(json.dumps(record) + "\n")) if dump else None
    for name, scorer in scorers.items():
      logging.info("evaluating %s (%s protocol, %s split)", name, protocol, config.split)
      unit = "queries" if protocol == "item" else "users"
      result = evaluation.evaluate(graph, scorer, config, _progress_logger(name, unit), sink,
                                   keep_values=compare_to is not None)
      result["source"] = sources[name]
      if use_scann and isinstance(scorer, baselines.EmbeddingScorer):
        result["scann"] = evaluation.evaluate_scann(graph, scorer, config)
      results[name] = result

  per_query = {name: r.pop("per_query") for name, r in results.items() if "per_query" in r}
  first = next(iter(results.values()))
  output = {
      "dataset": graph.name,
      "graph_dir": os.path.abspath(graph_dir),
      "graph_fingerprint": fingerprint,
      "protocol": protocol,
      "split": config.split,
      # Data counts shared by all methods (per-method ones stay under "methods").
      "counts": {k: v for k, v in first["counts"].items() if k != "ties_at_positive"},
      "config": {"ks": list(config.ks), "user_ks": list(config.user_ks),
                 "mrr_scale": config.mrr_scale, "ties": config.ties,
                 "user_query": config.user_query,
                 "user_query_temperature": config.user_query_temperature,
                 "test_history_includes_validation": config.test_history_includes_validation,
                 "max_queries": config.max_queries,
                 "seed": config.seed, "exact": True, "scann": use_scann,
                 "pixie_steps": pixie_steps, "pixie_restart_prob": pixie_restart_prob,
                 "compare_to": compare_to,
                 "bootstrap": (None if compare_to is None else
                               {"resamples": bootstrap.resamples,
                                "confidence": bootstrap.confidence, "seed": bootstrap.seed})},
      "methods": {name: {k: v for k, v in r.items() if k not in ("protocol", "split")}
                  for name, r in results.items()},
      "total_wall_time_s": round(time.perf_counter() - started, 3),
  }
  if compare_to is not None:
    output["comparison"] = compare_methods(per_query, compare_to, bootstrap)
  if dump_topk:
    output["dump_topk"] = os.path.abspath(dump_topk)
  if output_json:
    atomic.write_json(output_json, output)
  return output


def compare_methods(per_query: Mapping[str, evaluation.PerQuery], reference: str,
                    bootstrap: significance.BootstrapConfig) -> dict[str, Any]:
  """Every method of `per_query` against `reference` (`significance.compare`)."""
  ref = per_query[reference]
  return {
      "reference": reference,
      "cluster_by": ref.cluster_by,
      "methods": {name: significance.compare(pq.values, ref.values, ref.clusters, bootstrap)
                  for name, pq in per_query.items() if name != reference},
  }


def format_comparison(comparison: Mapping[str, Any]) -> str:
  """One line per (method, metric): ratio and difference with their intervals."""
  lines = []
  for name, c in comparison["methods"].items():
    lines.append(f"{name} vs {comparison['reference']} ({c['clusters']} {comparison['cluster_by']} "
                 f"clusters, {c['resamples']} resamples, {c['confidence']:.0%} intervals):")
    for metric, m in c["metrics"].items():
      ratio, diff = m["ratio"], m["difference"]
      ratio_text = ("n/a" if ratio["low"] is None else
                    f"{ratio['estimate']:.3f} [{ratio['low']:.3f}, {ratio['high']:.3f}]")
      lines.append(f"  {metric}: {m['method']:.4f} vs {m['reference']:.4f}, ratio {ratio_text}, "
                   f"difference {diff['estimate']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}], "
                   f"not better in {m['share_not_better']:.1%} of resamples")
  return "\n".join(lines)


def _ints(values: Sequence[str], flag: str) -> tuple[int, ...]:
  try:
    return tuple(int(v) for v in values)
  except ValueError as e:
    raise app.UsageError(f"--{flag} must be a comma-separated list of integers: {e}") from e


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _GRAPH_DIR.value:
    raise app.UsageError("--graph_dir is required.")
  try:
    config = evaluation.EvalConfig(
        protocol=_PROTOCOL.value, split=_SPLIT.value, ks=_ints(_KS.value, "ks"),
        user_ks=_ints(_USER_KS.value, "user_ks"), mrr_scale=_MRR_SCALE.value, ties=_TIES.value,
        user_query=_USER_QUERY.value, user_query_temperature=_USER_QUERY_TEMPERATURE.value,
        test_history_includes_validation=_TEST_HISTORY_VALIDATION.value,
        max_queries=_MAX_QUERIES.value, seed=_SEED.value,
        max_block_elements=max(1, _MAX_BLOCK_MB.value * (1 << 20) // 4), dump_k=_DUMP_K.value)
    bootstrap = significance.BootstrapConfig(resamples=_BOOTSTRAP_RESAMPLES.value,
                                             confidence=_BOOTSTRAP_CONFIDENCE.value,
                                             seed=_SEED.value)
    output = run(graph_dir=_GRAPH_DIR.value,
                 embeddings=parse_embedding_specs(_EMBEDDINGS_DIR.value, _EMBEDDINGS.value),
                 methods=_METHODS.value, config=config, output_json=_OUTPUT_JSON.value,
                 dump_topk=_DUMP_TOPK.value, use_scann=_SCANN.value,
                 pixie_steps=_PIXIE_STEPS.value, pixie_restart_prob=_PIXIE_RESTART.value,
                 compare_to=_COMPARE_TO.value, bootstrap=bootstrap)
  except (ValueError, ImportError, FileNotFoundError) as e:
    # Bad inputs (graph/embeddings format errors are ValueErrors): one clear
    # line on stderr and exit status 1, no traceback.
    sys.exit(f"evaluate: error: {e}")
  counts = ", ".join(f"{k}={v}" for k, v in output["counts"].items())
  print(f"{output['dataset']}: {output['protocol']} protocol, {output['split']} split ({counts})")
  print(evaluation.format_table(output["methods"]))
  segments = evaluation.format_segments(output["methods"])
  if segments:
    print("\nBy which side of the pair has no graph edge:\n" + segments)
  for name, r in output["methods"].items():
    if "scann" in r:
      s = r["scann"]
      recall = next(v for k, v in s.items() if k.startswith("recall@"))
      print(f"{name} via ScaNN ({s['index']}): recall@10 vs exact {recall:.4f}, "
            + ", ".join(f"{k}={v:.4f}" for k, v in s["metrics"].items()))
  if "comparison" in output:
    print(format_comparison(output["comparison"]))
  if _OUTPUT_JSON.value:
    print(f"wrote {_OUTPUT_JSON.value}")


def cli() -> None:
  """Console-script entry point (`pinsage-evaluate`)."""
  app.run(main)


if __name__ == "__main__":
  cli()
