"""End-to-end tests of the evaluation CLI on a tiny graph with random embeddings."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pinsage_tf import embeddings_io
from pinsage_tf import evaluation
from pinsage_tf.graph import (CSR, HeldOut, ItemPairs, SparseFeature, build_graph,
                              graph_fingerprint, save_graph)
from trainer import evaluate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_ITEMS, N_PIVOTS = 30, 12


def _graph(with_features=True):
  rng = np.random.default_rng(0)
  ei, ep = rng.integers(0, N_ITEMS, 120), rng.integers(0, N_PIVOTS, 120)
  q, p = rng.integers(0, N_ITEMS, 25), rng.integers(0, N_ITEMS, 25)
  split = np.where(np.arange(25) < 20, 2, 1).astype(np.int8)  # 20 test, 5 validation
  sparse = []
  if with_features:
    genres = CSR.from_pairs(rng.integers(0, N_ITEMS, 50), rng.integers(0, 4, 50), N_ITEMS)
    sparse = [SparseFeature("genres", "categorical", 4, genres, np.array(list("wxyz")))]
  heldout = HeldOut(CSR.from_pairs(rng.integers(0, N_PIVOTS, 6), rng.integers(0, N_ITEMS, 6),
                                   N_PIVOTS),
                    CSR.from_pairs(rng.integers(0, N_PIVOTS, 20), rng.integers(0, N_ITEMS, 20),
                                   N_PIVOTS))
  return build_graph(name="tiny", item_ids=[f"item{i}" for i in range(N_ITEMS)],
                     pivot_ids=[f"user{i}" for i in range(N_PIVOTS)], edge_items=ei,
                     edge_pivots=ep, sparse=sparse,
                     pairs=ItemPairs(q.astype(np.int32), p.astype(np.int32), split),
                     heldout=heldout, item_titles=[f"Title {i}" for i in range(N_ITEMS)])


def _embeddings(path, graph_dir, seed, rows=N_ITEMS):
  v = np.random.default_rng(seed).normal(size=(rows, 8)).astype(np.float32)
  v /= np.linalg.norm(v, axis=1, keepdims=True)
  embeddings_io.save_embeddings(path, v, [f"item{i}" for i in range(rows)],
                                {"graph_fingerprint": graph_fingerprint(graph_dir)})
  return v


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  root = tmp_path_factory.mktemp("eval")
  save_graph(_graph(), root / "graph")
  _embeddings(root / "emb_a", root / "graph", seed=1)
  _embeddings(root / "emb_b", root / "graph", seed=2)
  return root


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "trainer.evaluate", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=120)


def test_cli_end_to_end_item_protocol(workdir):
  out_json, dump = workdir / "results.json", workdir / "topk.jsonl"
  proc = _cli(f"--graph_dir={workdir / 'graph'}", f"--embeddings_dir={workdir / 'emb_a'}",
              f"--embeddings=alt={workdir / 'emb_b'}",
              "--methods=pinsage,alt,popularity,itemknn,pixie,features", "--protocol=item",
              "--split=test", "--ks=1,5,10", "--mrr_scale=3", "--pixie_steps=200",
              f"--output_json={out_json}", f"--dump_topk={dump}")
  assert proc.returncode == 0, proc.stderr
  assert "hit_rate@5" in proc.stdout and "itemknn" in proc.stdout  # the printed table
  result = json.loads(out_json.read_text())
  assert result["dataset"] == "tiny" and result["protocol"] == "item"
  assert result["split"] == "test" and result["config"]["mrr_scale"] == 3
  assert set(result["methods"]) == {"pinsage", "alt", "popularity", "itemknn", "pixie", "features"}
  for r in result["methods"].values():
    assert set(r["metrics"]) >= {"hit_rate@1", "hit_rate@5", "hit_rate@10", "mrr", "scaled_mrr"}
    assert r["wall_time_s"] >= 0 and r["counts"]["pairs"] <= 20
  assert result["methods"]["pinsage"]["source"].endswith("emb_a")
  # The dump holds one parseable line per (method, distinct query).
  lines = [json.loads(line) for line in dump.read_text().splitlines()]
  queries = result["counts"]["queries"]
  assert len(lines) == 6 * queries
  ids = {f"item{i}" for i in range(N_ITEMS)}
  for line in lines:
    assert set(line["topk"]) <= ids and len(line["topk"]) == 10
    assert line["query"] not in line["topk"]
  # Re-scoring the learned method's dump reproduces its hit rates (no ties).
  mine = [line for line in lines if line["method"] == "pinsage"]
  pairs = [(line, pos) for line in mine for pos in line["positives"]]
  for k in (1, 5, 10):
    rescored = np.mean([pos in line["topk"][:k] for line, pos in pairs])
    assert rescored == pytest.approx(result["methods"]["pinsage"]["metrics"][f"hit_rate@{k}"])


def test_run_user_protocol_defaults(workdir):
  config = evaluation.EvalConfig(protocol="user", user_ks=(5, 20))
  result = evaluate.run(graph_dir=str(workdir / "graph"),
                        embeddings={"pinsage": str(workdir / "emb_a")}, methods=None,
                        config=config, output_json=str(workdir / "user.json"))
  assert result["protocol"] == "user"
  # Default methods: every embedding set plus all baselines (the graph has features).
  assert list(result["methods"]) == ["pinsage", "popularity", "itemknn", "linear_filter", "pixie",
                                    "features"]
  assert set(result["methods"]["popularity"]["metrics"]) == {
      "recall@5", "precision@5", "ndcg@5", "recall@20", "precision@20", "ndcg@20"}
  assert result["counts"]["users"] > 0
  assert json.loads((workdir / "user.json").read_text())["methods"].keys() == result["methods"].keys()


def test_default_methods_skip_features_without_features(tmp_path):
  save_graph(_graph(with_features=False), tmp_path / "g")
  result = evaluate.run(graph_dir=str(tmp_path / "g"), embeddings={}, methods=None,
                        config=evaluation.EvalConfig(max_queries=3))
  assert list(result["methods"]) == ["popularity", "itemknn", "linear_filter", "pixie"]
  with pytest.raises(ValueError, match="no usable item features"):
    evaluate.run(graph_dir=str(tmp_path / "g"), embeddings={}, methods=["features"],
                 config=evaluation.EvalConfig())


def test_bad_inputs_fail_clearly(workdir, tmp_path):
  graph_dir = workdir / "graph"
  # Wrong row count.
  _embeddings(tmp_path / "short", graph_dir, seed=3, rows=N_ITEMS - 1)
  with pytest.raises(embeddings_io.EmbeddingsFormatError, match="29 rows but graph 'tiny' has 30"):
    evaluate.run(graph_dir=str(graph_dir), embeddings={"pinsage": str(tmp_path / "short")},
                 methods=["pinsage"], config=evaluation.EvalConfig())
  with pytest.raises(ValueError, match="needs --embeddings_dir"):
    evaluate.run(graph_dir=str(graph_dir), embeddings={}, methods=["pinsage"],
                 config=evaluation.EvalConfig())
  with pytest.raises(ValueError, match="unknown method 'bm25'"):
    evaluate.run(graph_dir=str(graph_dir), embeddings={}, methods=["popularity", "bm25"],
                 config=evaluation.EvalConfig())
  with pytest.raises(ValueError, match="name=DIR"):
    evaluate.parse_embedding_specs(None, ["justapath"])
  with pytest.raises(ValueError, match="clashes with a baseline"):
    evaluate.parse_embedding_specs(None, ["pixie=/x"])
  # Missing embeddings file, through the CLI: exit status 1, the file named.
  broken = tmp_path / "broken"
  _embeddings(broken, graph_dir, seed=4)
  os.remove(broken / "embeddings.npy")
  proc = _cli(f"--graph_dir={graph_dir}", f"--embeddings_dir={broken}", "--methods=pinsage",
              f"--output_json={tmp_path / 'never.json'}")
  assert proc.returncode == 1
  assert f"{broken}/embeddings.npy: missing" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "never.json").exists()


def test_compare_to_reports_paired_intervals(workdir, tmp_path):
  out_json = tmp_path / "cmp.json"
  proc = _cli(f"--graph_dir={workdir / 'graph'}", f"--embeddings_dir={workdir / 'emb_a'}",
              "--methods=pinsage,popularity,itemknn", "--compare_to=itemknn",
              "--bootstrap_resamples=300", "--protocol=item", "--split=test",
              f"--output_json={out_json}")
  assert proc.returncode == 0, proc.stderr
  assert "pinsage vs itemknn" in proc.stdout and "ratio" in proc.stdout
  result = json.loads(out_json.read_text())
  comparison = result["comparison"]
  # The tiny graph records no pair groups: every pair is its own cluster.
  assert comparison["reference"] == "itemknn" and comparison["cluster_by"] == "pair"
  assert set(comparison["methods"]) == {"pinsage", "popularity"}
  c = comparison["methods"]["pinsage"]
  assert c["resamples"] == 300 and c["clusters"] == result["counts"]["pairs"]
  assert result["config"]["compare_to"] == "itemknn"
  assert result["config"]["bootstrap"] == {"resamples": 300, "confidence": 0.95, "seed": 0}
  h = c["metrics"]["hit_rate@10"]
  assert h["method"] == pytest.approx(result["methods"]["pinsage"]["metrics"]["hit_rate@10"])
  assert h["reference"] == pytest.approx(result["methods"]["itemknn"]["metrics"]["hit_rate@10"])
  assert h["difference"]["low"] <= h["difference"]["estimate"] <= h["difference"]["high"]
  assert "per_query" not in result["methods"]["pinsage"]
  # The user protocol resamples users.
  user = evaluate.run(graph_dir=str(workdir / "graph"), embeddings={}, methods=[
      "popularity", "itemknn"], config=evaluation.EvalConfig(protocol="user"),
      compare_to="popularity")
  assert user["comparison"]["cluster_by"] == "user"
  assert user["comparison"]["methods"]["itemknn"]["clusters"] == user["counts"]["users"]
  # The reference must be one of the evaluated methods, with something to compare.
  proc = _cli(f"--graph_dir={workdir / 'graph'}", "--methods=popularity,itemknn",
              "--compare_to=pixie", f"--output_json={tmp_path / 'bad.json'}")
  assert proc.returncode == 1 and "--compare_to=pixie must be one of --methods" in proc.stderr
  assert not (tmp_path / "bad.json").exists()
  with pytest.raises(ValueError, match="at least one other method"):
    evaluate.run(graph_dir=str(workdir / "graph"), embeddings={}, methods=["popularity"],
                 config=evaluation.EvalConfig(), compare_to="popularity")
