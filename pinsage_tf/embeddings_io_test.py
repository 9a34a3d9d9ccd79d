"""Tests of the embeddings directory format."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from pinsage_tf import embeddings_io as eio
from pinsage_tf.graph import build_graph, graph_fingerprint, save_graph


def _unit(rows, dim=4, seed=0):
  v = np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)
  return v / np.linalg.norm(v, axis=1, keepdims=True)


def _graph(titles=None):
  return build_graph(name="g", item_ids=["a", "b", "c"], pivot_ids=["p"],
                     edge_items=np.array([0, 1, 2]), edge_pivots=np.array([0, 0, 0]),
                     item_titles=titles)


def test_round_trip_and_projector_files(tmp_path):
  graph_dir = tmp_path / "graph"
  save_graph(_graph(), graph_dir)
  fp = graph_fingerprint(graph_dir)
  v = _unit(3)
  out = tmp_path / "emb"
  manifest = eio.save_embeddings(out, v, ["a", "b", "c"], {"graph_fingerprint": fp, "step": 7},
                                 item_titles=["Alpha", "Be\tta", "Gamma\nSequel"])
  assert manifest["count"] == 3 and manifest["dim"] == 4 and manifest["step"] == 7
  loaded = eio.load_embeddings(out, str(graph_dir))
  np.testing.assert_array_equal(loaded.vectors, v)
  assert loaded.item_ids.tolist() == ["a", "b", "c"]
  assert loaded.manifest["graph_fingerprint"] == fp
  proj = out / "projector"
  rows = (proj / "vectors.tsv").read_text().splitlines()
  assert len(rows) == 3
  np.testing.assert_allclose([float(x) for x in rows[1].split("\t")], v[1], rtol=1e-5)
  # Two metadata columns -> header row; tabs/newlines in titles become spaces.
  assert (proj / "metadata.tsv").read_text().splitlines() == [
      "item_id\ttitle", "a\tAlpha", "b\tBe ta", "c\tGamma Sequel"]
  config = (proj / "projector_config.pbtxt").read_text()
  assert 'tensor_path: "vectors.tsv"' in config and 'metadata_path: "metadata.tsv"' in config
  assert (out / "item_ids.txt").read_text() == "a\nb\nc\n"
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporaries left


def test_projector_lines_of_unchanged_rows_are_copied_as_written(tmp_path, monkeypatch):
  before = _unit(50, dim=8, seed=1)
  eio.save_embeddings(tmp_path / "v1", before, [f"i{k}" for k in range(50)])
  after = np.concatenate([before, _unit(3, dim=8, seed=2)])  # 3 new rows
  after[[4, 9]] = _unit(2, dim=8, seed=3)  # 2 changed rows
  ids = [f"i{k}" for k in range(53)]
  eio.save_embeddings(tmp_path / "fresh", after, ids)
  with monkeypatch.context() as patch:
    patch.setattr(np, "savetxt", None)  # the copying path formats rows itself
    eio.save_embeddings(tmp_path / "v2", after, ids, projector_from=tmp_path / "v1")
  tsv = os.path.join(eio.PROJECTOR_DIR, "vectors.tsv")
  with open(tmp_path / "v2" / tsv) as f, open(tmp_path / "fresh" / tsv) as g:
    assert f.read() == g.read()
  # A directory that cannot be read formats every row.
  eio.save_embeddings(tmp_path / "v3", after, ids, projector_from=tmp_path / "missing")
  with open(tmp_path / "v3" / tsv) as f, open(tmp_path / "fresh" / tsv) as g:
    assert f.read() == g.read()


def test_single_column_metadata_has_no_header(tmp_path):
  eio.save_embeddings(tmp_path / "e", _unit(3), ["a", "b", "c"], projector_max_rows=2)
  assert (tmp_path / "e/projector/metadata.tsv").read_text() == "a\nb\n"
  assert len((tmp_path / "e/projector/vectors.tsv").read_text().splitlines()) == 2


def test_save_rejects_bad_inputs(tmp_path):
  with pytest.raises(eio.EmbeddingsFormatError, match="L2 norm"):
    eio.save_embeddings(tmp_path / "x", np.ones((3, 2), np.float32), ["a", "b", "c"])
  with pytest.raises(eio.EmbeddingsFormatError, match="2 item ids for 3"):
    eio.save_embeddings(tmp_path / "x", _unit(3), ["a", "b"])
  with pytest.raises(eio.EmbeddingsFormatError, match="NaN"):
    bad = _unit(3)
    bad[1, 0] = np.nan
    eio.save_embeddings(tmp_path / "x", bad, ["a", "b", "c"])
  with pytest.raises(eio.EmbeddingsFormatError, match="tab/newline"):
    eio.save_embeddings(tmp_path / "x", _unit(3), ["a", "b\n", "c"])
  with pytest.raises(ValueError, match="reserved"):
    eio.save_embeddings(tmp_path / "x", _unit(3), ["a", "b", "c"], {"count": 9})
  assert not (tmp_path / "x").exists()
  eio.save_embeddings(tmp_path / "y", _unit(3), ["a", "b", "c"])
  with pytest.raises(FileExistsError):
    eio.save_embeddings(tmp_path / "y", _unit(3), ["a", "b", "c"])


def test_load_errors_name_the_file(tmp_path):
  out = tmp_path / "emb"
  eio.save_embeddings(out, _unit(3), ["a", "b", "c"], {"graph_fingerprint": "f" * 64})
  graph = _graph()
  # Item ids differ from the graph's.
  other = build_graph(name="g2", item_ids=["a", "c", "b"], pivot_ids=["p"],
                      edge_items=np.array([0]), edge_pivots=np.array([0]))
  with pytest.raises(eio.EmbeddingsFormatError, match=r"item_ids.txt:2: item id 'b'"):
    eio.load_embeddings(out, other)
  # Fingerprint of another graph.
  with pytest.raises(eio.EmbeddingsFormatError, match="different graph"):
    eio.load_embeddings(out, graph, graph_fingerprint="0" * 64)
  assert eio.load_embeddings(out, graph, graph_fingerprint="f" * 64).count == 3
  # Wrong row count for the graph.
  small = tmp_path / "small"
  eio.save_embeddings(small, _unit(2), ["a", "b"])
  with pytest.raises(eio.EmbeddingsFormatError, match="2 rows but graph 'g' has 3 items"):
    eio.load_embeddings(small, graph)
  # Missing / modified files.
  (out / "item_ids.txt").write_text("a\nb\n")
  with pytest.raises(eio.EmbeddingsFormatError, match="item_ids.txt: checksum"):
    eio.load_embeddings(out)
  with pytest.raises(eio.EmbeddingsFormatError, match="item_ids.txt: 2 ids for 3 rows"):
    eio.load_embeddings(out, verify=False)
  os.remove(out / "embeddings.npy")
  with pytest.raises(eio.EmbeddingsFormatError, match="embeddings.npy: missing"):
    eio.load_embeddings(out)
  with pytest.raises(eio.EmbeddingsFormatError, match="manifest.json: missing"):
    eio.load_embeddings(tmp_path / "nowhere")


def test_load_rejects_manifest_shape_mismatch_and_pickles(tmp_path):
  out = tmp_path / "emb"
  eio.save_embeddings(out, _unit(3), ["a", "b", "c"])
  manifest = json.loads((out / "manifest.json").read_text())
  manifest["count"] = 4
  (out / "manifest.json").write_text(json.dumps(manifest))
  with pytest.raises(eio.EmbeddingsFormatError, match=r"shape \(3, 4\) differs.*count=4"):
    eio.load_embeddings(out)
  manifest["count"] = 3
  (out / "manifest.json").write_text(json.dumps(manifest))
  np.save(out / "embeddings.npy", np.array([{"x": 1}] * 3, dtype=object), allow_pickle=True)
  with pytest.raises(eio.EmbeddingsFormatError, match="embeddings.npy"):
    eio.load_embeddings(out, verify=False)


def test_item_bias_round_trip_and_errors(tmp_path):
  v = _unit(3)
  bias = np.array([0.5, -1.0, 0.0], np.float32)
  manifest = eio.save_embeddings(tmp_path / "e", v, ["a", "b", "c"], item_bias=bias)
  assert manifest["item_bias"] is True and eio.ITEM_BIAS_FILE in manifest["files"]
  np.testing.assert_array_equal(eio.load_embeddings(tmp_path / "e").item_bias, bias)
  assert eio.load_embeddings(_saved(tmp_path / "plain", v)).item_bias is None
  with pytest.raises(eio.EmbeddingsFormatError, match=r"shape \[3\]"):
    eio.save_embeddings(tmp_path / "x", v, ["a", "b", "c"], item_bias=bias[:2])
  with pytest.raises(eio.EmbeddingsFormatError, match=r"item_bias\[1\] is NaN"):
    eio.save_embeddings(tmp_path / "x", v, ["a", "b", "c"], item_bias=[0, np.nan, 0])
  assert not (tmp_path / "x").exists()
  np.save(tmp_path / "e" / eio.ITEM_BIAS_FILE, bias * 2)
  with pytest.raises(eio.EmbeddingsFormatError, match="item_bias.npy: checksum"):
    eio.load_embeddings(tmp_path / "e")
  os.remove(tmp_path / "e" / eio.ITEM_BIAS_FILE)
  with pytest.raises(eio.EmbeddingsFormatError, match="item_bias.npy: missing"):
    eio.load_embeddings(tmp_path / "e")


def _saved(path, vectors):
  eio.save_embeddings(path, vectors, ["a", "b", "c"])
  return path


def test_pivot_embeddings_round_trip_and_errors(tmp_path):
  graph = build_graph(name="g", item_ids=["a", "b", "c"], pivot_ids=["p", "q"],
                      edge_items=np.array([0, 1, 2]), edge_pivots=np.array([0, 0, 1]))
  v, pivots = _unit(3), {"graph": _unit(2, seed=1), "graph+validation": _unit(2, seed=2)}
  out = tmp_path / "emb"
  manifest = eio.save_embeddings(out, v, ["a", "b", "c"], pivot_ids=["p", "q"],
                                 pivot_embeddings=pivots)
  assert manifest["pivots"] == {"count": 2, "histories": ["graph", "graph+validation"]}
  loaded = eio.load_embeddings(out, graph)
  assert loaded.pivot_ids.tolist() == ["p", "q"]
  for history, array in pivots.items():
    np.testing.assert_array_equal(loaded.pivot_vectors[history], array)
  # Without pivots the fields stay empty.
  plain = tmp_path / "plain"
  eio.save_embeddings(plain, v, ["a", "b", "c"])
  assert eio.load_embeddings(plain).pivot_ids is None
  assert eio.load_embeddings(plain).pivot_vectors == {}
  with pytest.raises(eio.EmbeddingsFormatError, match="need pivot_ids"):
    eio.save_embeddings(tmp_path / "x", v, ["a", "b", "c"], pivot_embeddings=pivots)
  with pytest.raises(eio.EmbeddingsFormatError, match="not one of"):
    eio.save_embeddings(tmp_path / "x", v, ["a", "b", "c"], pivot_ids=["p", "q"],
                        pivot_embeddings={"later": pivots["graph"]})
  with pytest.raises(eio.EmbeddingsFormatError, match="L2 norm"):
    eio.save_embeddings(tmp_path / "x", v, ["a", "b", "c"], pivot_ids=["p", "q"],
                        pivot_embeddings={"graph": 2 * pivots["graph"]})
  assert not (tmp_path / "x").exists()
  # A corrupt pivot file is named; pivots of another graph are refused.
  path = out / eio.pivot_file("graph")
  arr = np.load(path)
  arr[0, 0] += 0.5
  np.save(path, arr)
  with pytest.raises(eio.EmbeddingsFormatError, match="pivot_embeddings_graph.npy: checksum"):
    eio.load_embeddings(out)
  other = build_graph(name="g", item_ids=["a", "b", "c"], pivot_ids=["p", "r"],
                      edge_items=np.array([0, 1, 2]), edge_pivots=np.array([0, 0, 1]))
  with pytest.raises(eio.EmbeddingsFormatError, match="pivots are not"):
    eio.load_embeddings(out, other, verify=False)


def test_projector_holds_the_first_rows_by_default(tmp_path):
  n = eio.PROJECTOR_ROWS + 5
  angles = np.linspace(0, 6, n, dtype=np.float32)
  vectors = np.stack([np.cos(angles), np.sin(angles)], axis=1)
  manifest = eio.save_embeddings(tmp_path / "e", vectors, [f"i{i}" for i in range(n)])
  assert manifest["count"] == n and manifest["projector"]["rows"] == eio.PROJECTOR_ROWS
  lines = (tmp_path / "e/projector/vectors.tsv").read_text().splitlines()
  assert len(lines) == eio.PROJECTOR_ROWS
  assert (tmp_path / "e/projector/metadata.tsv").read_text().splitlines()[-1] == (
      f"i{eio.PROJECTOR_ROWS - 1}")
  assert len(np.load(tmp_path / "e/embeddings.npy")) == n  # the embeddings stay whole
