"""Storage of tables derived from a graph, next to it, tied to the graph they came from.

A derived table (importance neighborhoods, hard-negative pools, ...) lives in
`<graph_dir>/<kind>/<key>/`: named `.npy` arrays and a `manifest.json` that
records the config, the fingerprint of the graph in `graph_dir` and every
array's shape, dtype and SHA-256. `save` writes it atomically (replacing a
table with the same key as a whole); `load` refuses a table of another graph
or config (`StaleTableError`) or a corrupt one (`DerivedTableError`, naming
the file).
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

from pinsage_tf import atomic
from pinsage_tf import graph as graph_lib

FORMAT = "pinsage_tf.derived_table"
FORMAT_VERSION = 1


class DerivedTableError(ValueError):
  """A derived table on disk is missing, corrupt or malformed."""


class StaleTableError(DerivedTableError):
  """A derived table on disk belongs to another graph or another config."""


def directory(graph_dir: str | os.PathLike, kind: str, key: str) -> str:
  """`<graph_dir>/<kind>/<key>`: where a derived table of a graph lives."""
  return os.path.join(os.fspath(graph_dir), kind, key)


def save(graph_dir: str | os.PathLike, kind: str, key: str, arrays: Mapping[str, np.ndarray],
         config: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> str:
  """Atomically writes arrays + manifest to `<graph_dir>/<kind>/<key>/`.

  The manifest records `config`, the fingerprint of the graph in `graph_dir`,
  each array's shape, dtype and SHA-256, and `extra` (JSON). An existing
  table with the same key is replaced as a whole.

  Returns:
    The table directory.
  """
  dest = directory(graph_dir, kind, key)
  fingerprint = graph_lib.graph_fingerprint(graph_dir)
  with atomic.atomic_directory(dest, overwrite=True) as tmp:
    files = {name: atomic.save_npy(tmp, name, array) for name, array in arrays.items()}
    atomic.write_json(os.path.join(tmp, "manifest.json"), {
        "format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind,
        "key": key, "config": dict(config), "graph_fingerprint": fingerprint,
        "extra": dict(extra or {}), "files": files})
  return dest


def load(graph_dir: str | os.PathLike, kind: str, key: str, config: Mapping[str, Any],
         names: Sequence[str], *, mmap: bool = True, verify: bool = True
         ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Loads a table written by `save` and checks it belongs to this graph and config.

  Args:
    graph_dir: the graph directory.
    kind, key: the table's sub-directory.
    config: the config the caller expects (must equal the stored one).
    names: arrays to load.
    mmap: memory-map the arrays read-only.
    verify: check SHA-256 checksums.

  Returns:
    (arrays by name, manifest).

  Raises:
    FileNotFoundError: no table at that path.
    StaleTableError: the table was computed for another graph or config.
    DerivedTableError: naming the corrupt or malformed file.
  """
  table_dir = directory(graph_dir, kind, key)
  path = os.path.join(table_dir, "manifest.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no {kind} table for key {key!r}.")
  try:
    with open(path) as f:
      manifest = json.load(f)
  except json.JSONDecodeError as e:
    raise DerivedTableError(f"{path}:{e.lineno}: invalid JSON ({e.msg}).") from e
  if (manifest.get("format"), manifest.get("format_version")) != (FORMAT, FORMAT_VERSION):
    raise DerivedTableError(f"{path}: not a {FORMAT} v{FORMAT_VERSION} manifest.")
  if manifest.get("kind") != kind or manifest.get("config") != dict(config):
    raise StaleTableError(f"{path}: table config {manifest.get('config')} differs from the "
                          f"requested {dict(config)}.")
  fingerprint = graph_lib.graph_fingerprint(graph_dir)
  if manifest.get("graph_fingerprint") != fingerprint:
    raise StaleTableError(f"{path}: computed for another graph (fingerprint "
                          f"{str(manifest.get('graph_fingerprint'))[:12]}..., graph has "
                          f"{fingerprint[:12]}...); recompute it.")
  arrays = {}
  for name in names:
    entry = manifest.get("files", {}).get(name)
    if entry is None:
      raise DerivedTableError(f"{path}: no entry for array {name!r}.")
    arrays[name] = atomic.load_npy(table_dir, entry, mmap=mmap, verify=verify,
                                   error=DerivedTableError)
  return arrays, manifest
