"""End to end: a model trained with pivot pairs, its pivot embeddings, and
the evaluator's "<name>_pivots" method under the user protocol.

Entry points run as subprocesses (their absl flags would clash in one
process). The tiny LightGCN-format dataset is written here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import pinsage_tf  # noqa: F401
from pinsage_tf import embeddings_io
from pinsage_tf import graph as graph_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)


def _run(args, timeout=600):
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=ENV,
                        capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def pivot_run(tmp_path_factory):
  """(graph_dir, embeddings_dir) of a tiny pivot-trained model on LightGCN-format data."""
  root = tmp_path_factory.mktemp("pivots")
  rng = np.random.default_rng(0)
  raw = root / "raw"
  raw.mkdir()
  with open(raw / "train.txt", "w") as train, open(raw / "test.txt", "w") as test:
    for user in range(60):
      items = rng.choice(80, size=12, replace=False)
      train.write(" ".join(map(str, [user, *sorted(items[:9])])) + "\n")
      test.write(" ".join(map(str, [user, *sorted(items[9:])])) + "\n")
  graph_dir, model_dir, emb_dir = str(root / "g"), str(root / "m"), str(root / "e")
  out = _run(["data.prepare", "--dataset=lightgcn", f"--input_dir={raw}",
              f"--output_dir={graph_dir}", "--val_fraction=0.2"])
  assert out.returncode == 0, out.stderr[-2000:]
  out = _run(["trainer.train", f"--graph_dir={graph_dir}", f"--model_dir={model_dir}",
              "--epochs=1", "--steps_per_epoch=3", "--batch_size=16", "--pivot_batch_size=16",
              "--num_negatives=8", "--num_neighbors=4", "--num_walks=10", "--pivot_neighbors=6",
              "--hidden_dim=16", "--embedding_dim=8", "--item_bias", "--validation_queries=20",
              "--loss=sampled_softmax", "--quiet"])
  assert out.returncode == 0, out.stderr[-2000:]
  summary = json.loads(out.stdout[out.stdout.index("{"):])
  # A user-protocol graph with pivots validates on pivot Recall@20.
  assert summary["validation_metric"] == "recall@20"
  out = _run(["trainer.infer", f"--graph_dir={graph_dir}", f"--model_dir={model_dir}",
              f"--output_dir={emb_dir}"])
  assert out.returncode == 0, out.stderr[-2000:]
  assert "60 pivot embeddings (graph, graph+validation)" in out.stdout
  return graph_dir, emb_dir


def _recall_at_20(scores, graph, users, relevant, masked):
  recalls = []
  for row, user in enumerate(users):
    s = scores[row].astype(np.float64).copy()
    s[masked.row(user)] = -np.inf
    top = np.argsort(-s, kind="stable")[:20]
    rel = relevant.row(user)
    recalls.append(np.isin(rel, top).sum() / len(rel))
  return float(np.mean(recalls))


@pytest.mark.parametrize("split,history", [("validation", "graph"),
                                           ("test", "graph+validation")])
def test_pivot_method_scores_users_by_their_own_embedding(pivot_run, tmp_path, split, history):
  graph_dir, emb_dir = pivot_run
  out_json = str(tmp_path / "eval.json")
  out = _run(["trainer.evaluate", f"--graph_dir={graph_dir}", f"--embeddings_dir={emb_dir}",
              f"--split={split}", f"--output_json={out_json}"])
  assert out.returncode == 0, out.stderr[-2000:]
  with open(out_json) as f:
    result = json.load(f)
  # Both the item aggregate and the pivots are methods by default.
  assert {"pinsage", "pinsage_pivots"} <= set(result["methods"])
  assert history in result["methods"]["pinsage_pivots"]["source"]
  # Recompute Recall@20 from the files: z_u . z_i + b_i, known items masked.
  graph = graph_lib.load_graph(graph_dir)
  emb = embeddings_io.load_embeddings(emb_dir, graph)
  held = graph.heldout.of(graph_lib.Split.VALIDATION if split == "validation"
                          else graph_lib.Split.TEST)
  users = np.flatnonzero(held.degrees() > 0)
  masked = graph.pivot_to_item
  if split == "test":
    from pinsage_tf import retrieval_exact
    masked = retrieval_exact.concat_rows(graph.pivot_to_item, graph.heldout.validation)
  scores = emb.pivot_vectors[history][users] @ emb.vectors.T + emb.item_bias[None, :]
  expected = _recall_at_20(scores, graph, users, held, masked)
  got = result["methods"]["pinsage_pivots"]["metrics"]["recall@20"]
  assert got == pytest.approx(expected, abs=1e-6)


def test_pivot_method_needs_pivot_embeddings(pivot_run, tmp_path):
  graph_dir, emb_dir = pivot_run
  out = _run(["trainer.evaluate", f"--graph_dir={graph_dir}", f"--embeddings_dir={emb_dir}",
              "--protocol=item", "--split=test", "--methods=pinsage_pivots"])
  assert out.returncode != 0
  assert "needs pivot embeddings" in out.stderr
