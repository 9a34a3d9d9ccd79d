"""Atomic publication of output directories and files, and file checksums.

Contract: every output of the project (graphs, neighborhood tables, checkpoints'
side files, embeddings, exports) is first written into a temporary sibling of
its destination and then moved into place with one ``os.rename``/``os.replace``.
A crash or an exception while writing leaves the destination untouched (either
absent or the previous complete version) and removes the temporary.

``atomic_directory(dest)`` yields a fresh temporary directory; on normal exit it
replaces ``dest`` (an existing ``dest`` is moved aside first and deleted only
after the new one is in place), on an exception it deletes the temporary.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from typing import Any, Iterator

import numpy as np

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
  """Returns the hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while True:
      chunk = f.read(_CHUNK)
      if not chunk:
        break
      digest.update(chunk)
  return digest.hexdigest()


@contextlib.contextmanager
def atomic_directory(dest: str | os.PathLike, overwrite: bool = False) -> Iterator[str]:
  """Yields a temporary directory that becomes `dest` when the block succeeds.

  Args:
    dest: final directory path. Its parent is created if needed.
    overwrite: if False and `dest` exists, raises FileExistsError before
      anything is written. If True an existing `dest` is replaced as a whole.

  Yields:
    The temporary directory to write into (same filesystem as `dest`).
  """
  dest = os.path.abspath(os.fspath(dest))
  parent = os.path.dirname(dest)
  os.makedirs(parent, exist_ok=True)
  if os.path.exists(dest) and not overwrite:
    raise FileExistsError(
        f"{dest} already exists; pass overwrite=True (or --overwrite) to replace it."
    )
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.tmp-", dir=parent)
  try:
    yield tmp
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  old = None
  if os.path.exists(dest):
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.old-", dir=parent)
    os.rmdir(old)
    os.rename(dest, old)
  try:
    os.rename(tmp, dest)
  except BaseException:
    if old is not None:
      os.rename(old, dest)
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(dest: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
  """Opens a temporary file that replaces `dest` when the block succeeds."""
  dest = os.path.abspath(os.fspath(dest))
  os.makedirs(os.path.dirname(dest), exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(dest)}.tmp-",
                             dir=os.path.dirname(dest))
  try:
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, dest)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise


def write_json(dest: str | os.PathLike, obj: Any) -> None:
  """Writes `obj` as indented, key-sorted JSON atomically."""
  with atomic_file(dest, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")


def load_npy(directory: str, entry: dict[str, Any], *, mmap: bool = True, verify: bool = True,
             error: type[Exception] = ValueError) -> np.ndarray:
  """Loads the .npy described by a `save_npy` manifest entry, checked.

  Args:
    directory: where the file lies.
    entry: its manifest entry (file, shape, dtype, sha256).
    mmap: memory-map (read-only) instead of reading into RAM.
    verify: compare the file's SHA-256 with the entry (reads every byte).
    error: the exception type raised, with a message naming the file.
  """
  path = os.path.join(directory, entry["file"])
  if not os.path.isfile(path):
    raise error(f"{path}: listed in the manifest but missing.")
  if verify and sha256_file(path) != entry["sha256"]:
    raise error(f"{path}: checksum mismatch (file is corrupt or was modified).")
  try:
    array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
  except ValueError as e:
    raise error(f"{path}: unreadable .npy ({e}).") from e
  if list(array.shape) != entry["shape"] or array.dtype.str != entry["dtype"]:
    raise error(f"{path}: shape/dtype {array.shape} {array.dtype.str} differ from the "
                f"manifest {entry['shape']} {entry['dtype']}.")
  return array


def save_npy(directory: str, name: str, array: np.ndarray) -> dict[str, Any]:
  """Saves `array` as `directory/name.npy`; returns its manifest entry.

  The entry records shape, dtype and SHA-256 so a reader can verify the file.
  Object arrays are refused: they would need pickle to load.
  """
  array = np.asarray(array)
  if array.dtype == object:
    raise TypeError(f"{name}: object arrays need pickle; convert to a fixed dtype.")
  path = os.path.join(directory, name + ".npy")
  np.save(path, array, allow_pickle=False)
  return {
      "file": name + ".npy",
      "shape": list(array.shape),
      "dtype": array.dtype.str,
      "sha256": sha256_file(path),
  }
