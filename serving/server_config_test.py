"""Tests for serving.server_config: version policies, model config files, limits."""

from __future__ import annotations

import os

import pytest

from serving import server_config


def test_version_policy_choose():
  assert server_config.VersionPolicy().choose([1, 3, 2]) == {3}
  assert server_config.VersionPolicy("latest", num_versions=2).choose([1, 3, 2]) == {2, 3}
  assert server_config.VersionPolicy("all").choose([1, 3]) == {1, 3}
  assert server_config.VersionPolicy("specific", versions=(1, 5)).choose([1, 2, 3]) == {1}
  with pytest.raises(ValueError, match="pass 'latest', 'all' or 'specific'"):
    server_config.VersionPolicy("newest")
  with pytest.raises(ValueError, match="at least one version"):
    server_config.VersionPolicy("specific")


def test_model_configs_from_text(tmp_path):
  source = str(tmp_path / "models.config")
  configs = server_config.model_configs_from_text("""
      model_config_list {
        config { name: "a" base_path: "/models/a" model_platform: "tensorflow" }
        config { name: "b" base_path: "rel/b" model_platform: "tensorflow"
                 model_version_policy { all {} } }
        config { name: "c" base_path: "/models/c" model_platform: "tensorflow"
                 model_version_policy { specific { versions: 1 versions: 3 } }
                 version_labels { key: "stable" value: 1 }
                 version_labels { key: "canary" value: 3 } }
        config { name: "d" base_path: "/models/d"
                 model_version_policy { latest { num_versions: 2 } } }
      }""", source)
  assert [c.name for c in configs] == ["a", "b", "c", "d"]
  assert configs[0].version_policy == server_config.VersionPolicy("latest", 1)
  assert configs[1].version_policy.kind == "all"
  assert configs[1].base_path == os.path.abspath("rel/b")  # relative to the cwd, as TF Serving
  assert configs[2].version_policy == server_config.VersionPolicy("specific", versions=(1, 3))
  assert configs[2].version_labels == {"stable": 1, "canary": 3}
  assert configs[3].version_policy.num_versions == 2
  with pytest.raises(ValueError, match="models.config: not a text-format"):
    server_config.model_configs_from_text("model_config_list { config { nme: 1 } }", source)
  with pytest.raises(ValueError, match="only 'tensorflow' is served"):
    server_config.model_configs_from_text(
        'model_config_list { config { name: "a" base_path: "/x" model_platform: "onnx" } }')
  with pytest.raises(ValueError, match=r"model names repeated: \['a'\]"):
    server_config.model_configs_from_text(
        'model_config_list { config { name: "a" base_path: "/x" } '
        'config { name: "a" base_path: "/y" } }')
  with pytest.raises(ValueError, match="has no config entries"):
    server_config.model_configs_from_text("model_config_list {}")


def test_model_config_and_limits_reject_bad_values():
  with pytest.raises(ValueError, match="without '/' or ':'"):
    server_config.ModelConfig("a/b", "/models")
  with pytest.raises(ValueError, match="has no base_path"):
    server_config.ModelConfig("a", "")
  with pytest.raises(ValueError, match="max_concurrent_requests=0; pass >= 1"):
    server_config.ServingLimits(max_concurrent_requests=0)
  with pytest.raises(ValueError, match="max_batch_size=-1"):
    server_config.ServingLimits(max_batch_size=-1)
