"""Tests of the derived-table storage: layout, round trip, stale and corrupt tables."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from pinsage_tf import derived_tables
from pinsage_tf import graph as graph_lib

_KIND, _KEY = "things", "v1-a"
_CONFIG = {"a": 1, "b": 0.5}


def _saved_graph(tmp_path, name="graph", num_pivots=2):
  # Two items on the first pivot; the pivot count changes the graph's fingerprint.
  graph = graph_lib.build_graph(
      name=name, item_ids=["i0", "i1", "i2"], pivot_ids=[f"p{p}" for p in range(num_pivots)],
      edge_items=np.array([0, 1, 2]), edge_pivots=np.array([0, 0, num_pivots - 1]))
  directory = os.path.join(tmp_path, name)
  graph_lib.save_graph(graph, directory)
  return directory


def _arrays():
  return {"ids": np.arange(6, dtype=np.int32).reshape(3, 2),
          "weights": np.full((3, 2), 0.5, np.float32)}


def _save(directory, **kwargs):
  return derived_tables.save(directory, _KIND, _KEY, kwargs.pop("arrays", _arrays()),
                             kwargs.pop("config", _CONFIG), **kwargs)


def test_round_trip_with_mmap(tmp_path):
  directory = _saved_graph(tmp_path)
  path = _save(directory, extra={"note": "x"})
  assert path == os.path.join(directory, _KIND, _KEY) == derived_tables.directory(
      directory, _KIND, _KEY)
  arrays, manifest = derived_tables.load(directory, _KIND, _KEY, _CONFIG, ("ids", "weights"))
  assert isinstance(arrays["ids"], np.memmap)
  for name, array in _arrays().items():
    np.testing.assert_array_equal(arrays[name], array)
    assert arrays[name].dtype == array.dtype
  assert manifest["format"] == derived_tables.FORMAT
  assert (manifest["kind"], manifest["key"], manifest["config"]) == (_KIND, _KEY, _CONFIG)
  assert manifest["extra"] == {"note": "x"}
  assert manifest["graph_fingerprint"] == graph_lib.graph_fingerprint(directory)
  # The graph's own checksums are unaffected by the sub-directory.
  graph_lib.load_graph(directory)


def test_save_replaces_a_table_as_a_whole(tmp_path):
  directory = _saved_graph(tmp_path)
  _save(directory)
  path = _save(directory, arrays={"ids": np.zeros((3, 2), np.int32)})
  assert not os.path.exists(os.path.join(path, "weights.npy"))
  arrays, _ = derived_tables.load(directory, _KIND, _KEY, _CONFIG, ("ids",))
  np.testing.assert_array_equal(arrays["ids"], 0)


def test_missing_table_is_not_found(tmp_path):
  directory = _saved_graph(tmp_path)
  _save(directory)
  with pytest.raises(FileNotFoundError, match="no things table for key 'v2'"):
    derived_tables.load(directory, _KIND, "v2", _CONFIG, ("ids",))


def test_corrupt_file_is_named(tmp_path):
  directory = _saved_graph(tmp_path)
  path = _save(directory)
  weights = np.load(os.path.join(path, "weights.npy"))
  weights[0, 0] += 1
  np.save(os.path.join(path, "weights.npy"), weights)
  with pytest.raises(derived_tables.DerivedTableError, match="weights.npy: checksum mismatch"):
    derived_tables.load(directory, _KIND, _KEY, _CONFIG, ("ids", "weights"))
  # Without verification the (corrupt) bytes load.
  arrays, _ = derived_tables.load(directory, _KIND, _KEY, _CONFIG, ("weights",), verify=False)
  assert arrays["weights"][0, 0] == 1.5


def test_table_of_another_graph_is_stale(tmp_path):
  directory = _saved_graph(tmp_path)
  other = _saved_graph(tmp_path, name="other", num_pivots=3)
  shutil.copytree(_save(directory), derived_tables.directory(other, _KIND, _KEY))
  with pytest.raises(derived_tables.StaleTableError, match="another graph"):
    derived_tables.load(other, _KIND, _KEY, _CONFIG, ("ids",))


def test_table_of_another_config_is_stale(tmp_path):
  directory = _saved_graph(tmp_path)
  _save(directory)
  with pytest.raises(derived_tables.StaleTableError, match="differs from the requested"):
    derived_tables.load(directory, _KIND, _KEY, {**_CONFIG, "b": 0.25}, ("ids",))
  assert issubclass(derived_tables.StaleTableError, derived_tables.DerivedTableError)


def test_malformed_manifest_is_named(tmp_path):
  directory = _saved_graph(tmp_path)
  manifest = os.path.join(_save(directory), "manifest.json")
  with pytest.raises(derived_tables.DerivedTableError, match="no entry for array 'counts'"):
    derived_tables.load(directory, _KIND, _KEY, _CONFIG, ("ids", "counts"))
  with open(manifest) as f:
    content = json.load(f)
  with open(manifest, "w") as f:
    json.dump({**content, "format_version": 99}, f)
  with pytest.raises(derived_tables.DerivedTableError, match="not a pinsage_tf.derived_table v1"):
    derived_tables.load(directory, _KIND, _KEY, _CONFIG, ("ids",))
  with open(manifest, "w") as f:
    f.write("{\n  broken")
  with pytest.raises(derived_tables.DerivedTableError, match=r"manifest.json:2: invalid JSON"):
    derived_tables.load(directory, _KIND, _KEY, _CONFIG, ("ids",))
