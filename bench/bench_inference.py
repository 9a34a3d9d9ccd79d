"""Benchmark: layer-wise inference vs naive per-item inference, and the Beam pipeline.

On the Gowalla training graph (`data.lightgcn.load_lightgcn`, default config;
items = venues, pivots = users, no content features), with importance
neighborhoods T=10 (`--num_walks` walks per item, 3 traversals, restart 0.5)
and an UNTRAINED model (hidden 256, embedding 128, 2 layers, id embedding on,
seeded), measures in one run:

* layer-wise inference of ALL items (`inference.layerwise_embeddings`):
  wall time and items/s (each run includes its `tf.function` tracing; the
  best of `--repeats` runs is reported, all runs are listed);
* naive recursive inference on a seeded sample of `--naive_items` items, each
  item computing its own 2-hop computation graph from scratch (the item, its
  T neighbors, their T neighbors; de-duplicated within the item, as the
  training producer does), nothing shared across items:
  - "per_item": one `tf.function` call per item;
  - "batched_tree": `--naive_batch` items per call, each item's tree unrolled
    separately (1 + T + T^2 nodes encoded per item), still nothing shared;
  both must equal the layer-wise embeddings of the sampled items (max abs
  difference reported), and the items/s ratio layer-wise / naive is given;
* the Beam pipeline (`beam_inference.run_layerwise`) on the DirectRunner with
  each `--beam_modes` entry, on the same graph (or its first `--beam_items`
  items' induced subgraph if set, reported), and its max abs difference to the
  local result.

The machine may be shared: the JSON records the load average at start and end.

    python bench/bench_inference.py --datasets_dir=../shared/datasets \
        --output_json=bench/results/inference.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pinsage_tf  # noqa: E402,F401  (before TensorFlow)
import tensorflow as tf  # noqa: E402

from data import lightgcn  # noqa: E402
from pinsage_tf import atomic  # noqa: E402
from pinsage_tf import beam_inference  # noqa: E402
from pinsage_tf import graph as graph_lib  # noqa: E402
from pinsage_tf import inference  # noqa: E402
from pinsage_tf import model as model_lib  # noqa: E402
from pinsage_tf import neighborhoods as nb_lib  # noqa: E402
from pinsage_tf import pipeline  # noqa: E402

# multi_threading with several workers is refused by run_layerwise (it was
# observed to lose elements; see the beam_inference docstring).
BEAM_MODES = {
    "in_memory_1": ["--direct_num_workers=1", "--direct_running_mode=in_memory"],
    "multi_processing_2": ["--direct_num_workers=2", "--direct_running_mode=multi_processing"],
}


def timed(fn):
  wall, cpu = time.perf_counter(), time.process_time()
  out = fn()
  return out, time.perf_counter() - wall, time.process_time() - cpu


def naive_per_item_fn(model, tables: pipeline.SamplingTables):
  """z of ONE item from its own de-duplicated 2-hop computation graph."""
  c = pipeline.table_tensors(tables)
  nbr_ids, nbr_w = c["neighbor_ids"], c["neighbor_weights"]

  @tf.function(input_signature=[tf.TensorSpec([], tf.int32)])
  def embed(item):
    level2 = item[None]  # [1]
    # Own nodes first, so tf.unique keeps them at positions 0..len-1.
    level1, idx1 = tf.unique(tf.concat([level2, tf.reshape(tf.gather(nbr_ids, level2), [-1])], 0))
    level0, idx0 = tf.unique(tf.concat([level1, tf.reshape(tf.gather(nbr_ids, level1), [-1])], 0))
    n1 = tf.shape(level1)[0]
    h0 = model.encode_inputs(pipeline.gather_node_inputs(tables, level0, c), training=False)
    h1 = model.convolve(0, h0[:n1], h0, tf.gather(nbr_w, level1),
                        neighbor_index=tf.reshape(idx0[n1:], [n1, -1]), training=False)
    h2 = model.convolve(1, h1[:1], h1, tf.gather(nbr_w, level2),
                        neighbor_index=tf.reshape(idx1[1:], [1, -1]), training=False)
    return model.head(h2)[0]

  return embed


def naive_batched_tree_fn(model, tables: pipeline.SamplingTables):
  """z of B items, each from its own unrolled tree (1 + T + T^2 nodes), nothing shared."""
  c = pipeline.table_tensors(tables)
  nbr_ids, nbr_w = c["neighbor_ids"], c["neighbor_weights"]
  t = tables.num_neighbors

  @tf.function(input_signature=[tf.TensorSpec([None], tf.int32)])
  def embed(items):
    b = tf.shape(items)[0]
    level1 = tf.concat([items[:, None], tf.gather(nbr_ids, items)], 1)  # [B, 1+T]
    flat1 = tf.reshape(level1, [-1])  # [B(1+T)]
    level0 = tf.concat([flat1[:, None], tf.gather(nbr_ids, flat1)], 1)  # [B(1+T), 1+T]
    h0 = model.encode_inputs(
        pipeline.gather_node_inputs(tables, tf.reshape(level0, [-1]), c), training=False)
    h0 = tf.reshape(h0, [b * (1 + t), 1 + t, -1])
    h1 = model.convolve(0, h0[:, 0], h0[:, 1:], tf.gather(nbr_w, flat1), training=False)
    h1 = tf.reshape(h1, [b, 1 + t, -1])
    h2 = model.convolve(1, h1[:, 0], h1[:, 1:], tf.gather(nbr_w, items), training=False)
    return model.head(h2)

  return embed


def induced_subgraph(graph: graph_lib.Graph, num_items: int) -> graph_lib.Graph:
  """The first `num_items` items with the edges among them (for a smaller Beam run)."""
  i2p = graph.item_to_pivot
  stop = int(i2p.indptr[num_items])
  items = np.repeat(np.arange(num_items), np.diff(i2p.indptr[:num_items + 1]))
  return graph_lib.build_graph(
      name=f"{graph.name}-first{num_items}", item_ids=graph.item_ids[:num_items],
      pivot_ids=graph.pivot_ids, edge_items=items, edge_pivots=np.asarray(i2p.indices[:stop]))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--datasets_dir", default="../shared/datasets")
  parser.add_argument("--output_json", default=None)
  parser.add_argument("--work_dir", default=None,
                      help="keeps the prepared graph, table and model here (reused if present); "
                           "default: a temporary directory, deleted at the end")
  parser.add_argument("--num_walks", type=int, default=100)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--naive_items", type=int, default=2000)
  parser.add_argument("--naive_batch", type=int, default=64)
  parser.add_argument("--beam_modes", default="in_memory_1,multi_processing_2",
                      help=f"comma-separated subset of {sorted(BEAM_MODES)}; empty = skip Beam")
  parser.add_argument("--beam_items", type=int, default=0,
                      help="run Beam on the induced subgraph of the first N items (0 = all)")
  parser.add_argument("--beam_batch_size", type=int, default=256)
  parser.add_argument("--beam_read_shard_size", type=int, default=4096)
  parser.add_argument("--beam_output_shard_size", type=int, default=16384)
  args = parser.parse_args(argv)

  out = {"benchmark": "inference", "dataset": "gowalla (data.lightgcn, default config)",
         "cpu_count": os.cpu_count(),
         "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
  work = args.work_dir or tempfile.mkdtemp(prefix="bench-inference-")
  try:
    graph_dir = os.path.join(work, "graph")
    if os.path.isfile(os.path.join(graph_dir, "manifest.json")):
      graph, prep_s = graph_lib.load_graph(graph_dir), 0.0
    else:
      graph, prep_s, _ = timed(lambda: lightgcn.load_lightgcn(
          os.path.join(args.datasets_dir, "gowalla"), lightgcn.LightGCNConfig()))
      graph_lib.save_graph(graph, graph_dir)
      graph = graph_lib.load_graph(graph_dir)
    nb_config = nb_lib.NeighborhoodConfig(num_neighbors=10, num_walks=args.num_walks)
    nb, nb_s, _ = timed(lambda: nb_lib.load_or_compute_neighborhoods(graph_dir, graph, nb_config))
    n = graph.num_items
    out["graph"] = {"items": n, "pivots": graph.num_pivots, "edges": graph.num_edges,
                    "prepare_s": round(prep_s, 2)}
    out["neighborhoods"] = {"config": nb_config.to_json(), "load_or_compute_s": round(nb_s, 2),
                            "isolated_items": int(np.count_nonzero(nb.counts == 0)),
                            "mean_count": round(float(np.mean(nb.counts)), 2)}
    tables = pipeline.SamplingTables.build(graph, np.asarray(nb.ids), np.asarray(nb.weights))

    tf.keras.utils.set_random_seed(0)
    config = model_lib.PinSageConfig(
        hidden_dim=256, embedding_dim=128, num_layers=2,
        encoder=model_lib.EncoderConfig.from_graph(graph, use_id_embedding=True))
    model = model_lib.PinSageModel(config)
    weights_dir = os.path.join(work, "model")
    model_lib.save_model(model, weights_dir, overwrite=True)
    out["model"] = {"hidden_dim": 256, "embedding_dim": 128, "num_layers": 2,
                    "id_embedding": True, "trained": False,
                    "parameters": int(sum(np.prod(v.shape) for v in model.weights))}

    # Layer-wise, all items.
    walls, cpus, local = [], [], None
    for _ in range(args.repeats):
      local, wall, cpu = timed(lambda: inference.layerwise_embeddings(model, tables))
      walls.append(wall)
      cpus.append(cpu)
    best = int(np.argmin(walls))
    layerwise_ips = n / walls[best]
    out["layerwise"] = {"items": n, "batch_size": 8192, "wall_s": round(walls[best], 3),
                        "wall_s_all": [round(w, 3) for w in walls],
                        "items_per_s": round(layerwise_ips, 1),
                        "cpu_over_wall": round(cpus[best] / walls[best], 2)}

    # Naive recursive inference on a sample.
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(n, min(args.naive_items, n), replace=False)).astype(np.int32)
    per_item = naive_per_item_fn(model, tables)
    per_item(tf.constant(sample[0]))  # trace once, outside the timing
    z, wall, cpu = timed(lambda: np.stack([per_item(tf.constant(i)).numpy() for i in sample]))
    naive = {"sample_items": int(sample.size), "note": (
        "each item's 2-hop computation graph (item, T neighbors, their T neighbors) built "
        "and run from scratch, nothing shared across items; per_item: de-duplicated within "
        "the item, one tf.function call per item; batched_tree: the unrolled tree of "
        "items_per_call items per call; tracing excluded")}
    naive["per_item"] = {"wall_s": round(wall, 3), "items_per_s": round(sample.size / wall, 1),
                         "cpu_over_wall": round(cpu / wall, 2),
                         "max_abs_diff_vs_layerwise": float(np.abs(z - local[sample]).max())}
    tree = naive_batched_tree_fn(model, tables)
    tree(tf.constant(sample[:args.naive_batch]))
    z, wall, cpu = timed(lambda: np.concatenate(
        [tree(tf.constant(sample[s:s + args.naive_batch])).numpy()
         for s in range(0, sample.size, args.naive_batch)]))
    naive["batched_tree"] = {
        "items_per_call": args.naive_batch, "nodes_encoded_per_item": (1 + 10) ** 2,
        "wall_s": round(wall, 3), "items_per_s": round(sample.size / wall, 1),
        "cpu_over_wall": round(cpu / wall, 2),
        "max_abs_diff_vs_layerwise": float(np.abs(z - local[sample]).max())}
    for name in ("per_item", "batched_tree"):
      naive[f"layerwise_speedup_over_{name}"] = round(
          layerwise_ips / naive[name]["items_per_s"], 1)
    out["naive"] = naive

    # Beam DirectRunner.
    modes = [m for m in args.beam_modes.split(",") if m]
    if modes:
      beam_graph_dir, beam_local = graph_dir, local
      beam_out = {"items": n, "subset": False}
      if args.beam_items and args.beam_items < n:
        sub = induced_subgraph(graph, args.beam_items)
        beam_graph_dir = os.path.join(work, f"graph-first{args.beam_items}")
        if not os.path.isdir(beam_graph_dir):
          graph_lib.save_graph(sub, beam_graph_dir)
        sub_nb = nb_lib.load_or_compute_neighborhoods(beam_graph_dir, sub, nb_config)
        sub_model = model_lib.PinSageModel(dataclasses.replace(
            config, encoder=dataclasses.replace(config.encoder, num_items=sub.num_items)))
        model_lib.build_variables(sub_model)
        # Same weights except the id embedding, which is cut to the subset.
        for dst, src in zip(sub_model.weights, model.weights):
          value = src.numpy()
          dst.assign(value[:dst.shape[0]] if dst.shape != src.shape else value)
        weights_dir = os.path.join(work, f"model-first{args.beam_items}")
        model_lib.save_model(sub_model, weights_dir, overwrite=True)
        beam_local = inference.layerwise_embeddings(sub_model, pipeline.SamplingTables.build(
            sub, np.asarray(sub_nb.ids), np.asarray(sub_nb.weights)))
        beam_out = {"items": sub.num_items, "subset": True,
                    "subset_note": f"induced subgraph of the first {args.beam_items} items"}
      beam_config = beam_inference.BeamInferenceConfig(
          graph_dir=beam_graph_dir, weights_dir=weights_dir, neighborhoods=nb_config,
          read_shard_size=args.beam_read_shard_size, batch_size=args.beam_batch_size,
          output_shard_size=args.beam_output_shard_size)
      beam_out["config"] = {"read_shard_size": args.beam_read_shard_size,
                            "batch_size": args.beam_batch_size,
                            "output_shard_size": args.beam_output_shard_size}
      beam_out["runs"] = {}
      for mode in modes:
        z, wall, cpu = timed(lambda mode=mode: beam_inference.run_layerwise(
            beam_config, pipeline_args=BEAM_MODES[mode]))
        beam_out["runs"][mode] = {
            "pipeline_args": BEAM_MODES[mode], "wall_s": round(wall, 2),
            "items_per_s": round(beam_out["items"] / wall, 1),
            "driver_cpu_over_wall": round(cpu / wall, 2),
            "max_abs_diff_vs_local": float(np.abs(z - beam_local).max()),
            "matches_local_within_1e-5": bool(np.abs(z - beam_local).max() <= 1e-5)}
      beam_out["note"] = ("wall time of run_layerwise end to end: driver input checks "
                          "(checksums), pipeline start-up, worker model loading, the per-layer "
                          "shuffles and shard assembly")
      out["beam_direct_runner"] = beam_out
  finally:
    if not args.work_dir:
      shutil.rmtree(work, ignore_errors=True)
  out["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
  print(json.dumps(out, indent=2, sort_keys=True))
  if args.output_json:
    atomic.write_json(args.output_json, out)


if __name__ == "__main__":
  main()
