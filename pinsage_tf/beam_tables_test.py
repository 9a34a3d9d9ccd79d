"""The Beam hard-negative pipeline equals the local walks and feeds training."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from pinsage_tf import beam_tables
from pinsage_tf import graph as graph_lib
from pinsage_tf import hard_negatives as hn
from pinsage_tf import neighborhoods as nb_lib
from pinsage_tf.hard_negatives_test import _chain_graph
from pinsage_tf.hard_negatives_test import _community_graph


def _saved(graph, tmp_path):
  directory = os.path.join(tmp_path, "graph")
  graph_lib.save_graph(graph, directory)
  return directory


@pytest.mark.parametrize("args", [[], ["--direct_num_workers=2",
                                       "--direct_running_mode=multi_processing"]])
def test_pipeline_table_equals_the_local_walks(tmp_path, args):
  graph = _community_graph(num_items=300, num_pivots=90, num_pairs=600)
  directory = _saved(graph, tmp_path)
  config = hn.HardNegativeConfig(pool_size=8, estimator="walks", num_walks=40, seed=5,
                                 num_iterations=4)
  local = hn.compute_hard_negatives(graph, None, config)
  beam = beam_tables.run_hard_negatives(directory, config, pipeline_args=args, read_size=64,
                                        shard_size=50)
  np.testing.assert_array_equal(beam.queries, local.queries)
  np.testing.assert_array_equal(beam.counts, local.counts)
  np.testing.assert_array_equal(beam.pool, local.pool)
  assert local.counts[local.queries].mean() > 4  # the pools are not trivially empty


def test_isolated_queries_and_exclusions(tmp_path):
  # Item 20.. are isolated: no visits, an empty pool, as locally.
  graph = _chain_graph(pairs=[(0, 5), (6, 0), (9, 10)], extra_items=3)
  directory = _saved(graph, tmp_path)
  config = hn.HardNegativeConfig(window_start=2, window_end=9, pool_size=4,
                                 estimator="walks", num_walks=100)
  queries = [0, 6, 9, 21]
  local = hn.compute_hard_negatives(graph, queries, config)
  beam = beam_tables.run_hard_negatives(directory, config, query_items=queries, read_size=7)
  np.testing.assert_array_equal(beam.pool, local.pool)
  assert beam.counts[21] == 0 and not {0, 5, 6} & set(beam.pool[0])


def test_training_reads_the_pipeline_table(tmp_path):
  graph = _community_graph(num_items=300, num_pivots=90, num_pairs=600)
  directory = _saved(graph, tmp_path)
  config = hn.HardNegativeConfig(pool_size=8, estimator="walks", num_walks=40,
                                 num_iterations=4)
  hn.save_hard_negatives(directory, beam_tables.run_hard_negatives(directory, config))
  calls = []
  # What training.prepare_inputs calls: a stored table of the same config is used as is.
  loaded = hn.load_or_compute_hard_negatives(directory, None, config,
                                             progress=lambda d, t: calls.append(d))
  assert not calls
  np.testing.assert_array_equal(loaded.pool, hn.compute_hard_negatives(graph, None, config).pool)


def test_exact_estimator_is_refused(tmp_path):
  directory = _saved(_chain_graph(pairs=[(0, 5)]), tmp_path)
  with pytest.raises(ValueError, match="walks"):
    beam_tables.run_hard_negatives(directory, dataclasses.replace(
        hn.HardNegativeConfig(), estimator="exact"))


def test_neighborhood_pipeline_equals_the_local_table(tmp_path):
  graph = _community_graph(num_items=300, num_pivots=90, num_pairs=600)
  directory = _saved(graph, tmp_path)
  # 7 chunks (the last one short), so the per-chunk draws are checked across tasks.
  config = nb_lib.NeighborhoodConfig(num_neighbors=5, num_walks=20, chunk_size=45, seed=3)
  local = nb_lib.compute_neighborhoods(graph, config)
  beam = beam_tables.run_neighborhoods(directory, config)
  np.testing.assert_array_equal(beam.ids, local.ids)
  np.testing.assert_array_equal(beam.weights, local.weights)
  np.testing.assert_array_equal(beam.counts, local.counts)
  assert local.counts.mean() > 4
  nb_lib.save_neighborhoods(directory, beam)
  calls = []
  loaded = nb_lib.load_or_compute_neighborhoods(directory, None, config,
                                                progress=lambda d, t: calls.append(d))
  assert not calls  # what training.prepare_inputs calls: the stored table is used as is
  np.testing.assert_array_equal(loaded.ids, local.ids)
