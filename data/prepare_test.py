"""Tests for the data.prepare CLI: flags -> graph on disk, or exit 2 and nothing written.

The CLI runs in a subprocess: absl flags are process-global, and importing
`data.prepare` here would clash with other entry points' flags (e.g. --seed)
imported by other tests in the same pytest process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pinsage_tf import graph as graph_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--num_items=300", "--num_boards=60", "--num_communities=5", "--num_pairs=2000"]


def _run(*argv: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "data.prepare", *argv], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


def _assert_failed(proc: subprocess.CompletedProcess, message: str) -> None:
  assert proc.returncode == 2, proc.stderr
  assert f"error: {message}" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert proc.stdout == ""


def test_synthetic_end_to_end(tmp_path):
  out = tmp_path / "graph"
  proc = _run("--dataset=synthetic", f"--output_dir={out}", "--seed=4", *SMALL)
  assert proc.returncode == 0, proc.stderr
  summary = json.loads(proc.stdout)
  g = graph_lib.load_graph(out)
  assert (g.num_items, g.num_pivots, g.pairs.query.size) == (300, 60, 2000)
  assert g.metadata["config"]["seed"] == 4
  assert summary["items"] == 300 and summary["edges"] == g.num_edges
  assert summary["pairs"] == {"train": g.pairs.count(graph_lib.Split.TRAIN),
                              "validation": g.pairs.count(graph_lib.Split.VALIDATION),
                              "test": g.pairs.count(graph_lib.Split.TEST)}
  assert summary["item_degree"]["max"] == int(g.item_degrees().max())
  assert summary["fingerprint"] == graph_lib.graph_fingerprint(out)
  assert "same_community" in summary["diagnostics"]


def test_existing_output_needs_overwrite(tmp_path):
  out = tmp_path / "graph"
  assert _run(f"--output_dir={out}", *SMALL).returncode == 0
  before = graph_lib.graph_fingerprint(out)
  _assert_failed(_run(f"--output_dir={out}", "--seed=1", *SMALL),
                 f"{out} already exists; pass --overwrite")
  assert graph_lib.graph_fingerprint(out) == before
  assert _run(f"--output_dir={out}", "--seed=1", "--overwrite", *SMALL).returncode == 0
  assert graph_lib.graph_fingerprint(out) != before


def test_bad_csv_input_writes_nothing(tmp_path):
  edges = tmp_path / "edges.csv"
  edges.write_text("pivot_id,item_id,timestamp\nu,a,1\nu,b,later\n")
  out = tmp_path / "graph"
  _assert_failed(_run("--dataset=csv", f"--input_dir={tmp_path}", f"--output_dir={out}"),
                 f"{edges}:3: column 'timestamp': 'later' is not a finite number")
  assert not out.exists()
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".graph")]  # no temporaries


def test_bad_movielens_input_writes_nothing(tmp_path):
  (tmp_path / "movies.csv").write_text("movieId,title,genres\n1,A (1999),Drama\n")
  (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,oops\n")
  out = tmp_path / "graph"
  _assert_failed(_run("--dataset=movielens", f"--input_dir={tmp_path}", f"--output_dir={out}"),
                 f"{tmp_path}/ratings.csv:2: column 'timestamp': 'oops' is not an integer")
  assert not out.exists()


def test_csv_with_features(tmp_path):
  (tmp_path / "log.csv").write_text(
      "pivot_id,item_id,timestamp\n" +
      "".join(f"u{u},i{(u + k) % 7},{10 * k + u}\n" for u in range(6) for k in range(5)))
  (tmp_path / "feat.csv").write_text("item_id,x\ni0,1\ni3,2\n")
  out = tmp_path / "graph"
  proc = _run("--dataset=csv", f"--input_dir={tmp_path}", "--edges_csv=log.csv",
              "--item_features_csv=feat.csv", "--name=mine", f"--output_dir={out}")
  assert proc.returncode == 0, proc.stderr
  g = graph_lib.load_graph(out)
  assert g.name == "mine" and g.features.dense_names == ("x",)
  assert g.features.dense[list(g.item_ids).index("i3"), 0] == 2.0


@pytest.mark.parametrize("argv,message", [
    (["--dataset=movielens", "--val_fraction=0.1"],
     "--val_fraction does not apply to --dataset=movielens"),
    (["--dataset=synthetic", "--input_dir=/x"], "--input_dir does not apply"),
    (["--dataset=lightgcn"], "--dataset=lightgcn needs --input_dir"),
    (["--dataset=movielens", "--input_dir=/nonexistent"],
     "/nonexistent/movies.csv: file not found"),
    (["--dataset=synthetic", "--num_communities=1"], "num_communities must be >= 2"),
])
def test_flag_errors(tmp_path, argv, message):
  out = tmp_path / "graph"
  _assert_failed(_run(*argv, f"--output_dir={out}"), message)
  assert not out.exists()


def test_missing_output_dir():
  _assert_failed(_run("--dataset=synthetic"), "pass --output_dir")
