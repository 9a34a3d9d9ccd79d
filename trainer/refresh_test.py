"""End-to-end: train -> infer -> export -> `python -m trainer.refresh` -> served.

A tiny LightGCN-format pivot model (`trainer.testing.train_tiny_pivot_model`:
80 items, 60 users, item biases) is embedded and exported as version 1, and
served in-process by `serving.model_manager` (as `serving.server` does). The
refresh adds a new item (liked by a new user and by user 0) and a new edge
of an existing item; afterwards:

* the graph and embeddings lineages have a version 2 and their pointers name
  it; version 1 is byte-for-byte unchanged;
* the refreshed embeddings equal a full `trainer.infer` run on the new graph
  version (same model, same tables) within 1e-5;
* after one poll the server answers with export version 2, knows the new
  item and finds it by its own embedding;
* bad input (an unknown column, an empty id, a bad timestamp) exits 2
  naming file:line and publishes nothing;
* a second run starts from the published version 2 and writes version 3.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

import pinsage_tf  # noqa: F401

from pinsage_tf import embeddings_io
from pinsage_tf import export as export_lib
from pinsage_tf import versions_on_disk
from serving import errors as serving_errors
from serving import model_manager
from serving import server_config
from trainer import testing

pytestmark = pytest.mark.slow


def _tree_digest(path: str) -> str:
  digest = hashlib.sha256()
  for root, dirs, files in sorted(os.walk(path)):
    dirs.sort()
    for name in sorted(files):
      full = os.path.join(root, name)
      digest.update(full.encode())
      with open(full, "rb") as f:
        digest.update(f.read())
  return digest.hexdigest()


def _manager(export_base: str) -> model_manager.ModelManager:
  with open(os.path.join(export_base, "models.config")) as f:
    configs = server_config.model_configs_from_text(f.read())
  manager = model_manager.ModelManager(configs)
  manager.poll_once()
  return manager


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("refresh"))
  graph_dir, model_dir, _ = testing.train_tiny_pivot_model(root)
  emb_dir, export_base = os.path.join(root, "emb"), os.path.join(root, "exports")
  out = testing.run_module(["trainer.infer", f"--graph_dir={graph_dir}",
                            f"--model_dir={model_dir}", f"--output_dir={emb_dir}"])
  assert out.returncode == 0, out.stderr[-2000:]
  out = testing.run_module(["trainer.export", f"--graph_dir={graph_dir}",
                            f"--model_dir={model_dir}", f"--embeddings_dir={emb_dir}",
                            f"--export_base={export_base}", "--num_neighbors=5",
                            "--recall_queries=20"])
  assert out.returncode == 0, out.stderr[-2000:]
  manager = _manager(export_base)
  digests = {p: _tree_digest(p) for p in (graph_dir, emb_dir)}
  edges = os.path.join(root, "new_edges.csv")
  with open(edges, "w") as f:
    f.write("pivot_id,item_id,timestamp\nu_new,i_new,10\n0,i_new,11\n1,7,12\n")
  refresh = ["trainer.refresh", f"--graph_dir={graph_dir}", f"--model_dir={model_dir}",
             f"--embeddings_dir={emb_dir}", f"--export_base={export_base}",
             "--num_neighbors=5"]
  out = testing.run_module([*refresh, f"--new_edges_csv={edges}"])
  assert out.returncode == 0, out.stderr[-3000:]
  summary = json.loads(out.stdout[out.stdout.index("{"):])
  return {"root": root, "graph_dir": graph_dir, "model_dir": model_dir, "emb_dir": emb_dir,
          "export_base": export_base, "manager": manager, "digests": digests,
          "summary": summary, "refresh": refresh}


def test_new_versions_are_published_and_old_ones_untouched(setup):
  graph_dir, emb_dir, summary = setup["graph_dir"], setup["emb_dir"], setup["summary"]
  assert summary["graph_dir"] == versions_on_disk.version_path(graph_dir, 2)
  assert versions_on_disk.resolve(graph_dir) == summary["graph_dir"]
  assert versions_on_disk.resolve(emb_dir) == summary["embeddings_dir"]
  assert summary["export_version"] == 2 and summary["new_items"] == 1
  for path, digest in setup["digests"].items():
    assert _tree_digest(path) == digest, f"{path} was modified"
  stats = summary["recomputed"]
  assert stats["graph"]["new_edges"] == 3 and stats["items"]["embedded"] >= 2
  # Version 2 of every model is version 1's graph with new variables and vocabularies.
  for name, entry in summary["export"].items():
    assert entry["graph_reused_from"] == os.path.join(setup["export_base"], name, "1"), name
    assert entry["check_queries"]["drawn_from"] == "all rows"  # the exact scope


def test_refreshed_embeddings_equal_a_full_inference(setup, tmp_path):
  full_dir = str(tmp_path / "full")
  out = testing.run_module(["trainer.infer", f"--graph_dir={setup['summary']['graph_dir']}",
                            f"--model_dir={setup['model_dir']}", f"--output_dir={full_dir}"])
  assert out.returncode == 0, out.stderr[-2000:]
  full = embeddings_io.load_embeddings(full_dir, setup["summary"]["graph_dir"])
  refreshed = embeddings_io.load_embeddings(setup["summary"]["embeddings_dir"],
                                            setup["summary"]["graph_dir"])
  before = embeddings_io.load_embeddings(setup["emb_dir"], setup["graph_dir"])
  np.testing.assert_allclose(refreshed.vectors, full.vectors, atol=1e-5)
  np.testing.assert_allclose(refreshed.item_bias, full.item_bias, atol=1e-5)
  for history, vectors in full.pivot_vectors.items():
    np.testing.assert_allclose(refreshed.pivot_vectors[history], vectors, atol=1e-5)
  same = np.all(refreshed.vectors[:before.count] == before.vectors, axis=1)
  assert same.sum() == before.count - (setup["summary"]["recomputed"]["items"]["embedded"] - 1)


def test_server_swaps_to_the_new_version_and_serves_the_new_item(setup):
  manager = setup["manager"]
  old = manager.get_servable(export_lib.RETRIEVAL_EXACT)
  assert old.version == 1
  with pytest.raises(serving_errors.ServingError):
    manager.predict(old, "related_items", {"item_ids": np.array([b"i_new"])})
  manager.poll_once()
  refreshed = embeddings_io.load_embeddings(setup["summary"]["embeddings_dir"])
  row = int(np.flatnonzero(refreshed.item_ids == "i_new")[0])
  for name in (export_lib.RETRIEVAL_EXACT, export_lib.RETRIEVAL):
    servable = manager.get_servable(name)
    assert servable.version == 2
    out = manager.predict(servable, "related_items_by_embedding",
                          {"embeddings": refreshed.vectors[row:row + 1]})
    assert b"i_new" in out["neighbor_ids"][0].tolist()
    out = manager.predict(servable, "related_items", {"item_ids": np.array([b"i_new"])})
    assert out["neighbor_ids"].shape == (1, 5)
    # The new user is served too; its only item is excluded from its results.
    out = manager.predict(servable, "items_for_pivot", {"pivot_ids": np.array([b"u_new"])})
    assert out["neighbor_ids"].shape == (1, 5) and b"i_new" not in out["neighbor_ids"][0]
  embedder = manager.get_servable(export_lib.EMBEDDER)
  out = manager.predict(embedder, "embed_items", {"item_ids": np.array([b"i_new"])})
  np.testing.assert_allclose(out["embeddings"][0], refreshed.vectors[row], atol=1e-6)
  manager.stop()


@pytest.mark.parametrize("content,message", [
    ("pivot_id,item_id,score\n0,3,1\n", "new.csv:1: unknown column 'score'"),
    ("pivot_id,item_id\n0,3\n,4\n", "new.csv:3: empty pivot_id"),
    ("pivot_id,item_id,timestamp\n0,3,soon\n", "new.csv:2: column 'timestamp'"),
])
def test_bad_input_names_file_and_line_and_publishes_nothing(setup, tmp_path, content,
                                                             message):
  path = tmp_path / "new.csv"
  path.write_text(content)
  listing = sorted(os.listdir(setup["root"]))
  exports = {m: sorted(os.listdir(os.path.join(setup["export_base"], m)))
             for m in export_lib.ALL_MODELS}
  out = testing.run_module([*setup["refresh"], f"--new_edges_csv={path}"])
  assert out.returncode == 2, out.stderr[-2000:]
  assert message in out.stderr
  assert sorted(os.listdir(setup["root"])) == listing
  assert {m: sorted(os.listdir(os.path.join(setup["export_base"], m)))
          for m in export_lib.ALL_MODELS} == exports


def test_a_second_run_builds_on_the_published_version(setup, tmp_path):
  path = tmp_path / "more.csv"
  path.write_text("pivot_id,item_id\nu_new,i_new\nu_new,3\n")  # the first edge is known
  out = testing.run_module([*setup["refresh"], f"--new_edges_csv={path}"])
  assert out.returncode == 0, out.stderr[-3000:]
  summary = json.loads(out.stdout[out.stdout.index("{"):])
  assert summary["graph_dir"] == versions_on_disk.version_path(setup["graph_dir"], 3)
  assert summary["export_version"] == 3 and summary["skipped_existing_edges"] == 1
  assert summary["recomputed"]["graph"]["new_edges"] == 1
  assert versions_on_disk.resolve(setup["emb_dir"]) == summary["embeddings_dir"]
  embeddings = embeddings_io.load_embeddings(summary["embeddings_dir"], summary["graph_dir"])
  assert embeddings.count == 81


def test_a_bounded_run_keeps_rows_outside_its_bound(setup, tmp_path):
  """Runs after the exact runs above: builds version 4 on version 3."""
  before = embeddings_io.load_embeddings(versions_on_disk.resolve(setup["emb_dir"]))
  path = tmp_path / "bounded.csv"
  path.write_text("pivot_id,item_id\n2,5\n3,5\n")
  out = testing.run_module([*setup["refresh"], f"--new_edges_csv={path}",
                            "--refresh_mode=bounded", "--walk_traversals=0", "--embed_hops=0"])
  assert out.returncode == 0, out.stderr[-3000:]
  summary = json.loads(out.stdout[out.stdout.index("{"):])
  assert summary["export_version"] == 4
  stats = summary["recomputed"]
  assert stats["scope"] == {"mode": "bounded", "walk_traversals": 0, "embed_hops": 0}
  # Item 5's pivot list changed: its row alone is walked and embedded again.
  assert stats["items"]["walked"] == stats["items"]["embedded"] == 1
  # So the models are checked on that row, and the ScaNN index is version 3's with it upserted.
  retrieval = summary["export"][export_lib.RETRIEVAL]
  assert retrieval["check_queries"] == {"items": 1, "drawn_from": "fresh rows"}
  assert not retrieval["scann_index"]["trained"]
  assert retrieval["scann_index"]["changed_rows"] == 1
  after = embeddings_io.load_embeddings(summary["embeddings_dir"], summary["graph_dir"])
  row = int(np.flatnonzero(after.item_ids == "5")[0])
  others = np.setdiff1d(np.arange(after.count), [row])
  np.testing.assert_array_equal(after.vectors[others], before.vectors[others])
  assert not np.array_equal(after.vectors[row], before.vectors[row])
  report_path = os.path.join(setup["export_base"], export_lib.EMBEDDER, "4",
                             export_lib.REPORT_FILE)
  with open(report_path) as f:
    checked = json.load(f)["consistency_checked_rows"]
  assert checked["items"] == 1 and checked["of_items"] == after.count


def test_bad_refresh_scope_is_a_usage_error(setup, tmp_path):
  path = tmp_path / "edges.csv"
  path.write_text("pivot_id,item_id\n2,6\n")
  out = testing.run_module([*setup["refresh"], f"--new_edges_csv={path}",
                            "--refresh_mode=bounded", "--embed_hops=-1"])
  assert out.returncode == 2 and "RefreshScope.embed_hops" in out.stderr


def test_export_of_bounded_embeddings_says_how_to_get_a_fresh_one(setup):
  """Runs after the bounded run above: its embeddings are the latest version."""
  graph_dir = versions_on_disk.resolve(setup["graph_dir"])
  emb_dir = versions_on_disk.resolve(setup["emb_dir"])
  out = testing.run_module(["trainer.export", f"--graph_dir={graph_dir}",
                            f"--model_dir={setup['model_dir']}", f"--embeddings_dir={emb_dir}",
                            f"--export_base={setup['root']}/other_exports"])
  assert out.returncode == 2
  assert "bounded trainer.refresh" in out.stderr and "re-run trainer.infer" in out.stderr
