"""The item-embeddings directory: written by inference, read by evaluation/serving.

Layout (format "pinsage_tf.embeddings", version 1):

    embeddings.npy      float32 [N, d], row i = the embedding of graph item i,
                        L2-normalised (every row has norm 1 within 1e-3).
    item_ids.txt        the raw item id of each row, one per line (UTF-8).
    item_bias.npy       optional float32 [N], finite: the model's item biases
                        (`PinSageConfig.item_bias`); item i then scores
                        q . e_i + b_i for a query vector q. Listed under
                        "files" and flagged by "item_bias": true.
    pivot_ids.txt       optional: the raw pivot id of each pivot row (graph order).
    pivot_embeddings_<history>.npy
                        optional float32 [M, d], L2-normalised: the model's
                        pivot embeddings (`PinSageModel.pivot_hidden`), one
                        file per item history the pivots were embedded from:
                        "graph" (their graph edges) and, for graphs with a
                        validation hold-out, "graph+validation" (their
                        validation items added: what is known at test time).
                        Listed under "files" and "pivots".
    manifest.json       {"format", "format_version", "count": N, "dim": d,
                         "graph_fingerprint": sha256 of the graph (or null),
                         "files": {name: sha256}, "projector": {...}} plus
                         whatever the writer passes in `extra_manifest`
                         (checkpoint, step, config, ...).
    projector/          TensorBoard Embedding Projector files, for the first
                        `PROJECTOR_ROWS` items by default (the projector shows
                        ~100k points comfortably; a million-row text file
                        would cost more to write than the embeddings):
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
PIVOT_IDS_FILE = "pivot_ids.txt"
PIVOT_HISTORIES = ("graph", "graph+validation")
MANIFEST = "manifest.json"
PROJECTOR_DIR = "projector"
NORM_TOLERANCE = 1e-3
PROJECTOR_ROWS = 100_000
_CHUNK_ROWS = 65536
_PROJECTOR_FMT = "%.6g"


class EmbeddingsFormatError(ValueError):
  """An embeddings directory violates the format contract."""


def pivot_file(history: str) -> str:
  """File name of the pivot embeddings embedded from `history`."""
  if history not in PIVOT_HISTORIES:
    raise ValueError(f"pivot history must be one of {PIVOT_HISTORIES}, got {history!r}.")
  return f"pivot_embeddings_{history.replace('+', '_')}.npy"


@dataclasses.dataclass(frozen=True)
class Embeddings:
  """Loaded embeddings. `vectors` float32 `[N, d]`, `item_ids` unicode `[N]`,
  `item_bias` float32 `[N]` or None; `pivot_ids` unicode `[M]` or None and
  `pivot_vectors` {history: float32 `[M, d]`} (empty without pivots)."""

  vectors: np.ndarray
  item_ids: np.ndarray
  manifest: Mapping[str, Any]
  item_bias: np.ndarray | None = None
  pivot_ids: np.ndarray | None = None
  pivot_vectors: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

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


def _previous_projector_lines(directory: str | os.PathLike | None, vectors: np.ndarray
                              ) -> list[str | None] | None:
  """The projector lines of `directory` for the rows of `vectors` equal to its rows (else None).

  Returns None (format everything) without a directory or when its files
  cannot be read or do not match its embeddings.
  """
  if directory is None:
    return None
  try:
    previous = np.load(os.path.join(directory, EMBEDDINGS_FILE), mmap_mode="r",
                       allow_pickle=False)
    with open(os.path.join(directory, PROJECTOR_DIR, "vectors.tsv"), encoding="utf-8") as f:
      lines = f.readlines()
  except (OSError, ValueError):
    return None
  if (previous.ndim != 2 or previous.shape[1] != vectors.shape[1]
      or len(lines) > previous.shape[0]):
    return None
  shared = min(len(lines), vectors.shape[0])
  same = np.all(np.asarray(previous[:shared]) == vectors[:shared], axis=1)
  return [lines[i] if same[i] else None for i in range(shared)]


def save_embeddings(
    directory: str | os.PathLike,
    embeddings: np.ndarray,
    item_ids: Sequence[str] | np.ndarray,
    extra_manifest: Mapping[str, Any] | None = None,
    *,
    item_titles: Sequence[str] | np.ndarray | None = None,
    overwrite: bool = False,
    projector_max_rows: int | None = PROJECTOR_ROWS,
    item_bias: np.ndarray | None = None,
    pivot_ids: Sequence[str] | np.ndarray | None = None,
    pivot_embeddings: Mapping[str, np.ndarray] | None = None,
    projector_from: str | os.PathLike | None = None,
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
    projector_max_rows: write only the first rows to the projector TSVs;
      None = all.
    item_bias: optional float `[N]` finite item biases.
    pivot_ids: `[M]` raw pivot ids, required with `pivot_embeddings`.
    pivot_embeddings: optional {history: float `[M, d]` L2-normalised}, the
      histories among `PIVOT_HISTORIES`.
    projector_from: an embeddings directory this one grew from (a refresh's
      previous version): the projector line of a row whose vector equals
      that directory's row bit for bit is copied instead of formatted again
      (the same text; formatting every row costs ~0.5 s per 40k x 64).

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
  pivots = _check_pivots(pivot_ids, pivot_embeddings, vectors.shape[1])
  titles = None
  if item_titles is not None:
    titles = [str(t) for t in np.asarray(item_titles).tolist()]
    if len(titles) != len(ids):
      raise EmbeddingsFormatError(f"got {len(titles)} titles for {len(ids)} items.")
  extra = dict(extra_manifest or {})
  reserved = {"format", "format_version", "count", "dim", "files", "projector", "item_bias",
              "pivots"}
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
      previous = _previous_projector_lines(projector_from, vectors[:rows])
      if previous is None:
        for start in range(0, rows, _CHUNK_ROWS):
          np.savetxt(f, vectors[start:min(rows, start + _CHUNK_ROWS)], fmt=_PROJECTOR_FMT,
                     delimiter="\t")
      else:
        line = "\t".join([_PROJECTOR_FMT] * vectors.shape[1]) + "\n"  # what savetxt writes
        f.writelines(previous[i] if i < len(previous) and previous[i] is not None
                     else line % tuple(vectors[i].tolist()) for i in range(rows))
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
    if pivots is not None:
      ids_file = os.path.join(tmp, PIVOT_IDS_FILE)
      with open(ids_file, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(raw + "\n" for raw in pivots[0])
      manifest["files"][PIVOT_IDS_FILE] = atomic.sha256_file(ids_file)
      for history, array in pivots[1].items():
        name = pivot_file(history)
        manifest["files"][name] = atomic.save_npy(tmp, name[:-len(".npy")], array)["sha256"]
      manifest["pivots"] = {"count": len(pivots[0]), "histories": sorted(pivots[1])}
    atomic.write_json(os.path.join(tmp, MANIFEST), manifest)
  return manifest


def _check_pivots(pivot_ids, pivot_embeddings, dim: int
                  ) -> tuple[list[str], dict[str, np.ndarray]] | None:
  """Validated (ids, {history: float32 [M, d]}) or None when there are no pivots."""
  if not pivot_embeddings:
    if pivot_ids is not None:
      raise EmbeddingsFormatError("pivot_ids given without pivot_embeddings.")
    return None
  if pivot_ids is None:
    raise EmbeddingsFormatError("pivot_embeddings need pivot_ids.")
  ids = [str(x) for x in np.asarray(pivot_ids).tolist()]
  for i, raw in enumerate(ids):
    if raw == "" or "\n" in raw or "\r" in raw or "\t" in raw:
      raise EmbeddingsFormatError(f"pivot id of row {i} ({raw!r}) is empty or contains a "
                                  "tab/newline.")
  if len(set(ids)) != len(ids):
    raise EmbeddingsFormatError("pivot_ids contains duplicates.")
  out = {}
  for history, array in pivot_embeddings.items():
    if history not in PIVOT_HISTORIES:
      raise EmbeddingsFormatError(f"pivot history {history!r} is not one of {PIVOT_HISTORIES}.")
    array = np.ascontiguousarray(np.asarray(array), dtype=np.float32)
    if array.shape != (len(ids), dim):
      raise EmbeddingsFormatError(f"pivot embeddings {history!r} must have shape "
                                  f"[{len(ids)}, {dim}], got {array.shape}.")
    _check_norms(array, f"pivot embeddings {history!r}")
    out[history] = array
  return ids, out


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
  pivot_ids, pivot_vectors = _load_pivots(directory, manifest, vectors.shape[1], mmap, verify)

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
  if graph is not None and pivot_ids is not None:
    if pivot_ids.shape[0] != graph.num_pivots or np.any(
        pivot_ids != np.asarray(graph.pivot_ids)):
      raise EmbeddingsFormatError(
          f"{os.path.join(directory, PIVOT_IDS_FILE)}: the pivots are not graph "
          f"{graph.name!r}'s pivots in order.")
  return Embeddings(vectors=vectors, item_ids=item_ids, manifest=manifest, item_bias=bias,
                    pivot_ids=pivot_ids, pivot_vectors=pivot_vectors)


def _load_pivots(directory: str, manifest: Mapping[str, Any], dim: int, mmap: bool,
                 verify: bool) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
  pivots = manifest.get("pivots")
  if not pivots:
    return None, {}
  where = os.path.join(directory, MANIFEST)
  if (not isinstance(pivots, dict) or not isinstance(pivots.get("count"), int)
      or not isinstance(pivots.get("histories"), list)):
    raise EmbeddingsFormatError(f"{where}: field 'pivots' must be {{'count': int, "
                                "'histories': [...]}}.")
  files = manifest.get("files", {})

  def checked(name: str) -> str:
    path = os.path.join(directory, name)
    if name not in files or not os.path.isfile(path):
      raise EmbeddingsFormatError(f"{path}: missing (listed under 'pivots' in {MANIFEST}).")
    if verify and atomic.sha256_file(path) != files[name]:
      raise EmbeddingsFormatError(f"{path}: checksum mismatch with {MANIFEST} (corrupt or "
                                  "modified).")
    return path

  with open(checked(PIVOT_IDS_FILE), encoding="utf-8", newline="") as f:
    ids = f.read().split("\n")
  if ids and ids[-1] == "":
    ids.pop()
  if len(ids) != pivots["count"]:
    raise EmbeddingsFormatError(f"{os.path.join(directory, PIVOT_IDS_FILE)}: {len(ids)} ids, "
                                f"the manifest says {pivots['count']}.")
  out = {}
  for history in pivots["histories"]:
    try:
      name = pivot_file(history)
    except ValueError as e:
      raise EmbeddingsFormatError(f"{where}: {e}") from e
    path = checked(name)
    try:
      array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as e:
      raise EmbeddingsFormatError(f"{path}: unreadable .npy ({e}).") from e
    if array.dtype != np.float32 or array.shape != (len(ids), dim):
      raise EmbeddingsFormatError(f"{path}: must be float32 [{len(ids)}, {dim}], got "
                                  f"{array.dtype} {array.shape}.")
    if verify:
      _check_norms(array, path)
    out[history] = array
  return np.asarray(ids, dtype=str), out


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
