"""Paired cluster bootstrap: exact cases, coverage against theory, clustering, errors."""

from __future__ import annotations

import numpy as np
import pytest

from pinsage_tf import significance as sig


def _hits(rng, p, size):
  return (rng.random(size) < p).astype(np.float64)


def test_identical_methods_have_ratio_one_and_zero_difference():
  rng = np.random.default_rng(0)
  values = {"hit_rate@10": _hits(rng, 0.3, 500)}
  out = sig.compare(values, values, None, sig.BootstrapConfig(resamples=200))
  m = out["metrics"]["hit_rate@10"]
  assert m["ratio"] == {"estimate": 1.0, "low": 1.0, "high": 1.0}
  assert m["difference"] == {"estimate": 0.0, "low": 0.0, "high": 0.0}
  assert m["share_not_better"] == 1.0  # difference <= 0 in every resample
  assert out["clusters"] == 500 and out["queries"] == 500 and out["resamples"] == 200


def test_point_estimates_are_the_plain_means():
  rng = np.random.default_rng(1)
  a, b = _hits(rng, 0.4, 300), _hits(rng, 0.2, 300)
  groups = rng.integers(0, 30, 300)
  m = sig.compare({"h": a}, {"h": b}, groups)["metrics"]["h"]
  assert m["method"] == pytest.approx(a.mean()) and m["reference"] == pytest.approx(b.mean())
  assert m["ratio"]["estimate"] == pytest.approx(a.mean() / b.mean())
  assert m["difference"]["estimate"] == pytest.approx(a.mean() - b.mean())
  assert m["ratio"]["low"] < m["ratio"]["estimate"] < m["ratio"]["high"]


def test_iid_interval_matches_the_normal_approximation():
  # Independent pairs: the 95 % interval of the difference is about
  # +-1.96 * sd(a - b) / sqrt(P) around the estimate.
  rng = np.random.default_rng(2)
  a, b = _hits(rng, 0.5, 4000), _hits(rng, 0.4, 4000)
  d = sig.compare({"h": a}, {"h": b}, None,
                  sig.BootstrapConfig(resamples=4000, seed=3))["metrics"]["h"]["difference"]
  half = 1.96 * np.std(a - b) / np.sqrt(a.size)
  assert (d["high"] - d["low"]) / 2 == pytest.approx(half, rel=0.1)
  assert d["low"] < d["estimate"] < d["high"]


def test_correlated_clusters_widen_the_interval():
  # 40 users x 25 pairs, and a user's pairs all succeed or fail together for
  # the method: the effective sample is 40 users, not 1,000 pairs.
  rng = np.random.default_rng(4)
  users = np.repeat(np.arange(40), 25)
  a = np.repeat(_hits(rng, 0.5, 40), 25)
  b = _hits(rng, 0.5, 1000)
  config = sig.BootstrapConfig(resamples=1000, seed=5)
  by_pair = sig.compare({"h": a}, {"h": b}, None, config)["metrics"]["h"]["difference"]
  by_user = sig.compare({"h": a}, {"h": b}, users, config)["metrics"]["h"]["difference"]
  width_pair = by_pair["high"] - by_pair["low"]
  width_user = by_user["high"] - by_user["low"]
  assert width_user > 3 * width_pair


def test_a_clear_win_and_a_clear_loss():
  rng = np.random.default_rng(6)
  groups = rng.integers(0, 100, 2000)
  strong, weak = _hits(rng, 0.6, 2000), _hits(rng, 0.2, 2000)
  win = sig.compare({"h": strong}, {"h": weak}, groups)["metrics"]["h"]
  loss = sig.compare({"h": weak}, {"h": strong}, groups)["metrics"]["h"]
  assert win["share_not_better"] == 0.0 and win["difference"]["low"] > 0
  assert win["ratio"]["low"] > 1.0
  assert loss["share_not_better"] == 1.0 and loss["difference"]["high"] < 0


def test_resamples_are_seeded_and_shared_across_metrics():
  rng = np.random.default_rng(7)
  a, b = _hits(rng, 0.3, 200), _hits(rng, 0.25, 200)
  groups = rng.integers(0, 20, 200)
  one = sig.compare({"x": a, "y": a}, {"x": b, "y": b}, groups, sig.BootstrapConfig(seed=1))
  two = sig.compare({"x": a}, {"x": b}, groups, sig.BootstrapConfig(seed=1))
  other = sig.compare({"x": a}, {"x": b}, groups, sig.BootstrapConfig(seed=2))
  assert one["metrics"]["x"] == one["metrics"]["y"] == two["metrics"]["x"]
  assert other["metrics"]["x"]["difference"] != two["metrics"]["x"]["difference"]


def test_blocked_resampling_equals_one_block(monkeypatch):
  rng = np.random.default_rng(8)
  a, b = _hits(rng, 0.3, 300), _hits(rng, 0.25, 300)
  groups = rng.integers(0, 50, 300)
  config = sig.BootstrapConfig(resamples=101, seed=9)
  whole = sig.compare({"h": a}, {"h": b}, groups, config)
  monkeypatch.setattr(sig, "_BLOCK_ELEMENTS", 7 * 50)  # 7 resamples per block
  blocked = sig.compare({"h": a}, {"h": b}, groups, config)
  assert blocked == whole


def test_ratio_over_a_zero_reference_is_undefined():
  a = np.array([1.0, 0.0, 1.0, 0.0])
  zero = np.zeros(4)
  m = sig.compare({"h": a}, {"h": zero}, None, sig.BootstrapConfig(resamples=50))["metrics"]["h"]
  assert m["ratio"] == {"estimate": None, "low": None, "high": None}
  assert m["difference"]["estimate"] == pytest.approx(0.5)


def test_bad_inputs():
  a = np.ones(5)
  with pytest.raises(ValueError, match="lacks the metrics"):
    sig.compare({"h": a}, {"g": a}, None)
  with pytest.raises(ValueError, match="expected"):
    sig.compare({"h": a}, {"h": np.ones(4)}, None)
  with pytest.raises(ValueError, match="clusters have shape"):
    sig.compare({"h": a}, {"h": a}, np.zeros(3))
  with pytest.raises(ValueError, match="non-empty"):
    sig.compare({"h": np.ones(0)}, {"h": np.ones(0)}, None)
  with pytest.raises(ValueError, match="no metric"):
    sig.compare({}, {}, None)
  with pytest.raises(ValueError, match="resamples"):
    sig.BootstrapConfig(resamples=1)
  with pytest.raises(ValueError, match="confidence"):
    sig.BootstrapConfig(confidence=1.0)
