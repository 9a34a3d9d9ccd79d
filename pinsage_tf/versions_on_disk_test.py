"""Tests of the sibling-version layout and its pointer."""

from __future__ import annotations

import os

import pytest

from pinsage_tf import versions_on_disk as v


def test_lineage_resolves_to_the_published_version(tmp_path):
  base = str(tmp_path / "graph")
  os.makedirs(base)
  assert v.resolve(base) == base and v.next_version(base) == 2
  path = v.version_path(base, 2)
  assert path == base + ".v2" and v.version_of(base, path) == 2 and v.version_of(base, base) == 1
  os.makedirs(path)
  assert v.next_version(base) == 3
  assert v.resolve(base) == base  # written but not published yet
  v.publish(base, path)
  assert open(base + ".latest").read() == "graph.v2\n"
  assert v.resolve(base) == path


def test_bad_pointers_and_foreign_paths_are_errors(tmp_path):
  base = str(tmp_path / "emb")
  with pytest.raises(ValueError, match="not a version"):
    v.version_of(base, str(tmp_path / "other.v2"))
  with pytest.raises(ValueError, match="not a version"):
    v.publish(base, str(tmp_path / "other.v2"))
  (tmp_path / "emb.latest").write_text("emb.v7\n")
  with pytest.raises(FileNotFoundError, match="emb.v7"):
    v.resolve(base)
  with pytest.raises(ValueError, match="start at 1"):
    v.version_path(base, 0)
