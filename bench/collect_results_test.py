"""Tests for bench/collect_results.py: means, sample stds and sources from eval JSONs."""

from __future__ import annotations

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import collect_results  # noqa: E402


def _eval(path, method, recall, ndcg):
  result = {"dataset": "lightgcn", "protocol": "user", "split": "test", "counts": {"users": 3},
            "methods": {method: {"metrics": {"recall@20": recall, "ndcg@20": ndcg}}}}
  path.write_text(json.dumps(result))
  return str(path)


def test_mean_std_and_sources(tmp_path):
  a = _eval(tmp_path / "a.json", "pinsage_pivots", 0.10, 0.05)
  b = _eval(tmp_path / "b.json", "pinsage_pivots", 0.14, 0.07)
  base = _eval(tmp_path / "base.json", "pixie", 0.12, 0.06)
  log = tmp_path / "train.log"
  log.write_text('I1203 noise\n{\n  "steps": 7,\n  "wall_time_s": 12.5\n}\n')
  out = tmp_path / "results" / "r.json"
  collect_results.main([
      "--name=t", f"--seed_json=0:{a}", f"--seed_json=1:{b}", "--method=pinsage_pivots",
      f"--baselines_json={base}", "--command=python -m x", f"--train_summary=0:{log}",
      '--published={"LightGCN": {"recall@20": 0.183}}', f"--output_json={out}"])
  got = json.loads(out.read_text())
  assert got["mean"]["recall@20"] == pytest.approx(0.12)
  # Sample std of (0.10, 0.14): sqrt(2 * 0.02^2 / 1) = 0.028284...
  assert got["std"]["recall@20"] == pytest.approx(0.0282843, abs=1e-6)
  assert got["baselines"] == {"pixie": {"recall@20": 0.12, "ndcg@20": 0.06}}
  assert got["training"]["0"] == {"steps": 7, "wall_time_s": 12.5}
  assert got["sources"] == [a, b, base]
  assert got["published"]["LightGCN"]["recall@20"] == 0.183


def test_missing_method_is_an_error(tmp_path):
  a = _eval(tmp_path / "a.json", "pinsage", 0.1, 0.05)
  with pytest.raises(SystemExit, match="no method 'pinsage_pivots'"):
    collect_results.main(["--name=t", f"--seed_json=0:{a}", "--method=pinsage_pivots",
                          f"--output_json={tmp_path / 'o.json'}"])
