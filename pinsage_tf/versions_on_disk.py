"""Versions of a graph or embeddings directory: immutable siblings and a pointer.

A refresh never changes a directory that readers may have open. Version 1 of
a lineage is the directory itself (`BASE`, e.g. `out/gowalla/graph` as
`data.prepare` wrote it); version v >= 2 is the sibling `BASE.v<v>`, a
complete directory of the same format (every existing reader takes it as
its `--graph_dir` / `--embeddings_dir`). The pointer file `BASE.latest`
holds the directory name of the newest version (one line); it is replaced
atomically after that version is complete, so a reader that follows it sees
either the previous version or the new one, never a partial directory.

    out/gowalla/graph            version 1 (untouched by refreshes)
    out/gowalla/graph.v2         version 2 (written by a refresh)
    out/gowalla/graph.latest     "graph.v2"

`resolve(BASE)` is the newest published version (BASE without a pointer).
"""

from __future__ import annotations

import os
import re

from pinsage_tf import atomic

POINTER_SUFFIX = ".latest"
_VERSION = re.compile(r"\.v(\d+)$")


def pointer_path(base: str | os.PathLike) -> str:
  """`BASE.latest`."""
  return os.path.abspath(os.fspath(base)).rstrip(os.sep) + POINTER_SUFFIX


def version_path(base: str | os.PathLike, version: int) -> str:
  """The directory of `version` (1 = BASE itself)."""
  base = os.path.abspath(os.fspath(base)).rstrip(os.sep)
  if version < 1:
    raise ValueError(f"versions start at 1, got {version}.")
  return base if version == 1 else f"{base}.v{version}"


def version_of(base: str | os.PathLike, path: str | os.PathLike) -> int:
  """The version number of `path` in the lineage of `base`."""
  base = os.path.abspath(os.fspath(base)).rstrip(os.sep)
  path = os.path.abspath(os.fspath(path)).rstrip(os.sep)
  if path == base:
    return 1
  match = _VERSION.search(path)
  if not match or path[:match.start()] != base:
    raise ValueError(f"{path} is not a version of {base} ({base} or {base}.v<N>).")
  return int(match.group(1))


def resolve(base: str | os.PathLike) -> str:
  """The newest published version of `base` (its pointer's target, else `base`).

  Raises:
    FileNotFoundError: the pointer names a directory that does not exist.
  """
  pointer = pointer_path(base)
  if not os.path.isfile(pointer):
    return os.path.abspath(os.fspath(base))
  with open(pointer) as f:
    name = f.read().strip()
  target = os.path.join(os.path.dirname(pointer), name)
  if not name or os.sep in name or not os.path.isdir(target):
    raise FileNotFoundError(f"{pointer} names {name!r}, which is not a directory next to it; "
                            "delete the pointer to fall back to the base directory.")
  version_of(base, target)
  return target


def next_version(base: str | os.PathLike) -> int:
  """1 + the highest version present on disk (published or not)."""
  base = os.path.abspath(os.fspath(base)).rstrip(os.sep)
  parent, name = os.path.dirname(base), os.path.basename(base)
  highest = 1
  for entry in os.listdir(parent) if os.path.isdir(parent) else []:
    if entry.startswith(name + ".v") and entry[len(name) + 2:].isdigit():
      highest = max(highest, int(entry[len(name) + 2:]))
  return highest + 1


def publish(base: str | os.PathLike, path: str | os.PathLike) -> None:
  """Points `BASE.latest` at `path` (a complete version directory), atomically."""
  version_of(base, path)
  with atomic.atomic_file(pointer_path(base)) as f:
    f.write(os.path.basename(os.path.abspath(os.fspath(path)).rstrip(os.sep)) + "\n")
