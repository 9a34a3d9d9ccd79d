r"""Per-request cost of the served pybind path around ScaNN's own search.

Builds `serving.toy_models.build_pinsage_retrieval` in a temporary directory
(2,000 items x 8 dims with item biases, k = 5, tree-AH: 20 leaves, 4 searched,
30 re-scored), loads it as a `serving.servable.Servable` (the pybind searcher
on --threads threads) and times, best of --repeats interleaved rounds, at
batch 1 and 100:

* `validate_inputs`: `serving.validation.validate_inputs` of the request;
* per signature (`related_items` of item ids, `related_items_by_embedding` of
  fresh vectors): `predict` (`Servable.predict`), `run`
  (`PybindRetrieval.run`, the numpy around the search) and `search`: the
  index's own `search_batched_parallel` with the same arguments (k + 1 results
  for related_items), as raw ScaNN is called.

`predict - search` is what the served path adds to a search. The index is
small, so the search itself is cheap here; at 1M items it is the large part
(bench/bench_scann.py). Only public entry points are used, so the same script
measures an older checkout (`python OTHER_CHECKOUT/bench/bench_pybind_request.py`
with this file copied there).

Prints one JSON object (and writes it to --output_json):
  {"model", "threads", "repeats",
   "microseconds": {"b1" | "b100": {"validate_inputs",
                                    "related_items" | "related_items_by_embedding":
                                        {"predict", "run", "search", "predict_minus_search"}}}}

  nice -n 10 python bench/bench_pybind_request.py --output_json=results/pybind_request.json
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import timeit

from absl import app
from absl import flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pinsage_tf  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf  # noqa: E402

from pinsage_tf import atomic  # noqa: E402
from pinsage_tf import retrieval_pybind  # noqa: E402
from pinsage_tf import scann_index  # noqa: E402
from serving import servable as servable_lib  # noqa: E402
from serving import toy_models  # noqa: E402
from serving import validation  # noqa: E402

_THREADS = flags.DEFINE_integer("threads", 2, "Threads of the pybind searcher.")
_REPEATS = flags.DEFINE_integer("repeats", 9, "Timed rounds; the best is reported.")
_OUTPUT_JSON = flags.DEFINE_string("output_json", "", "Also write the JSON here.")

_NUM_ITEMS, _DIM, _K = 2000, 8, 5  # toy_models.build_pinsage_retrieval's defaults


def _best_microseconds(fns, calls: int, repeats: int) -> dict[str, float]:
  """Best per-call microseconds of each fn, rounds of all fns interleaved."""
  seconds = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      seconds[name].append(timeit.timeit(fn, number=calls))
  return {name: round(min(s) / calls * 1e6, 2) for name, s in seconds.items()}


def main(argv):
  del argv
  servable_lib.import_custom_ops()
  root = tempfile.mkdtemp(prefix="bench_pybind_request-")
  path = toy_models.build_pinsage_retrieval(os.path.join(root, "1"))
  served = servable_lib.Servable("pinsage_retrieval", 1, path, ["serve"],
                                 scann_threads=_THREADS.value)
  assets = os.path.join(path, retrieval_pybind.ASSETS_DIR)
  with open(os.path.join(assets, retrieval_pybind.SEARCH_FILE), encoding="utf-8") as f:
    search = json.load(f)
  raw = scann_index.load_searcher(os.path.join(assets, retrieval_pybind.INDEX_DIR),
                                  _THREADS.value)
  loaded = tf.saved_model.load(path)
  corpus = loaded.embeddings.numpy()  # [N, dim + 1]: [z_i, b_i]
  fast = retrieval_pybind.PybindRetrieval(path, loaded, _THREADS.value)

  rng = np.random.default_rng(0)
  result = {}
  for batch in (1, 100):
    calls = 4000 if batch == 1 else 400
    rows = rng.choice(_NUM_ITEMS, batch, replace=False)
    item_ids = np.array([f"item{r}".encode() for r in rows], dtype=object)
    vectors = rng.standard_normal((batch, _DIM)).astype(np.float32)
    ones = np.ones((batch, 1), np.float32)  # the bias column of a query
    cases = {
        "related_items": ({"item_ids": item_ids},
                          np.concatenate([corpus[rows, :_DIM], ones], axis=1), _K + 1),
        "related_items_by_embedding": ({"embeddings": vectors},
                                       np.concatenate([vectors, ones], axis=1), _K),
    }
    signature, ids_request = served.signature("related_items"), cases["related_items"][0]
    fns = {"validate_inputs": lambda signature=signature, inputs=ids_request:
           validation.validate_inputs(signature, inputs)}
    for key, (inputs, queries, count) in cases.items():
      fns[key, "predict"] = lambda key=key, inputs=inputs: served.predict(key, inputs)
      fns[key, "run"] = lambda key=key, inputs=inputs: fast.run(key, inputs)
      fns[key, "search"] = lambda queries=queries, count=count: raw.search_batched_parallel(
          queries, final_num_neighbors=count, pre_reorder_num_neighbors=search["pre_reorder"],
          leaves_to_search=search["leaves"])
    best = _best_microseconds(fns, calls, _REPEATS.value)
    times = {"validate_inputs": best["validate_inputs"]}
    for key in cases:
      entry = {part: best[key, part] for part in ("predict", "run", "search")}
      entry["predict_minus_search"] = round(entry["predict"] - entry["search"], 2)
      times[key] = entry
    result[f"b{batch}"] = times
  shutil.rmtree(root)
  out = {"model": {"num_items": _NUM_ITEMS, "dim": _DIM, "k": _K, "with_bias": True,
                   "leaves": search["leaves"], "pre_reorder": search["pre_reorder"]},
         "threads": _THREADS.value, "repeats": _REPEATS.value, "microseconds": result}
  text = json.dumps(out, indent=2)
  print(text)
  if _OUTPUT_JSON.value:
    atomic.write_json(_OUTPUT_JSON.value, out)


if __name__ == "__main__":
  app.run(main)
