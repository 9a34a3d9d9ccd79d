"""Tests of the new-edges reader: every bad input names its file and line."""

from __future__ import annotations

import numpy as np
import pytest

from data import new_edges
from data.errors import InputError
from pinsage_tf import graph as graph_lib


def _graph(dense_dim: int = 1, disjoint: bool = True) -> graph_lib.Graph:
  """Items a, b, c; pivots u, v (or "0", "1" sharing ids with items "0".."2")."""
  items = ["a", "b", "c"] if disjoint else ["0", "1", "2"]
  pivots = ["u", "v"] if disjoint else ["0", "1"]
  return graph_lib.build_graph(
      name="g", item_ids=items, pivot_ids=pivots, edge_items=np.array([0, 1, 1, 2]),
      edge_pivots=np.array([0, 0, 1, 1]),
      dense=np.arange(3 * dense_dim, dtype=np.float32).reshape(3, dense_dim),
      dense_names=[f"f{k}" for k in range(dense_dim)])


def _write(tmp_path, name, text):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


def test_reads_edges_new_items_features_and_skips_known_edges(tmp_path):
  edges = _write(tmp_path, "e.csv", "pivot_id,item_id,timestamp\nu,a,1\nw,d,2\nu,d,3\nw,d,4\n"
                 "v,a,5\n")
  features = _write(tmp_path, "f.csv", "item_id,f0\nd,7.5\n")
  out = new_edges.read_new_edges(edges, _graph(), features)
  # (u, a) is in the graph, the second (w, d) repeats line 3.
  assert out.pivot_ids.tolist() == ["w", "u", "v"]
  assert out.item_ids.tolist() == ["d", "d", "a"]
  assert out.timestamps.tolist() == [2.0, 3.0, 5.0]
  assert out.new_item_ids.tolist() == ["d"] and out.skipped_existing == 2
  np.testing.assert_array_equal(out.new_item_dense, [[7.5]])


@pytest.mark.parametrize("text,where,what", [
    ("pivot_id,item_id,rating\nu,a,1\n", "e.csv:1", "unknown column 'rating'"),
    ("pivot_id,item\nu,a\n", "e.csv:1", "missing column 'item_id'"),
    ("pivot_id,item_id\nu,a\n,b\n", "e.csv:3", "empty pivot_id"),
    ("pivot_id,item_id\nu,a\nv,u\n", "e.csv:3", "item_id 'u' is a pivot id of the graph"),
    ("pivot_id,item_id\nb,c\n", "e.csv:2", "pivot_id 'b' is an item id of the graph"),
    ("pivot_id,item_id\nw,x\nx,c\n", "e.csv:3", "pivot_id 'x' is an item id in this file"),
    ("pivot_id,item_id,timestamp\nu,c,later\n", "e.csv:2", "column 'timestamp'"),
])
def test_bad_edges_name_file_and_line(tmp_path, text, where, what):
  path = _write(tmp_path, "e.csv", text)
  with pytest.raises(InputError) as e:
    new_edges.read_new_edges(path, _graph(dense_dim=0))
  assert str(e.value).startswith(path[:-len("e.csv")] + where + ":"), str(e.value)
  assert what in str(e.value)


def test_shared_id_numbering_is_not_a_clash(tmp_path):
  # LightGCN-style graphs number items and pivots from 0: "1" is both.
  path = _write(tmp_path, "e.csv", "pivot_id,item_id\n1,0\n0,5\n")
  out = new_edges.read_new_edges(path, _graph(dense_dim=0, disjoint=False))
  assert out.new_item_ids.tolist() == ["5"]


def test_new_item_without_features_in_a_featured_graph_is_refused(tmp_path):
  edges = _write(tmp_path, "e.csv", "pivot_id,item_id\nu,a\nv,new\n")
  with pytest.raises(InputError, match=r"e\.csv:3: item_id 'new' is not in the graph.*"
                     "new_item_features_csv"):
    new_edges.read_new_edges(edges, _graph())
  features = _write(tmp_path, "f.csv", "item_id,f0\nother,1\n")
  with pytest.raises(InputError, match=r"f\.csv:2: item_id 'other' has no new edge"):
    new_edges.read_new_edges(edges, _graph(), features)
  features = _write(tmp_path, "f.csv", "item_id,f0\na,1\n")
  with pytest.raises(InputError, match=r"f\.csv:2: item_id 'a' is already in the graph"):
    new_edges.read_new_edges(edges, _graph(), features)
  features = _write(tmp_path, "f.csv", "item_id,f0,f9\nnew,1,2\n")
  with pytest.raises(InputError, match=r"f\.csv:1: unknown column 'f9'"):
    new_edges.read_new_edges(edges, _graph(), features)
  edges2 = _write(tmp_path, "e2.csv", "pivot_id,item_id\nu,new\nv,new2\n")
  features = _write(tmp_path, "f.csv", "item_id,f0\nnew,1\n")
  with pytest.raises(InputError, match=r"e2\.csv:3: item_id 'new2' is new but .*f\.csv has no "
                     "features row"):
    new_edges.read_new_edges(edges2, _graph(), features)
