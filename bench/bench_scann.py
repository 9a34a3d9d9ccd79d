r"""Served ScaNN retrieval beside raw ScaNN on 1M x 64 clustered unit vectors.

One run, one corpus, measured side by side:

* raw ScaNN: the export's index (tree + asymmetric hashing + reorder,
  `scann_index.resolve_config` for k + 1 as `pinsage_retrieval` builds it) as
  a `scann_ops_pybind` searcher (`scann_index.load_searcher` of the files
  `build_state` serialised). "raw" is `search_batched_parallel` with ScaNN's
  default query pool (cores - 1 threads) at batch 100 and `search` at batch 1,
  "raw_all_cores" `search_batched_parallel` after `set_num_threads(cores)`
  at both batch sizes.
* served: the `pinsage_retrieval` SavedModel (`RetrievalModule`, saved and
  loaded with `tf.saved_model.load` after `import scann`), its signatures
  `related_items_by_embedding` (fresh queries) and `related_items` (item ids;
  raw then searches k + 1 and drops the item), and
  `serving.servable.Servable.predict` on `related_items` (what the model
  server runs on a version without ScaNN's pybind assets), and
  "predict_pybind": `Servable.predict` on a copy of the version with them
  (`pinsage_tf.retrieval_pybind`, the server's default for ScaNN exports).
* exact numpy search (`retrieval_exact.top_k`), the ground truth of recall@k.

Both the automatic configuration and the one `scann_index.tune_search` picks
for `--target_recall` (as the export does: held-out corpus items, the item
itself excluded) are measured; the raw searcher runs the tuned point through
its query-time overrides. Passes of all variants are interleaved
`--repeats` times (the machine is shared): queries/s best and median, and
served / raw ratios per pass (median and best). A pass times the calls
only; served ids are turned into rows for recall in the untimed warm-up.

Data: `--num_clusters` Gaussian centers, each point a center plus noise,
L2-normalised; queries are fresh points from the same distribution.

Prints one JSON object (and writes it to --output_json):
  {"corpus", "cpu_count", "scann_config", "tuning", "exact",
   "configs": {"automatic" | "tuned": {"leaves_to_search", "reorder_num_neighbors",
               "variants": {name: {"qps_best", "qps_median", "recall@k"}},
               "ratios": {name: {"median", "best"}}}}}

  nice -n 10 python bench/bench_scann.py --output_json=bench/results/scann.json
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pinsage_tf  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf  # noqa: E402

from pinsage_tf import atomic  # noqa: E402
from pinsage_tf import retrieval_exact  # noqa: E402
from pinsage_tf import retrieval_pybind  # noqa: E402
from pinsage_tf import scann_index  # noqa: E402
from pinsage_tf.export import retrieval  # noqa: E402
from serving import servable as servable_lib  # noqa: E402

_NUM_ITEMS = flags.DEFINE_integer("num_items", 1_000_000, "Corpus rows.")
_DIM = flags.DEFINE_integer("dim", 64, "Vector width.")
_NUM_CLUSTERS = flags.DEFINE_integer("num_clusters", 1000,
                                     "Gaussian clusters of the data (0 = uniform on the sphere).")
_NOISE = flags.DEFINE_float("noise", 0.5, "Within-cluster noise scale (centers are N(0, 1)).")
_NUM_QUERIES = flags.DEFINE_integer("num_queries", 2000, "Queries per batch-100 pass.")
_SINGLE_QUERIES = flags.DEFINE_integer("single_queries", 300, "Queries per batch-1 pass.")
_K = flags.DEFINE_integer("k", 10, "Neighbors per query.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 100, "Queries per batched call.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Interleaved timed passes of every variant.")
_TARGET_RECALL = flags.DEFINE_float("target_recall", 0.99, "Recall@k the tuning aims at.")
_TUNING_QUERIES = flags.DEFINE_integer("tuning_queries", 1000, "Held-out items the tuning uses.")
_SEED = flags.DEFINE_integer("seed", 0, "Data seed.")
_OUTPUT_JSON = flags.DEFINE_string("output_json", "", "Also write the JSON here.")


def make_data(n: int, d: int, clusters: int, noise: float, num_queries: int, seed: int):
  """(corpus float32 [n, d], queries float32 [q, d]), rows L2-normalised."""
  rng = np.random.default_rng(seed)

  def sample(count, centers):
    if centers is None:
      x = rng.standard_normal((count, d), dtype=np.float32)
    else:
      x = centers[rng.integers(0, clusters, count)]
      x += noise * rng.standard_normal((count, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x

  centers = rng.standard_normal((clusters, d), dtype=np.float32) if clusters else None
  return sample(n, centers), sample(num_queries, centers)


def _log(message: str) -> None:
  print(f"[bench_scann {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _drop_self(ids: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
  out = np.full((ids.shape[0], k), -1, np.int64)
  for q, (found, row) in enumerate(zip(ids, rows)):
    kept = found[found != row][:k]
    out[q, :len(kept)] = kept
  return out


def _as_rows(found) -> np.ndarray:
  """Rows of a variant's answer: raw ScaNN's rows as they are, served ids ("i<row>") parsed."""
  found = np.asarray(found)
  if found.dtype != object:
    return found
  return np.vectorize(lambda b: int(b.decode()[1:]) if b else -1, otypes=[np.int64])(found)


def main(argv):
  del argv
  k, batch, cores = _K.value, _BATCH_SIZE.value, os.cpu_count() or 1
  corpus, queries = make_data(_NUM_ITEMS.value, _DIM.value, _NUM_CLUSTERS.value, _NOISE.value,
                              _NUM_QUERIES.value, _SEED.value)
  n = corpus.shape[0]
  rng = np.random.default_rng(_SEED.value + 1)
  item_rows = np.sort(rng.choice(n, _NUM_QUERIES.value, replace=False)).astype(np.int32)
  rest = np.setdiff1d(np.arange(n, dtype=np.int32), item_rows)
  tuning_rows = np.sort(rng.choice(rest, min(_TUNING_QUERIES.value, rest.size), replace=False))

  _log(f"exact numpy search of {len(queries)} + {len(item_rows)} queries")
  t0 = time.perf_counter()
  exact_emb, _ = retrieval_exact.top_k(queries, corpus, k)
  exact_seconds = time.perf_counter() - t0
  exact_items, _ = retrieval_exact.top_k(corpus[item_rows], corpus, k, exclude=item_rows)
  exact_tuning, _ = retrieval_exact.top_k(corpus[tuning_rows], corpus, k, exclude=tuning_rows)

  # As the export builds pinsage_retrieval: the index serves k + 1 (related_items
  # drops the query item).
  requested = scann_index.ScannConfig(target_recall=_TARGET_RECALL.value,
                                      tuning_queries=_TUNING_QUERIES.value)
  auto = scann_index.resolve_config(n, k + 1, requested)
  _log(f"building the TF index {auto}")
  t0 = time.perf_counter()
  artifacts = os.path.join(tempfile.mkdtemp(prefix="bench_scann-index-"), "index")
  state = scann_index.build_state(corpus, auto, k + 1, artifacts_dir=artifacts)
  build_seconds = time.perf_counter() - t0
  _log("tuning")
  t0 = time.perf_counter()
  tuning = scann_index.tune_search(state, auto, requested, corpus[tuning_rows], exact_tuning, k,
                                   exclude=tuning_rows)
  tuning_seconds = time.perf_counter() - t0
  _log(f"tuned: {tuning.chosen}")
  _log("loading the raw index (the same files the TF state was read from)")
  raw = scann_index.load_searcher(artifacts, cores)

  ids = np.array([f"i{i}" for i in range(n)])
  tmp = tempfile.mkdtemp(prefix="bench_scann-")
  vocab = os.path.join(tmp, "items.txt")
  with open(vocab, "w", encoding="utf-8") as f:
    f.write("\n".join(ids.tolist()) + "\n")
  configs = {"automatic": auto, "tuned": tuning.config}
  served = {}
  for name, config in configs.items():
    _log(f"exporting and loading the {name} pinsage_retrieval")
    module = retrieval.RetrievalModule(ids, corpus, vocab, k, state,
                                       scann_reorder=config.reorder_num_neighbors,
                                       scann_leaves=config.num_leaves_to_search)
    path = os.path.join(tmp, name, "1")
    tf.saved_model.save(module, path, signatures=module.signatures(),
                        options=scann_index.SAVE_OPTIONS)
    fast_path = os.path.join(tmp, name + "_pybind", "1")
    shutil.copytree(path, fast_path)
    copied = os.path.join(tmp, name + "_index")
    shutil.copytree(artifacts, copied)
    retrieval_pybind.write_assets(fast_path, copied, module.pybind_search())
    served[name] = (tf.saved_model.load(path),
                    servable_lib.Servable("pinsage_retrieval", 1, path, ["serve"]),
                    servable_lib.Servable("pinsage_retrieval", 1, fast_path, ["serve"],
                                          scann_threads=cores))
  del module

  item_bytes = np.char.encode(ids[item_rows], "utf-8").astype(object)
  singles = _SINGLE_QUERIES.value

  def variants(name, config):
    leaves, reorder = config.num_leaves_to_search, config.reorder_num_neighbors
    loaded, servable, fast = served[name]
    by_embedding = loaded.signatures["related_items_by_embedding"]
    related = loaded.signatures["related_items"]

    def raw_batched(threads, rows):
      def run(qs):
        if raw_threads[0] != threads:  # a new pool: only when the variant changes
          raw.set_num_threads(threads)
          raw_threads[0] = threads
        return raw.search_batched_parallel(qs, final_num_neighbors=k + (rows is not None),
                                           pre_reorder_num_neighbors=reorder,
                                           leaves_to_search=leaves)[0]
      return run

    def raw_single(rows):
      def run(qs):  # one query
        return raw.search(qs[0], final_num_neighbors=k + (rows is not None),
                          pre_reorder_num_neighbors=reorder,
                          leaves_to_search=-1 if leaves is None else leaves)[0][None]
      return run

    def sig_embedding(qs):
      return by_embedding(embeddings=tf.constant(qs))["neighbor_ids"].numpy()

    def sig_items(b):
      return related(item_ids=tf.constant(b))["neighbor_ids"].numpy()

    def predict_items(b):
      return servable.predict("related_items", {"item_ids": b})["neighbor_ids"]

    def fast_items(b):
      return fast.predict("related_items", {"item_ids": b})["neighbor_ids"]

    def fast_embedding(qs):
      return fast.predict("related_items_by_embedding", {"embeddings": qs})["neighbor_ids"]

    emb, rows = "by_embedding", item_rows
    return {
        # name: (batch size, inputs, search fn, rows to drop, exact ids)
        f"raw_{emb}_b{batch}": (batch, queries, raw_batched(cores - 1, None), None, exact_emb),
        f"raw_all_cores_{emb}_b{batch}": (batch, queries, raw_batched(cores, None), None,
                                          exact_emb),
        f"served_{emb}_b{batch}": (batch, queries, sig_embedding, None, exact_emb),
        f"raw_related_b{batch}": (batch, corpus[rows], raw_batched(cores - 1, rows), rows,
                                  exact_items),
        f"raw_all_cores_related_b{batch}": (batch, corpus[rows], raw_batched(cores, rows), rows,
                                            exact_items),
        f"served_related_b{batch}": (batch, item_bytes, sig_items, None, exact_items),
        f"predict_related_b{batch}": (batch, item_bytes, predict_items, None, exact_items),
        f"predict_pybind_related_b{batch}": (batch, item_bytes, fast_items, None, exact_items),
        f"predict_pybind_{emb}_b{batch}": (batch, queries, fast_embedding, None, exact_emb),
        f"raw_{emb}_b1": (1, queries[:singles], raw_single(None), None, exact_emb[:singles]),
        f"served_{emb}_b1": (1, queries[:singles], sig_embedding, None, exact_emb[:singles]),
        "raw_related_b1": (1, corpus[rows[:singles]], raw_single(rows), rows[:singles],
                           exact_items[:singles]),
        "served_related_b1": (1, item_bytes[:singles], sig_items, None, exact_items[:singles]),
        "predict_related_b1": (1, item_bytes[:singles], predict_items, None,
                               exact_items[:singles]),
        f"raw_all_cores_{emb}_b1": (1, queries[:singles], raw_batched(cores, None), None,
                                    exact_emb[:singles]),
        "raw_all_cores_related_b1": (1, corpus[rows[:singles]], raw_batched(cores, rows),
                                     rows[:singles], exact_items[:singles]),
        "predict_pybind_related_b1": (1, item_bytes[:singles], fast_items, None,
                                      exact_items[:singles]),
        f"predict_pybind_{emb}_b1": (1, queries[:singles], fast_embedding, None,
                                     exact_emb[:singles]),
    }

  raw_threads = [None]  # the raw searcher's current set_num_threads
  table = {name: variants(name, config) for name, config in configs.items()}
  seconds = {(c, v): [] for c in table for v in table[c]}
  recall = {}
  _log("warm-up and recall")
  for c, vs in table.items():
    for v, (b, inputs, fn, drop, exact) in vs.items():
      out = np.concatenate([_as_rows(fn(inputs[s:s + b])) for s in range(0, len(inputs), b)])
      if drop is not None:
        out = _drop_self(out, drop, k)
      recall[c, v] = scann_index.recall_at_k(out[:, :k], exact)
  for rep in range(_REPEATS.value):
    _log(f"timed pass {rep + 1}/{_REPEATS.value}")
    for c, vs in table.items():
      for v, (b, inputs, fn, _, _) in vs.items():
        start = time.perf_counter()
        for s in range(0, len(inputs), b):
          fn(inputs[s:s + b])
        seconds[c, v].append(time.perf_counter() - start)

  result_configs = {}
  for c, vs in table.items():
    qps = {v: [len(vs[v][1]) / t for t in seconds[c, v]] for v in vs}
    out = {"leaves_to_search": configs[c].num_leaves_to_search,
           "reorder_num_neighbors": configs[c].reorder_num_neighbors,
           "variants": {v: {"qps_best": round(max(qps[v]), 1),
                            "qps_median": round(statistics.median(qps[v]), 1),
                            f"recall@{k}": round(recall[c, v], 4)} for v in vs},
           "ratios": {}}
    for v in vs:
      if v.startswith("raw"):
        continue
      kind = v.split("_", 2 if v.startswith("predict_pybind") else 1)[-1]
      for base in ("raw", "raw_all_cores"):
        ref = f"{base}_{kind}"
        if ref in qps:
          per_pass = [a / r for a, r in zip(qps[v], qps[ref])]
          out["ratios"][f"{v} / {ref}"] = {"median": round(statistics.median(per_pass), 3),
                                           "best": round(max(qps[v]) / max(qps[ref]), 3)}
    result_configs[c] = out
  result = {
      "corpus": {"num_items": n, "dim": int(corpus.shape[1]), "clusters": _NUM_CLUSTERS.value,
                 "noise": _NOISE.value, "queries": len(queries), "single_queries": singles,
                 "batch_size": batch, "k": k, "repeats": _REPEATS.value},
      "cpu_count": cores,
      "scann_config": auto.to_json(),
      "build_seconds": round(build_seconds, 1),
      "tuning": {**tuning.to_json(), "seconds": round(tuning_seconds, 1)},
      "exact": {"qps": round(len(queries) / exact_seconds, 1), "what": "numpy, one pass"},
      "configs": result_configs,
  }
  text = json.dumps(result, indent=2)
  print(text)
  if _OUTPUT_JSON.value:
    atomic.write_json(_OUTPUT_JSON.value, result)


if __name__ == "__main__":
  app.run(main)
