"""End to end: a model trained with pivot pairs, its pivot embeddings, and
the evaluator's "<name>_pivots" method under the user protocol.

Entry points run as subprocesses (their absl flags would clash in one
process). The tiny LightGCN-format dataset comes from `trainer.testing`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import pinsage_tf  # noqa: F401
from pinsage_tf import embeddings_io
from pinsage_tf import graph as graph_lib
from trainer import testing

_run = testing.run_module


@pytest.fixture(scope="module")
def pivot_run(tmp_path_factory):
  """(graph_dir, embeddings_dir) of a tiny pivot-trained model on LightGCN-format data."""
  root = tmp_path_factory.mktemp("pivots")
  graph_dir, model_dir, out = testing.train_tiny_pivot_model(str(root), validation_queries=20)
  emb_dir = str(root / "e")
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
