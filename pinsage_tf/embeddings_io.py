"""The item-embeddings directory: written by inference, read by evaluation/serving.

Layout (format "pinsage_tf.embeddings", version 1):

    embeddings.npy      float32 [N, d], row i = the embedding of graph item i,
                        L2-normalised (every row has norm 1 within 1e-3).
    item_ids.txt        the raw item id of each row, one per line (UTF-8).
    item_bias.npy       optional float32 [N], finite: the model's item biases
                        (`PinSageConfig.item_bias`); item i then scores
                        q . e_i + b_i for a query vector q. Listed under
                        "files" and flagged by "item_bias": true.
    manifest.json       {"format", "format_version", "count": N, "dim": d,
                         "graph_fingerprint": sha256 of the graph (or null),
                         "files": {name: sha256}, "projector": {...}} plus
                         whatever the writer passes in `extra_manifest`
                         (checkpoint, step, config, ...).
    projector/          TensorBoard Embedding Projector files:
      vectors.tsv       one tab-separated row per embedding,
      metadata.tsv      item id (and title, with a header row, when titles are
                        given), one row per embedding,
      projector_config.pbtxt  points at the two files; run
                        `tensorboard --logdir <embeddings_dir>/projector`.

`save_embeddings` validates and writes everything atomically (temporary
sibling directory, then rename). `load_embeddings` validates shapes, dtype,
checksums and norms, never unpickles (allow_pickle=False), and, given a graph,
checks that the rows are the graph's items in order and that the embeddings
were computed on that very graph (fingerprint). Every error names the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

from pinsage_tf import atomic
from pinsage_tf import graph as graph_lib

FORMAT = "pinsage_tf.embeddings"
FORMAT_VERSION = 1
EMBEDDINGS_FILE = "embeddings.npy"
ITEM_IDS_FILE = "item_ids.txt"
ITEM_BIAS_FILE = "item_bias.npy"
MANIFEST = "manifest.json"
PROJECTOR_DIR = "projector"
NORM_TOLERANCE = 1e-3
_CHUNK_ROWS = 65536


class EmbeddingsFormatError(ValueError):
  """An embeddings directory violates the format contract."""


@dataclasses.dataclass(frozen=True)
class Embeddings:
  """Loaded embeddings. `vectors` float32 `[N, d]`, `item_ids` unicode `[N]`,
  `item_bias` float32 `[N]` or None."""

  vectors: np.ndarray
  item_ids: np.ndarray
  manifest: Mapping[str, Any]
  item_bias: np.ndarray | None = None

  @property
  def count(self) -> int:
    return int(self.vectors.shape[0])

  @property
  def dim(self) -> int:
    return int(self.vectors.shape[1])


def _check_norms(vectors: np.ndarray, where: str) -> None:
  for start in range(0, vectors.shape[0], _CHUNK_ROWS):
    chunk = np.asarray(vectors[start:start + _CHUNK_ROWS], dtype=np.float32)
    if not np.all(np.isfinite(chunk)):
      row = start + int(np.nonzero(~np.all(np.isfinite(chunk), axis=1))[0][0])
      raise EmbeddingsFormatError(f"{where}: row {row} contains NaN or Inf.")
    norms = np.linalg.norm(chunk, axis=1)
    bad = np.abs(norms - 1.0) > NORM_TOLERANCE
    if bad.any():
      row = int(np.nonzero(bad)[0][0])
      raise EmbeddingsFormatError(
          f"{where}: row {start + row} has L2 norm {norms[row]:.6f}; embeddings must be "
          "L2-normalised (divide each row by its norm before saving).")


def _tsv_cell(text: str) -> str:
  return " ".join(str(text).replace("\t", " ").splitlines())


def save_embeddings(
    directory: str | os.PathLike,
    embeddings: np.ndarray,
    item_ids: Sequence[str] | np.ndarray,
    extra_manifest: Mapping[str, Any] | None = None,
    *,
    item_titles: Sequence[str] | np.ndarray | None = None,
    overwrite: bool = False,
    projector_max_rows: int | None = None,
    item_bias: np.ndarray | None = None,
) -> dict[str, Any]:
  """Validates and writes an embeddings directory atomically.

  Args:
    directory: destination directory.
    embeddings: float `[N, d]`, L2-normalised rows (row i = graph item i).
    item_ids: `[N]` raw item ids (no tabs or newlines).
    extra_manifest: JSON-serialisable fields merged into the manifest; put the
      graph's `graph_fingerprint(graph_dir)` under "graph_fingerprint" so
      readers can check it.
    item_titles: optional `[N]` display names for the projector metadata.
    overwrite: replace an existing `directory`.
    projector_max_rows: write only the first rows to the projector TSVs (the
      projector handles ~100k points comfortably); None = all.
    item_bias: optional float `[N]` finite item biases.

  Returns:
    The manifest written.

  Raises:
    EmbeddingsFormatError / ValueError: bad inputs (nothing is written).
    FileExistsError: `directory` exists and `overwrite` is False.
  """
  vectors = np.asarray(embeddings)
  if vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.shape[1] == 0:
    raise EmbeddingsFormatError(f"embeddings must be a non-empty [N, d] array, got {vectors.shape}.")
  vectors = np.ascontiguousarray(vectors, dtype=np.float32)
  _check_norms(vectors, "embeddings")
  ids = [str(x) for x in np.asarray(item_ids).tolist()]
  if len(ids) != vectors.shape[0]:
    raise EmbeddingsFormatError(f"got {len(ids)} item ids for {vectors.shape[0]} embedding rows.")
  for i, raw in enumerate(ids):
    if raw == "" or "\n" in raw or "\r" in raw or "\t" in raw:
      raise EmbeddingsFormatError(f"item id of row {i} ({raw!r}) is empty or contains a tab/newline.")
  if len(set(ids)) != len(ids):
    raise EmbeddingsFormatError("item_ids contains duplicates.")
  bias = None
  if item_bias is not None:
    bias = np.ascontiguousarray(np.asarray(item_bias), dtype=np.float32)
    if bias.shape != (vectors.shape[0],):
      raise EmbeddingsFormatError(
          f"item_bias must have shape [{vectors.shape[0]}], got {bias.shape}.")
    if not np.all(np.isfinite(bias)):
      raise EmbeddingsFormatError(
          f"item_bias[{int(np.nonzero(~np.isfinite(bias))[0][0])}] is NaN or Inf.")
  titles = None
  if item_titles is not None:
    titles = [str(t) for t in np.asarray(item_titles).tolist()]
    if len(titles) != len(ids):
      raise EmbeddingsFormatError(f"got {len(titles)} titles for {len(ids)} items.")
  extra = dict(extra_manifest or {})
  reserved = {"format", "format_version", "count", "dim", "files", "projector", "item_bias"}
  clash = reserved & set(extra)
  if clash:
    raise ValueError(f"extra_manifest may not set reserved keys {sorted(clash)}.")
  json.dumps(extra)  # fail before writing anything
  rows = vectors.shape[0] if projector_max_rows is None else min(vectors.shape[0],
                                                                   int(projector_max_rows))

  with atomic.atomic_directory(directory, overwrite=overwrite) as tmp:
    entry = atomic.save_npy(tmp, "embeddings", vectors)
    ids_path = os.path.join(tmp, ITEM_IDS_FILE)
    with open(ids_path, "w", encoding="utf-8", newline="\n") as f:
      for raw in ids:
        f.write(raw + "\n")
    projector = os.path.join(tmp, PROJECTOR_DIR)
    os.makedirs(projector)
    with open(os.path.join(projector, "vectors.tsv"), "w", encoding="utf-8") as f:
      for start in range(0, rows, _CHUNK_ROWS):
        np.savetxt(f, vectors[start:min(rows, start + _CHUNK_ROWS)], fmt="%.6g", delimiter="\t")
    with open(os.path.join(projector, "metadata.tsv"), "w", encoding="utf-8") as f:
      if titles is None:
        # A single-column metadata file must not have a header row.
        f.writelines(raw + "\n" for raw in ids[:rows])
      else:
        f.write("item_id\ttitle\n")
        f.writelines(f"{raw}\t{_tsv_cell(t)}\n" for raw, t in zip(ids[:rows], titles[:rows]))
    with open(os.path.join(projector, "projector_config.pbtxt"), "w", encoding="utf-8") as f:
      f.write('embeddings {\n  tensor_name: "item_embeddings"\n'
              f"  tensor_shape: {rows}\n  tensor_shape: {vectors.shape[1]}\n"
              '  tensor_path: "vectors.tsv"\n  metadata_path: "metadata.tsv"\n}\n')
    manifest = {
        "graph_fingerprint": None,
        **extra,
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "count": int(vectors.shape[0]),
        "dim": int(vectors.shape[1]),
        "files": {EMBEDDINGS_FILE: entry["sha256"], ITEM_IDS_FILE: atomic.sha256_file(ids_path)},
        "projector": {"rows": rows, "has_titles": titles is not None},
    }
    if bias is not None:
      manifest["files"][ITEM_BIAS_FILE] = atomic.save_npy(tmp, "item_bias", bias)["sha256"]
      manifest["item_bias"] = True
    atomic.write_json(os.path.join(tmp, MANIFEST), manifest)
  return manifest


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
  """Reads and checks `directory/manifest.json`."""
  path = os.path.join(os.fspath(directory), MANIFEST)
  if not os.path.isfile(path):
    raise EmbeddingsFormatError(f"{path}: missing; is {directory} an embeddings directory "
                                "written by the inference job?")
  try:
    with open(path, encoding="utf-8") as f:
      manifest = json.load(f)
  except json.JSONDecodeError as e:
    raise EmbeddingsFormatError(f"{path}:{e.lineno}: invalid JSON ({e.msg}).") from e
  if not isinstance(manifest, dict):
    raise EmbeddingsFormatError(f"{path}: must hold a JSON object.")
  if manifest.get("format", FORMAT) != FORMAT:
    raise EmbeddingsFormatError(f"{path}: format {manifest.get('format')!r} is not {FORMAT!r}.")
  if manifest.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
    raise EmbeddingsFormatError(f"{path}: format_version {manifest.get('format_version')} is not "
                                f"supported (this build reads {FORMAT_VERSION}).")
  for key in ("count", "dim"):
    if not isinstance(manifest.get(key), int) or manifest[key] < 1:
      raise EmbeddingsFormatError(f"{path}: field {key!r} must be a positive integer, got "
                                  f"{manifest.get(key)!r}.")
  if "graph_fingerprint" not in manifest:
    raise EmbeddingsFormatError(f"{path}: field 'graph_fingerprint' is required (null if unknown).")
  if not isinstance(manifest.get("item_bias", False), bool):
    raise EmbeddingsFormatError(f"{path}: field 'item_bias' must be true or false, got "
                                f"{manifest['item_bias']!r}.")
  if manifest.get("item_bias") and ITEM_BIAS_FILE not in manifest.get("files", {}):
    raise EmbeddingsFormatError(f"{path}: 'item_bias' is true but 'files' has no {ITEM_BIAS_FILE}.")
  return manifest


def load_embeddings(
    directory: str | os.PathLike,
    graph: graph_lib.Graph | str | os.PathLike | None = None,
    *,
    graph_fingerprint: str | None = None,
    mmap: bool = True,
    verify: bool = True,
) -> Embeddings:
  """Loads and validates an embeddings directory.

  Args:
    directory: written by `save_embeddings`.
    graph: a `Graph` (rows must be its items, in order) or a graph directory
      (additionally checks the fingerprint).
    graph_fingerprint: expected `graph_fingerprint(graph_dir)`; when given (or
      when `graph` is a directory) the manifest must record the same one.
    mmap: memory-map the vectors read-only.
    verify: check the files' SHA-256 and that every row is L2-normalised.

  Raises:
    EmbeddingsFormatError: naming the offending file.
  """
  directory = os.fspath(directory)
  manifest = read_manifest(directory)
  npy = os.path.join(directory, EMBEDDINGS_FILE)
  ids_path = os.path.join(directory, ITEM_IDS_FILE)
  for path in (npy, ids_path):
    if not os.path.isfile(path):
      raise EmbeddingsFormatError(f"{path}: missing (listed in the format of {directory}).")
  files = manifest.get("files", {})
  if verify:
    for name, path in ((EMBEDDINGS_FILE, npy), (ITEM_IDS_FILE, ids_path)):
      if name in files and atomic.sha256_file(path) != files[name]:
        raise EmbeddingsFormatError(f"{path}: checksum mismatch with {MANIFEST} (corrupt or modified).")
  try:
    vectors = np.load(npy, mmap_mode="r" if mmap else None, allow_pickle=False)
  except ValueError as e:
    raise EmbeddingsFormatError(f"{npy}: unreadable .npy ({e}).") from e
  if vectors.ndim != 2 or vectors.dtype != np.float32:
    raise EmbeddingsFormatError(f"{npy}: must be float32 [N, d], got {vectors.dtype} {vectors.shape}.")
  if vectors.shape != (manifest["count"], manifest["dim"]):
    raise EmbeddingsFormatError(
        f"{npy}: shape {vectors.shape} differs from the manifest's count={manifest['count']}, "
        f"dim={manifest['dim']}.")
  with open(ids_path, encoding="utf-8", newline="") as f:
    lines = f.read().split("\n")
  if lines and lines[-1] == "":
    lines.pop()
  if len(lines) != vectors.shape[0]:
    raise EmbeddingsFormatError(f"{ids_path}: {len(lines)} ids for {vectors.shape[0]} rows of {npy}.")
  item_ids = np.asarray(lines, dtype=str)
  if verify:
    _check_norms(vectors, npy)
  bias = _load_bias(directory, manifest, vectors.shape[0], verify) if manifest.get(
      "item_bias") else None

  expected_fp = graph_fingerprint
  if graph is not None and not isinstance(graph, graph_lib.Graph):
    graph_dir = os.fspath(graph)
    if expected_fp is None:
      expected_fp = graph_lib.graph_fingerprint(graph_dir)
    graph = graph_lib.load_graph(graph_dir, verify=False)
  if graph is not None:
    if graph.num_items != vectors.shape[0]:
      raise EmbeddingsFormatError(
          f"{npy}: {vectors.shape[0]} rows but graph {graph.name!r} has {graph.num_items} items; "
          "embeddings must cover every graph item, row i = item i.")
    mismatch = np.nonzero(np.asarray(graph.item_ids) != item_ids)[0]
    if mismatch.size:
      i = int(mismatch[0])
      raise EmbeddingsFormatError(
          f"{ids_path}:{i + 1}: item id {str(item_ids[i])!r} but graph item {i} is "
          f"{str(graph.item_ids[i])!r} ({mismatch.size} rows differ).")
  if expected_fp is not None and manifest["graph_fingerprint"] != expected_fp:
    raise EmbeddingsFormatError(
        f"{os.path.join(directory, MANIFEST)}: graph_fingerprint "
        f"{manifest['graph_fingerprint']!r} does not match the graph's {expected_fp!r}; "
        "these embeddings were computed on a different graph (re-run inference).")
  return Embeddings(vectors=vectors, item_ids=item_ids, manifest=manifest, item_bias=bias)


def _load_bias(directory: str, manifest: Mapping[str, Any], count: int,
               verify: bool) -> np.ndarray:
  path = os.path.join(directory, ITEM_BIAS_FILE)
  if not os.path.isfile(path):
    raise EmbeddingsFormatError(f"{path}: missing (the manifest says item_bias: true).")
  if verify and atomic.sha256_file(path) != manifest["files"][ITEM_BIAS_FILE]:
    raise EmbeddingsFormatError(f"{path}: checksum mismatch with {MANIFEST} (corrupt or modified).")
  try:
    bias = np.load(path, allow_pickle=False)
  except ValueError as e:
    raise EmbeddingsFormatError(f"{path}: unreadable .npy ({e}).") from e
  if bias.dtype != np.float32 or bias.shape != (count,):
    raise EmbeddingsFormatError(f"{path}: must be float32 [{count}], got {bias.dtype} {bias.shape}.")
  if not np.all(np.isfinite(bias)):
    raise EmbeddingsFormatError(f"{path}: entry {int(np.nonzero(~np.isfinite(bias))[0][0])} is "
                                "NaN or Inf.")
  return bias
