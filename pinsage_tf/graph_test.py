"""Tests of the graph store (pinsage_tf.graph) and atomic writes (pinsage_tf.atomic)."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from pinsage_tf import atomic
from pinsage_tf import graph as graph_lib
from pinsage_tf.graph import CSR, GraphFormatError, Split


def _tiny_graph(**overrides):
  # Items a, b, c; pivots P, Q.  Edges: a-P, b-P, b-Q, c-Q (and a duplicate a-P).
  # item_to_pivot rows: a:[P], b:[P, Q], c:[Q]  -> indptr [0,1,3,4], indices [0,0,1,1]
  # pivot_to_item rows: P:[a, b], Q:[b, c]      -> indptr [0,2,4],   indices [0,1,1,2]
  kwargs = dict(
      name="tiny",
      item_ids=["a", "b", "c"],
      pivot_ids=["P", "Q"],
      edge_items=np.array([0, 1, 1, 2, 0]),
      edge_pivots=np.array([0, 0, 1, 1, 0]),
      dense=np.array([[1, 0], [0, 1], [1, 1]], np.float32),
      dense_names=("x", "y"),
      sparse=[graph_lib.SparseFeature(
          "genre", "categorical", 3,
          CSR.from_pairs(np.array([0, 0, 2]), np.array([2, 0, 1]), 3),
          vocab=np.array(["g0", "g1", "g2"]))],
      pairs=graph_lib.ItemPairs(np.array([0, 1, 2], np.int32), np.array([1, 2, 0], np.int32),
                                np.array([0, 1, 2], np.int8)),
      item_titles=["A", "B", "C"],
      metadata={"source": "hand-made"},
  )
  kwargs.update(overrides)
  return graph_lib.build_graph(**kwargs)


def test_build_graph_csr_both_directions_and_log_degree():
  g = _tiny_graph()
  np.testing.assert_array_equal(g.item_to_pivot.indptr, [0, 1, 3, 4])
  np.testing.assert_array_equal(g.item_to_pivot.indices, [0, 0, 1, 1])
  np.testing.assert_array_equal(g.pivot_to_item.indptr, [0, 2, 4])
  np.testing.assert_array_equal(g.pivot_to_item.indices, [0, 1, 1, 2])
  assert g.num_edges == 4  # the duplicate a-P edge is dropped
  # log1p of item degrees 1, 2, 1.
  np.testing.assert_allclose(g.features.log_degree, np.log1p([1, 2, 1]), rtol=1e-6)
  np.testing.assert_array_equal(g.pivots_of(1), [0, 1])
  np.testing.assert_array_equal(g.items_of(1), [1, 2])
  np.testing.assert_array_equal(g.item_index(["c", "a"]), [2, 0])
  np.testing.assert_array_equal(g.pivot_index(["Q"]), [1])
  with pytest.raises(KeyError, match="zz"):
    g.item_index(["zz"])
  # Sparse rows are sorted: item 0 has genres {0, 2}.
  np.testing.assert_array_equal(g.features.sparse[0].values.row(0), [0, 2])


def test_pairs_by_split_and_summary():
  g = _tiny_graph()
  q, p = g.pairs.of(Split.VALIDATION)
  np.testing.assert_array_equal(q, [1])
  np.testing.assert_array_equal(p, [2])
  s = g.summary()
  assert s["items"] == 3 and s["pivots"] == 2 and s["edges"] == 4
  assert s["pairs"] == {"train": 1, "validation": 1, "test": 1}
  assert s["item_degree"]["max"] == 2


def test_csr_to_padded_and_transpose():
  csr = CSR.from_pairs(np.array([0, 0, 0, 2]), np.array([3, 1, 2, 0]), 3)
  np.testing.assert_array_equal(csr.to_padded(2), [[1, 2], [-1, -1], [0, -1]])
  t = csr.transpose(4)
  np.testing.assert_array_equal(t.indptr, [0, 1, 2, 3, 4])
  np.testing.assert_array_equal(t.indices, [2, 0, 0, 0])


def test_save_load_round_trip_memory_mapped(tmp_path):
  g = _tiny_graph()
  manifest = graph_lib.save_graph(g, tmp_path / "g")
  assert manifest["format_version"] == graph_lib.FORMAT_VERSION
  loaded = graph_lib.load_graph(tmp_path / "g")
  assert isinstance(loaded.item_to_pivot.indices, np.memmap)
  np.testing.assert_array_equal(loaded.item_ids, g.item_ids)
  np.testing.assert_array_equal(loaded.pivot_to_item.indices, g.pivot_to_item.indices)
  np.testing.assert_array_equal(loaded.features.dense, g.features.dense)
  np.testing.assert_array_equal(loaded.features.sparse[0].vocab, ["g0", "g1", "g2"])
  np.testing.assert_array_equal(loaded.pairs.split, g.pairs.split)
  np.testing.assert_array_equal(loaded.item_titles, ["A", "B", "C"])
  assert loaded.metadata == {"source": "hand-made"}
  assert loaded.summary() == g.summary()
  # Nothing but the manifest and .npy files; no temporary left behind.
  assert sorted(os.listdir(tmp_path)) == ["g"]
  assert all(f.endswith(".npy") or f == "manifest.json" for f in os.listdir(tmp_path / "g"))


def test_pair_groups_round_trip_subset_and_validation(tmp_path):
  g = _tiny_graph()
  assert g.pairs.group is None and g.pairs.groups_of(Split.TEST) is None
  graph_lib.save_graph(g, tmp_path / "plain")
  assert "pairs_group" not in graph_lib.read_manifest(tmp_path / "plain")["files"]
  assert graph_lib.load_graph(tmp_path / "plain").pairs.group is None  # older graphs load
  pairs = dataclasses.replace(g.pairs, group=np.array([5, 0, 5], np.int32))
  grouped = dataclasses.replace(g, pairs=pairs)
  graph_lib.save_graph(grouped, tmp_path / "grouped")
  loaded = graph_lib.load_graph(tmp_path / "grouped")
  np.testing.assert_array_equal(loaded.pairs.group, [5, 0, 5])
  np.testing.assert_array_equal(loaded.pairs.groups_of(Split.TEST), [5])
  # The group file is part of the checksummed set (and of the fingerprint).
  assert (graph_lib.graph_fingerprint(tmp_path / "grouped")
          != graph_lib.graph_fingerprint(tmp_path / "plain"))
  sub = pairs.subset(np.array([True, False, True]))
  np.testing.assert_array_equal(sub.query, [0, 2])
  np.testing.assert_array_equal(sub.group, [5, 5])
  assert g.pairs.subset(np.array([2])).group is None
  for bad, message in ((np.array([1, 2], np.int32), "must be int32"),
                       (np.array([1, 2, 3], np.int64), "must be int32"),
                       (np.array([1, -1, 3], np.int32), ">= 0")):
    with pytest.raises(GraphFormatError, match=message):
      dataclasses.replace(g, pairs=dataclasses.replace(g.pairs, group=bad)).validate()


def test_checksum_mismatch_names_the_file(tmp_path):
  graph_lib.save_graph(_tiny_graph(), tmp_path / "g")
  path = tmp_path / "g" / "dense_features.npy"
  raw = bytearray(path.read_bytes())
  raw[-1] ^= 0xFF  # flip bits of the last float
  path.write_bytes(bytes(raw))
  with pytest.raises(GraphFormatError, match="dense_features.npy: checksum mismatch"):
    graph_lib.load_graph(tmp_path / "g")
  graph_lib.load_graph(tmp_path / "g", verify=False)  # explicitly unchecked load still works


def test_missing_file_and_bad_manifest(tmp_path):
  graph_lib.save_graph(_tiny_graph(), tmp_path / "g")
  os.remove(tmp_path / "g" / "log_degree.npy")
  with pytest.raises(GraphFormatError, match="log_degree.npy: listed in the manifest but missing"):
    graph_lib.load_graph(tmp_path / "g")
  with pytest.raises(GraphFormatError, match="no graph manifest"):
    graph_lib.load_graph(tmp_path)
  (tmp_path / "bad").mkdir()
  (tmp_path / "bad" / "manifest.json").write_text('{"format": "pinsage_tf.graph",\n oops}')
  with pytest.raises(GraphFormatError, match=r"manifest.json:2: invalid JSON"):
    graph_lib.load_graph(tmp_path / "bad")
  (tmp_path / "old").mkdir()
  (tmp_path / "old" / "manifest.json").write_text(json.dumps(
      {"format": "pinsage_tf.graph", "format_version": 99}))
  with pytest.raises(GraphFormatError, match="format_version 99 is not supported"):
    graph_lib.load_graph(tmp_path / "old")


def test_invalid_graphs_are_rejected_and_nothing_is_written(tmp_path):
  g = _tiny_graph()
  bad_pairs = graph_lib.ItemPairs(np.array([0], np.int32), np.array([7], np.int32),
                                  np.array([0], np.int8))
  with pytest.raises(GraphFormatError, match="pair item ids"):
    graph_lib.save_graph(dataclasses.replace(g, pairs=bad_pairs), tmp_path / "g")
  assert not os.path.exists(tmp_path / "g")
  assert os.listdir(tmp_path) == []  # no temporary directory left either
  with pytest.raises(GraphFormatError, match="duplicate raw ids"):
    _tiny_graph(item_ids=["a", "a", "c"])
  nan_dense = np.array([[np.nan, 0], [0, 1], [1, 1]], np.float32)
  with pytest.raises(GraphFormatError, match="NaN"):
    _tiny_graph(dense=nan_dense)


def test_atomic_directory_failure_mid_write_keeps_previous_version(tmp_path):
  dest = tmp_path / "out"
  with atomic.atomic_directory(dest) as tmp:
    (open(os.path.join(tmp, "v"), "w")).write("1")
  with pytest.raises(RuntimeError, match="crash"):
    with atomic.atomic_directory(dest, overwrite=True) as tmp:
      (open(os.path.join(tmp, "v"), "w")).write("2-partial")
      raise RuntimeError("simulated crash mid-write")
  assert (dest / "v").read_text() == "1"
  assert sorted(os.listdir(tmp_path)) == ["out"]  # the temporary was removed
  with pytest.raises(FileExistsError, match="overwrite"):
    with atomic.atomic_directory(dest):
      pass


def test_save_graph_failure_mid_write_leaves_nothing(tmp_path, monkeypatch):
  real = atomic.save_npy
  calls = []

  def failing_save(directory, name, array):
    calls.append(name)
    if len(calls) == 5:
      raise OSError("disk full (simulated)")
    return real(directory, name, array)

  monkeypatch.setattr(atomic, "save_npy", failing_save)
  with pytest.raises(OSError, match="disk full"):
    graph_lib.save_graph(_tiny_graph(), tmp_path / "g")
  assert os.listdir(tmp_path) == []


def test_atomic_file_and_fingerprint(tmp_path):
  atomic.write_json(tmp_path / "x.json", {"b": 1, "a": 2})
  assert json.loads((tmp_path / "x.json").read_text()) == {"a": 2, "b": 1}
  with pytest.raises(ValueError):
    with atomic.atomic_file(tmp_path / "x.json") as f:
      f.write("garbage")
      raise ValueError("abort")
  assert json.loads((tmp_path / "x.json").read_text()) == {"a": 2, "b": 1}
  graph_lib.save_graph(_tiny_graph(), tmp_path / "g1")
  graph_lib.save_graph(_tiny_graph(), tmp_path / "g2")
  graph_lib.save_graph(_tiny_graph(metadata={"other": 1},
                                   dense=np.zeros((3, 2), np.float32)), tmp_path / "g3")
  f1, f2, f3 = (graph_lib.graph_fingerprint(tmp_path / n) for n in ("g1", "g2", "g3"))
  assert f1 == f2 and f1 != f3
  with pytest.raises(TypeError, match="pickle"):
    atomic.save_npy(str(tmp_path), "obj", np.array([{}], dtype=object))
