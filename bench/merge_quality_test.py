"""Tests of bench/merge_quality.py (pure Python, no TensorFlow)."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import merge_quality  # noqa: E402


def _part(seeds, hit, config=None):
  return {
      "dataset": "gowalla", "split": "test", "protocol": "auto", "max_queries": None,
      "config": config or {"train": {"epochs": 5}}, "train_flags": [], "prepare_flags": [],
      "graph_dir": "/g", "config_json": "/c.json", "seeds": seeds, "counts": {"users": 3},
      "commands": {}, "wall_time_s": {},
      "methods": {"pinsage": {"per_seed": {
          str(s): {"metrics": {"recall@20": h}, "wall": {}} for s, h in zip(seeds, hit)}}},
  }


def test_merge_pools_seeds_and_baselines():
  baselines = {"methods": {"pixie": {"metrics": {"recall@20": 0.16}, "wall_time_s": 1.0}}}
  merged = merge_quality.merge([_part([0], [0.10]), _part([1, 2], [0.12, 0.14])], baselines)
  stats = merged["methods"]["pinsage"]["mean_std"]["recall@20"]
  assert merged["seeds"] == [0, 1, 2]
  assert stats["mean"] == pytest.approx(0.12)
  assert stats["std"] == pytest.approx(0.02)  # sample std of 0.10, 0.12, 0.14
  assert merged["methods"]["pixie"]["metrics"]["recall@20"] == 0.16
  assert len(merged["parts"]) == 2


def test_merge_refuses_mismatched_configs_and_repeated_seeds():
  with pytest.raises(ValueError, match="config"):
    merge_quality.merge([_part([0], [0.1]), _part([1], [0.1], config={"train": {"epochs": 4}})])
  evaluated_apart = dict(_part([1], [0.1]), eval_flags=["--user_query=logsumexp"])
  with pytest.raises(ValueError, match="eval_flags"):
    merge_quality.merge([_part([0], [0.1]), evaluated_apart])
  with pytest.raises(ValueError, match="seed 0 appears in two parts"):
    merge_quality.merge([_part([0], [0.1]), _part([0], [0.1])])
