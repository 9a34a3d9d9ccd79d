r"""Producer and training throughput on the real datasets (JSON output).

    .venv/bin/python bench/bench_training.py --datasets_dir=../shared/datasets \
        [--datasets=movielens,gowalla] [--output_json=bench/results/training.json]

For each dataset (MovieLens latest-small with the item features; Gowalla with
id embeddings), with batch 512, T=10, K=2, 500 shared negatives, hidden 256,
embedding 128 (`_SETTINGS`):

* pipeline: minibatches/s produced by `pinsage_tf.pipeline.make_dataset`
  alone (parallel map + prefetch, nothing consuming but the iterator);
* training: steps/s and examples/s of the training step alone, on batches
  built beforehand (so the producer costs nothing during the timing);
* end to end: examples/s of the pipeline feeding the training step;
* ratio = pipeline batches/s / training steps/s: how many times faster the
  producer is than the consumer (the paper's producer/consumer design needs
  it well above 1; the target here is >= 3).

Both sides are measured in the same run, one after the other, on the same
(shared, noisy) machine; the ratio is the robust number.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pinsage_tf  # noqa: E402,F401
import tensorflow as tf  # noqa: E402

from data import lightgcn  # noqa: E402
from data import movielens  # noqa: E402
from pinsage_tf import atomic  # noqa: E402
from pinsage_tf import graph as graph_lib  # noqa: E402
from pinsage_tf import model as model_lib  # noqa: E402
from pinsage_tf import neighborhoods as nb_lib  # noqa: E402
from pinsage_tf import pipeline  # noqa: E402
from pinsage_tf import training  # noqa: E402


# The measured configuration, spelled out so that a change of the defaults does not move it.
_SETTINGS = ("neighborhoods.num_neighbors=10", "neighborhoods.num_walks=100",
             "pipeline.batch_size=512", "pipeline.num_negatives=500", "model.num_layers=2",
             "model.hidden_dim=256", "model.embedding_dim=128", "train.clip_norm=10.0")


def _graph(name: str, datasets_dir: str) -> graph_lib.Graph:
  if name == "movielens":
    return movielens.load_movielens(os.path.join(datasets_dir, "ml-latest-small"),
                                    movielens.MovieLensConfig())
  if name == "gowalla":
    return lightgcn.load_lightgcn(os.path.join(datasets_dir, "gowalla"),
                                  lightgcn.LightGCNConfig())
  raise ValueError(f"unknown dataset {name!r}")


def bench_dataset(name: str, datasets_dir: str, steps: int, warmup: int) -> dict:
  graph = _graph(name, datasets_dir)
  config = training.resolve_model_config(
      training.ExperimentConfig().with_overrides(_SETTINGS), graph)
  t0 = time.perf_counter()
  nb = nb_lib.compute_neighborhoods(graph, config.neighborhoods)
  nb_time = time.perf_counter() - t0
  tables = pipeline.SamplingTables.build(graph, nb.ids, nb.weights)
  pairs = graph.pairs.of(graph_lib.Split.TRAIN)
  pc = config.pipeline

  # 1. The producer alone.
  ds = pipeline.make_dataset(tables, pairs, pc, repeat=True)
  it = iter(ds)
  for _ in range(warmup):
    next(it)
  t0 = time.perf_counter()
  for _ in range(steps):
    batch = next(it)
  pipe_rate = steps / (time.perf_counter() - t0)
  sizes = [int(x) for x in batch.num_nodes.numpy()]

  # 2. The training step alone, on prebuilt batches.
  strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
  with strategy.scope():
    model = model_lib.PinSageModel(config.model)
    model_lib.build_variables(model)
    optimizer = tf.keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)
  step = training.build_train_step(model, optimizer, strategy, config)
  prebuilt = [next(it) for _ in range(4)]
  for i in range(warmup):
    step(prebuilt[i % 4])
  t0 = time.perf_counter()
  for i in range(steps):
    loss, _ = step(prebuilt[i % 4])
  float(loss)
  train_rate = steps / (time.perf_counter() - t0)

  # 3. End to end: the producer feeding the step.
  t0 = time.perf_counter()
  for _ in range(steps):
    loss, _ = step(next(it))
  float(loss)
  e2e_rate = steps / (time.perf_counter() - t0)
  return {
      "dataset": name,
      "items": graph.num_items,
      "train_pairs": int(pairs[0].shape[0]),
      "neighborhood_table_s": round(nb_time, 2),
      "level_sizes_padded": [int(s) for s in pipeline.MinibatchBuilder(
          tables, pc, pc.batch_size).level_sizes],
      "level_sizes_real_last_batch": sizes,
      "pipeline_batches_per_s": round(pipe_rate, 3),
      "train_steps_per_s": round(train_rate, 3),
      "train_examples_per_s": round(train_rate * pc.batch_size, 1),
      "end_to_end_examples_per_s": round(e2e_rate * pc.batch_size, 1),
      "pipeline_over_training_ratio": round(pipe_rate / train_rate, 2),
      "parameters": int(sum(v.shape.num_elements() for v in model.trainable_variables)),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--datasets_dir", default="../shared/datasets")
  parser.add_argument("--datasets", default="movielens,gowalla")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--output_json", default=None)
  args = parser.parse_args()
  results = {
      "config": {"batch_size": 512, "num_neighbors": 10, "num_layers": 2,
                 "num_negatives": 500, "hidden_dim": 256, "embedding_dim": 128,
                 "steps": args.steps, "cpu_count": os.cpu_count()},
      "results": [bench_dataset(n, args.datasets_dir, args.steps, args.warmup)
                  for n in args.datasets.split(",")],
  }
  print(json.dumps(results, indent=2, sort_keys=True))
  if args.output_json:
    atomic.write_json(args.output_json, results)


if __name__ == "__main__":
  main()
