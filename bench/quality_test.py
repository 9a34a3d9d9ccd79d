"""End-to-end test of bench/quality.py on a tiny synthetic graph (subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
_TINY = ["--dataset=synthetic", "--seeds=0", "--split=validation", "--baselines=popularity",
         "--threads_per_job=1",
         "--prepare_flag=--num_items=200", "--prepare_flag=--num_boards=60",
         "--prepare_flag=--num_pairs=1500",
         "--train_flag=--set=train.epochs=1", "--train_flag=--set=train.steps_per_epoch=3",
         "--train_flag=--set=pipeline.batch_size=32",
         "--train_flag=--set=pipeline.num_negatives=16",
         "--train_flag=--set=pipeline.max_hard_negatives=0",
         "--train_flag=--set=neighborhoods.num_walks=10",
         "--train_flag=--set=model.hidden_dim=16", "--train_flag=--set=model.embedding_dim=8",
         "--train_flag=--set=train.validation_queries=0"]


def _quality(tmp_path, *extra):
  out = subprocess.run([sys.executable, os.path.join(BENCH, "quality.py"), *_TINY,
                        f"--work_dir={tmp_path / 'work'}", *extra],
                       cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
  return out


def test_train_then_evaluate_only_with_other_eval_flags(tmp_path):
  first_json = tmp_path / "first.json"
  out = _quality(tmp_path, f"--output_json={first_json}")
  assert out.returncode == 0, out.stderr[-3000:]
  first = json.loads(first_json.read_text())
  run = first["methods"]["pinsage"]["per_seed"]["0"]
  assert run["wall"]["train_s"] > 0 and first["commands"]["seed0"]["train"]
  assert "hit_rate@10" in run["metrics"] and "hit_rate@7" not in run["metrics"]
  assert first["eval_flags"] == [] and first["evaluate_only"] is False
  assert first["threads_per_job"] == 1
  weights = tmp_path / "work" / "synthetic" / "seed0" / "model" / "model"
  stamp = {p.name: p.stat().st_mtime_ns for p in weights.iterdir()}

  # Re-evaluate the same model with other evaluation flags, without training.
  second_json = tmp_path / "second.json"
  out = _quality(tmp_path, "--evaluate_only", "--eval_flag=--ks=7,10",
                 "--compare_to=popularity", f"--output_json={second_json}")
  assert out.returncode == 0, out.stderr[-3000:]
  second = json.loads(second_json.read_text())
  run2 = second["methods"]["pinsage"]["per_seed"]["0"]
  assert run2["wall"]["train_s"] is None and second["commands"]["seed0"]["train"] is None
  assert second["eval_flags"] == ["--ks=7,10"] and second["evaluate_only"] is True
  assert "hit_rate@7" in run2["metrics"]
  # --compare_to: each seed against the baseline, resampling the synthetic
  # sessions (the pairs' groups), with intervals around the point estimates.
  assert second["compare_to"] == "popularity" and "comparison" not in run
  comparison = run2["comparison"]
  assert comparison["reference"] == "popularity" and comparison["cluster_by"] == "group"
  assert 1 < comparison["clusters"] < comparison["queries"]
  h10 = comparison["metrics"]["hit_rate@10"]
  assert h10["method"] == pytest.approx(run2["metrics"]["hit_rate@10"])
  assert h10["reference"] == pytest.approx(second["methods"]["popularity"]["metrics"]["hit_rate@10"])
  assert h10["difference"]["low"] <= h10["difference"]["estimate"] <= h10["difference"]["high"]
  assert "--compare_to=popularity" in second["commands"]["seed0"]["evaluate"]
  assert "--ks=7,10" in second["commands"]["seed0"]["evaluate"]
  assert "--ks=7,10" in second["commands"]["evaluate_baselines"]
  # Same model, same graph: the shared metric is unchanged; nothing was retrained.
  assert run2["metrics"]["hit_rate@10"] == pytest.approx(run["metrics"]["hit_rate@10"])
  assert {p.name: p.stat().st_mtime_ns for p in weights.iterdir()} == stamp
  # Each evaluation keeps its own per-seed file.
  seed_dir = weights.parent.parent
  assert (seed_dir / "eval_validation.json").is_file()
  assert (seed_dir / "eval_validation_vs_popularity_ks=7_10.json").is_file()


def test_evaluate_only_needs_trained_models(tmp_path):
  out = _quality(tmp_path, "--evaluate_only")
  assert out.returncode == 2
  assert "--evaluate_only: no trained model at" in out.stderr
  out = _quality(tmp_path, "--compare_to=pinsage")
  assert out.returncode == 2 and "--compare_to must be one of the baselines" in out.stderr
  assert not (tmp_path / "work" / "synthetic" / "seed0").exists()


def test_resume_continues_an_interrupted_run(tmp_path):
  out = _quality(tmp_path, f"--output_json={tmp_path / 'first.json'}")
  assert out.returncode == 0, out.stderr[-3000:]
  checkpoints = tmp_path / "work" / "synthetic" / "seed0" / "model" / "checkpoints"
  assert (checkpoints / "ckpt-3.index").is_file()
  # The same run with one more epoch: training resumes at step 3 (no restart).
  out = _quality(tmp_path, "--resume", "--train_flag=--set=train.epochs=2",
                 f"--output_json={tmp_path / 'resumed.json'}")
  assert out.returncode == 0, out.stderr[-3000:]
  resumed = json.loads((tmp_path / "resumed.json").read_text())
  assert resumed["resumed"] is True
  assert (checkpoints / "ckpt-6.index").is_file() and (checkpoints / "ckpt-3.index").is_file()
  log = (checkpoints.parent.parent / "train.log").read_text()
  assert "Resumed from" in log and "at step 3, epoch 2" in log
