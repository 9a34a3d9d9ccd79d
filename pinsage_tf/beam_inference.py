r"""Layer-wise embedding inference as an Apache Beam pipeline (MapReduce style).

The paper (Ying et al., KDD'18, section 3.3) embeds billions of items with a
MapReduce job that never recomputes a node: layer 1 for ALL items from their
neighbors' input representations, then layer 2 from the layer-1 results, ...,
then the dense head. `pinsage_tf.inference` does this in one process; this
module runs the same computation as a Beam pipeline, so it runs on the
DirectRunner here and on Flink, Spark or Dataflow with standard pipeline
options.

Pipeline (K = `num_layers`, T = neighbors per item, d = hidden width):

    item ranges [start, stop)  (beam.Create, which reshuffles: one read task each)
      -> Read: features of the range (graph arrays, memory-mapped) and its rows
         of the cached neighborhood table; the encoder gives h^0 and conv 0's
         neighbor transform t^0 = ReLU(Q h^0 + q), and every valid slot
         (u, s, v, alpha) becomes a message keyed by the NEIGHBOR:
             H0  = (u, (c_u, h^0_u))              one per item; c_u = its valid slots
             T0  = (u, t^0_u)                     one per item
             MSG = (v, (u, s, alpha_us))          one per valid slot (weight > 0)
      -> for k = 0 .. K-1 (layer k+1):
           Send:    CoGroupByKey({t: T_k, m: MSG}) by neighbor v, then each
                    message (u, s, alpha) gets t^k_v:  (u, (s, alpha, t^k_v))
           Regroup: CoGroupByKey({h: H_k, n: sent}) by item u
                    -> (u, (c_u, h^k_u), [(s, alpha, t^k_v), ...]); the reducer
                    fails unless exactly c_u messages on c_u distinct slots arrived
           Reduce:  beam.BatchElements, then one model call per batch:
                    conv_k.combine(h^k, conv_k.pool([U, T, d'] slots, [U, T]))
                    = h^{k+1}; for k+1 < K also t^{k+1} = conv_{k+1}'s neighbor
                    transform (H_{k+1}, T_{k+1}); for k+1 = K the head instead
                    (the final, L2-normalised embeddings; with item biases
                    `head_and_bias`, the bias b_u appended as a last column)
      -> Write: keyed by item // output_shard_size, GroupByKey, one
         `part-<start>-<stop>.npy` float32 `[stop - start, E]` per shard,
         written to a temporary name and renamed (idempotent under retries).

Pivots (users, boards; `PinSageModel.pivot_hidden`) are embedded in the same
pipeline from the items' h^{K-1} and t^{K-1} (the last layer's inputs, already
computed above) and a pivot neighborhood table per *history* (e.g. "graph",
"graph+validation"): pivot row p -> [(item v, alpha_pv)], Tp slots. The
driver stages each table as `.npy` (`pivots/<history>/ids.npy`,
`weights.npy` under the output directory) and, per history:

    pivot ranges [start, stop)  (beam.Create)
      -> ReadPivots: the rows of the staged table (only those bytes are read):
             C   = (p, c_p)                       one per pivot; c_p = its valid slots
             MSG = (v, (p, s, alpha_ps))          one per valid slot (weight > 0)
      -> Send:    CoGroupByKey({h: H_{K-1}, t: T_{K-1}, m: MSG}) by item v
                  -> (p, (s, alpha, h^{K-1}_v, t^{K-1}_v)) per message
      -> Regroup: CoGroupByKey({c: C, n: sent}) by pivot p; the reducer fails
                  unless exactly c_p messages on c_p distinct slots arrived
      -> Embed:   beam.BatchElements, then one model call per batch:
                  head(pivot_hidden(rows, index, alpha, transformed=t rows)),
                  the gathered neighbor rows stacked as the h table
      -> Write:   `pivots/<history>/part-<start>-<stop>.npy` `[rows, E]`, as above.

The driver then assembles the shards into the `[N, E]` array
(`assemble_shards`, which can fill a memory map for large N), checking that
the shards tile `[0, N)` exactly, and each history's into `[M, E]`.

Contract: `run_layerwise(config)` returns float32 `[N, E]` equal, within float
round-off (1e-5), to `inference.layerwise_embeddings(model, tables)` for the
same weights, graph and neighborhood table (`run_layerwise_outputs` also the
item biases `[N]` of an `item_bias` model, like `inference.layerwise_outputs`): the same layer functions
(`encode_inputs`, `PinSageConv.transform_neighbors` / `pool` / `combine`,
`head`) run on the same inputs. `run_layerwise_inference(config,
pivot_neighborhoods={history: table})` also returns, per history, the pivot
embeddings `[M, E]` equal within 1e-5 to `LayerwiseInference.pivot_embeddings
(table.ids, table.weights)` (the model's `pivot_hidden` and `head`). Padding
slots (id -1 or weight 0) send no message and are zero-filled in the reducer;
they never contribute to any pooling, exactly as in `PinSageConv.pool`, nor
to a pivot's weighted mean. An isolated item (or a pivot without items)
receives no message and pools to 0, as in the local runner. Each node is
transformed once per layer (on the sending side), as in the local runner and
the paper.

Scaling notes:
* Vectors travel as raw float32 bytes (no pickling), keys are item ints.
* Workers never receive a pickled Keras model: each DoFn rebuilds the model
  from the weights directory (`model.load_model`) in `DoFn.setup`, and reads
  the graph and neighborhood table memory-mapped, touching only its range.
  `graph_dir` and `weights_dir` must therefore be readable by the workers at
  the same paths (a shared filesystem; the weights may be on any
  `tf.io.gfile` filesystem, the graph arrays must be local/mounted files).
  Workers check the graph's fingerprint against the one the driver saw.
* Per-layer shuffle volume is about N * T * 4 * d' bytes (each message
  carries one transformed neighbor vector); a very popular neighbor is a hot
  key whose messages are iterated lazily, never materialised as a list. The
  pivot stage moves about M * Tp * 4 * (d + d') bytes per history.
* Output shards (and the staged pivot tables) go to `output_dir` (kept) or to
  a temporary directory under `--temp_location` (or the local temp dir),
  deleted after assembly; any Beam filesystem (local, gs://, ...) works for
  them.

Join integrity. A runner that loses or duplicates elements would silently
give wrong embeddings, so the pipeline checks what it can: each neighbor key
has exactly one vector, each item exactly one h and exactly c_u messages on
distinct slots, and each output shard every item exactly once (and the same
for pivots); any violation raises. Beam 2.77's DirectRunner with several
workers was observed to drop elements in this pipeline's GroupByKeys
(reproduced with a TensorFlow-free pipeline of the same shape): always with
`direct_running_mode=multi_threading`, which `run_layerwise` therefore
refuses, and with `multi_processing` when a `beam.Reshuffle()` followed the
`beam.Create` (which reshuffles already), so none is used. `in_memory` (one worker) and `multi_processing` without that
Reshuffle gave exact results in every run here.
"""

from __future__ import annotations

import dataclasses
import io
import re
import tempfile
import uuid
from typing import Any, Iterable, Iterator, Mapping, Sequence

from absl import logging
import numpy as np

from pinsage_tf import graph as graph_lib
from pinsage_tf import minibatch
from pinsage_tf import model as model_lib
from pinsage_tf import neighborhoods as nb_lib

# pinsage_tf (above) must be imported before TensorFlow; Beam may import it.
import apache_beam as beam  # pylint: disable=g-bad-import-order
from apache_beam.io.filesystem import CompressionTypes  # pylint: disable=g-bad-import-order
from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-bad-import-order
from apache_beam.options import pipeline_options  # pylint: disable=g-bad-import-order
import tensorflow as tf  # pylint: disable=g-bad-import-order

SHARD_PATTERN = "part-*.npy"
_SHARD_RE = re.compile(r"part-(\d+)-(\d+)\.npy$")
PIVOTS_DIR = "pivots"
_PIVOT_IDS, _PIVOT_WEIGHTS = "ids.npy", "weights.npy"
_HISTORY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_TRANSFORMED = "transformed"
_MESSAGES = "messages"


@dataclasses.dataclass(frozen=True)
class BeamInferenceConfig:
  """What to embed and how to split the work.

  Attributes:
    graph_dir: the graph directory (`data.prepare` output); its cached
      neighborhood table for `neighborhoods` must exist.
    weights_dir: a `model.save_model` directory (`<model_dir>/model`).
    neighborhoods: the config of the cached table training used
      (`ExperimentConfig.neighborhoods`).
    max_sparse_length: sparse id lists are truncated to this many ids
      (`ExperimentConfig.pipeline.max_sparse_length`).
    read_shard_size: items per read task (one element of the initial Create).
    batch_size: maximum items per model call in the encoder and reducers.
    output_shard_size: rows per output `.npy` shard.
    verify_checksums: the driver checks the SHA-256 of every graph and table
      file once before launching (workers only check the graph fingerprint).
  """

  graph_dir: str
  weights_dir: str
  neighborhoods: nb_lib.NeighborhoodConfig = dataclasses.field(
      default_factory=nb_lib.NeighborhoodConfig)
  max_sparse_length: int = 32
  read_shard_size: int = 4096
  batch_size: int = 256
  output_shard_size: int = 65536
  verify_checksums: bool = True

  def __post_init__(self):
    for name in ("max_sparse_length", "read_shard_size", "batch_size", "output_shard_size"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"BeamInferenceConfig.{name} must be a positive int, got {value!r}.")
    if not self.graph_dir or not self.weights_dir:
      raise ValueError("BeamInferenceConfig needs graph_dir and weights_dir (paths).")


@dataclasses.dataclass(frozen=True)
class JobInfo:
  """What `inspect_inputs` found: item count N, embedding width E, layers K,
  the graph fingerprint the workers check and whether the model has item
  biases (`PinSageConfig.item_bias`)."""

  num_items: int
  embedding_dim: int
  num_layers: int
  fingerprint: str
  item_bias: bool = False

  @property
  def output_dim(self) -> int:
    """Width of the output rows: E, plus the bias b_u as a last column."""
    return self.embedding_dim + int(self.item_bias)


def inspect_inputs(config: BeamInferenceConfig) -> JobInfo:
  """Checks the inputs on the driver before anything is launched.

  Raises:
    graph.GraphFormatError / FileNotFoundError / ValueError: naming the
      missing or inconsistent file (graph, neighborhood table, model).
  """
  manifest = graph_lib.read_manifest(config.graph_dir)
  num_items = int(manifest["counts"]["items"])
  if config.verify_checksums:
    graph_lib.load_graph(config.graph_dir, mmap=True, verify=True)
  nb = nb_lib.load_neighborhoods(config.graph_dir, config.neighborhoods, mmap=True,
                                 verify=config.verify_checksums)
  del nb
  model_config = model_lib.load_config(config.weights_dir)
  if model_config.encoder.num_items not in (0, num_items):
    raise ValueError(f"{config.weights_dir}: the model was built for "
                     f"{model_config.encoder.num_items} items but {config.graph_dir} has "
                     f"{num_items}.")
  prefix = f"{config.weights_dir.rstrip('/')}/{model_lib.CHECKPOINT_PREFIX}"
  if not tf.io.gfile.exists(prefix + ".index"):
    raise FileNotFoundError(f"{prefix}.index: no weights checkpoint; was {config.weights_dir} "
                            "written by model.save_model?")
  return JobInfo(num_items=num_items, embedding_dim=model_config.embedding_dim,
                  num_layers=model_config.num_layers,
                  fingerprint=graph_lib.graph_fingerprint(config.graph_dir),
                  item_bias=bool(model_config.item_bias))


def shard_ranges(num_items: int, shard_size: int) -> list[tuple[int, int]]:
  """`[(start, stop), ...]` tiling `[0, num_items)` in blocks of `shard_size`."""
  return [(start, min(start + shard_size, num_items))
          for start in range(0, num_items, shard_size)]


def shard_path(directory: str, start: int, stop: int) -> str:
  """Path of the output shard holding rows `[start, stop)`."""
  return FileSystems.join(directory, f"part-{start:012d}-{stop:012d}.npy")


def _to_bytes(vector: np.ndarray) -> bytes:
  return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def _from_bytes(data: bytes) -> np.ndarray:
  return np.frombuffer(data, dtype="<f4")


def _write_npy(path: str, array: np.ndarray) -> None:
  """Writes `array` as `.npy` to `path` (any Beam filesystem): a temporary
  sibling, then a rename, so `path` is complete or absent (and a retry
  rewrites it whole)."""
  directory, name = FileSystems.split(path)
  tmp = FileSystems.join(directory, f".tmp-{uuid.uuid4().hex}-{name}")
  with FileSystems.create(tmp, compression_type=CompressionTypes.UNCOMPRESSED) as f:
    np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)
  FileSystems.rename([tmp], [path])


_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}


def _read_npy_rows(path: str, start: int, stop: int) -> np.ndarray:
  """Rows `[start, stop)` of a 2-D C-order `.npy` (any Beam filesystem),
  reading only their bytes."""
  with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
    version = np.lib.format.read_magic(f)
    if version not in _NPY_HEADER_READERS:
      raise ValueError(f"{path}: unsupported .npy version {version}.")
    shape, fortran_order, dtype = _NPY_HEADER_READERS[version](f)
    if len(shape) != 2 or fortran_order or dtype.hasobject or not 0 <= start <= stop <= shape[0]:
      raise ValueError(f"{path}: expected a C-order [rows, width] array with rows "
                       f"[{start}, {stop}), got shape {shape} (fortran_order={fortran_order}).")
    row_bytes = shape[1] * dtype.itemsize
    f.seek(f.tell() + start * row_bytes)
    data = f.read((stop - start) * row_bytes)
  if len(data) != (stop - start) * row_bytes:
    raise ValueError(f"{path}: truncated (rows [{start}, {stop}) not all present).")
  return np.frombuffer(data, dtype).reshape(stop - start, shape[1])


class _LayerFunctions:
  """The model's pieces as `tf.function`s with fixed signatures (no retracing)."""

  def __init__(self, weights_dir: str, num_neighbors: int):
    model = model_lib.load_model(weights_dir)
    self.model = model
    cfg = model.config
    hidden = cfg.hidden_dim
    self.encode = tf.function(
        lambda inputs: model.encode_inputs(inputs, training=False),
        input_signature=[model_lib.node_inputs_spec(cfg.encoder)])
    self.transform, self.convolve = [], []
    for conv in model.convs:
      self.transform.append(tf.function(
          lambda h, conv=conv: conv.transform_neighbors(h, training=False),
          input_signature=[tf.TensorSpec([None, hidden], tf.float32)]))
      self.convolve.append(tf.function(
          lambda self_h, t, w, conv=conv: conv.combine(self_h, conv.pool(t, w), training=False),
          input_signature=[tf.TensorSpec([None, hidden], tf.float32),
                           tf.TensorSpec([None, num_neighbors, conv.neighbor_units], tf.float32),
                           tf.TensorSpec([None, num_neighbors], tf.float32)]))
    self.head = tf.function(lambda h: model.head(h),
                            input_signature=[tf.TensorSpec([None, hidden], tf.float32)])
    self.head_and_bias = None
    if cfg.item_bias:
      self.head_and_bias = tf.function(
          lambda h: model.head_and_bias(h),
          input_signature=[tf.TensorSpec([None, hidden], tf.float32)])
    self.neighbor_units = [conv.neighbor_units for conv in model.convs]
    self.pivot = tf.function(
        lambda h, t, index, w: model.head(
            model.pivot_hidden(h, index, w, training=False, transformed=t)),
        input_signature=[tf.TensorSpec([None, hidden], tf.float32),
                         tf.TensorSpec([None, self.neighbor_units[-1]], tf.float32),
                         tf.TensorSpec([None, None], tf.int32),
                         tf.TensorSpec([None, None], tf.float32)])


class _ReadFn(beam.DoFn):
  """Item range -> (u, h^0_u), tagged (u, t^0_u) and neighbor-keyed messages."""

  def __init__(self, config: BeamInferenceConfig, fingerprint: str):
    super().__init__()
    self._config = config
    self._fingerprint = fingerprint

  def setup(self):
    cfg = self._config
    fingerprint = graph_lib.graph_fingerprint(cfg.graph_dir)
    if fingerprint != self._fingerprint:
      raise ValueError(f"{cfg.graph_dir}: the graph changed since the pipeline was launched "
                       f"(fingerprint {fingerprint[:12]} != {self._fingerprint[:12]}).")
    self._graph = graph_lib.load_graph(cfg.graph_dir, mmap=True, verify=False)
    self._nb = nb_lib.load_neighborhoods(cfg.graph_dir, cfg.neighborhoods, mmap=True,
                                         verify=False)
    # The padded width SamplingTables.build uses (the encoder's bag means do
    # not depend on it; kept identical anyway).
    self._sparse_width = [
        max(1, min(cfg.max_sparse_length, int(s.values.degrees().max(initial=0))))
        for s in self._graph.features.sparse]
    self._fns = _LayerFunctions(cfg.weights_dir, cfg.neighborhoods.num_neighbors)

  def _inputs(self, start: int, stop: int) -> minibatch.NodeInputs:
    features = self._graph.features
    sparse = []
    for feature, width in zip(features.sparse, self._sparse_width):
      indptr = np.asarray(feature.values.indptr[start:stop + 1])
      rows = graph_lib.CSR(indptr - indptr[0],
                           np.asarray(feature.values.indices[indptr[0]:indptr[-1]]))
      sparse.append(tf.constant(rows.to_padded(width)))
    return minibatch.NodeInputs(
        item=tf.range(start, stop, dtype=tf.int32),
        dense=tf.constant(np.asarray(features.dense[start:stop], np.float32)),
        log_degree=tf.constant(np.asarray(features.log_degree[start:stop], np.float32)),
        sparse=tuple(sparse))

  def process(self, item_range: tuple[int, int]) -> Iterator[Any]:
    start, stop = item_range
    for a in range(start, stop, self._config.batch_size):
      b = min(a + self._config.batch_size, stop)
      h0 = self._fns.encode(self._inputs(a, b))
      t0 = self._fns.transform[0](h0).numpy()
      h0 = h0.numpy()
      ids = np.asarray(self._nb.ids[a:b])
      weights = np.asarray(self._nb.weights[a:b])
      # Padding (id -1) and zero-weight slots never contribute to pooling.
      valid = (ids >= 0) & (weights > 0)
      counts = valid.sum(axis=1).tolist()
      for i in range(b - a):
        yield a + i, (counts[i], _to_bytes(h0[i]))
        yield beam.pvalue.TaggedOutput(_TRANSFORMED, (a + i, _to_bytes(t0[i])))
      rows, slots = np.nonzero(valid)
      for r, s in zip(rows.tolist(), slots.tolist()):
        yield beam.pvalue.TaggedOutput(
            _MESSAGES, (int(ids[r, s]), (a + r, s, float(weights[r, s]))))


def _join_error(what: str) -> RuntimeError:
  return RuntimeError(
      f"{what}: the runner lost or duplicated elements of the neighbor join; the embeddings "
      "would be wrong, so the pipeline stops (see the beam_inference module docstring).")


def _send(element: tuple[int, dict[str, Iterable[Any]]]) -> Iterator[tuple[int, Any]]:
  """Neighbor v with its t^k_v and messages -> (u, (slot, alpha, t^k_v)) per message."""
  neighbor, groups = element
  vectors = list(groups[_TRANSFORMED])
  messages = groups[_MESSAGES]
  if len(vectors) != 1:
    for _ in messages:
      raise _join_error(f"neighbor {neighbor} has {len(vectors)} transformed vectors "
                        "(expected 1)")
    return
  vector = vectors[0]
  for item, slot, weight in messages:
    yield item, (slot, weight, vector)


class _ConvolveFn(beam.DoFn):
  """A batch of (u, {h: [(c_u, h^k_u)], n: [(slot, alpha, t^k_v)...]}) -> layer k+1.

  `c_u` is u's number of valid neighbor slots, carried along with h so the
  reducer can check that the join delivered exactly one message per slot.
  Emits (u, (c_u, h^{k+1}_u)) and tagged (u, t^{k+1}_u) for a middle layer,
  or (u, z_u) with the head applied after the last layer.
  """

  def __init__(self, config: BeamInferenceConfig, layer: int, last: bool):
    super().__init__()
    self._config = config
    self._layer = layer
    self._last = last

  def setup(self):
    self._fns = _LayerFunctions(self._config.weights_dir,
                                self._config.neighborhoods.num_neighbors)

  def process(self, batch: Sequence[tuple[int, dict[str, Iterable[Any]]]]) -> Iterator[Any]:
    k, fns = self._layer, self._fns
    t_width = self._config.neighborhoods.num_neighbors
    hidden = fns.model.config.hidden_dim
    u = len(batch)
    items = [0] * u
    counts = [0] * u
    self_h = np.empty((u, hidden), np.float32)
    transformed = np.zeros((u, t_width, fns.neighbor_units[k]), np.float32)
    weights = np.zeros((u, t_width), np.float32)
    for i, (item, groups) in enumerate(batch):
      hs = list(groups["h"])
      if len(hs) != 1:
        raise _join_error(f"item {item}: {len(hs)} layer-{k} vectors (expected 1)")
      count, data = hs[0]
      counts[i] = count
      items[i] = item
      self_h[i] = _from_bytes(data)
      received = 0
      for slot, weight, vector in groups["n"]:
        transformed[i, slot] = _from_bytes(vector)
        weights[i, slot] = weight
        received += 1
      if received != count or np.count_nonzero(weights[i]) != count:
        raise _join_error(f"layer {k + 1}, item {item}: received {received} neighbor messages "
                          f"for {np.count_nonzero(weights[i])} distinct slots; expected {count}")
    h = fns.convolve[k](self_h, transformed, weights)
    if self._last:
      if fns.head_and_bias is not None:
        z, b = fns.head_and_bias(h)
        z = np.concatenate([z.numpy(), b.numpy()[:, None]], axis=1)  # bias: last column
      else:
        z = fns.head(h).numpy()
      for i, item in enumerate(items):
        yield item, _to_bytes(z[i])
      return
    t_next = fns.transform[k + 1](h).numpy()
    h = h.numpy()
    for i, item in enumerate(items):
      yield item, (counts[i], _to_bytes(h[i]))
      yield beam.pvalue.TaggedOutput(_TRANSFORMED, (item, _to_bytes(t_next[i])))


@dataclasses.dataclass(frozen=True)
class _PivotJob:
  """One pivot history: `count` pivots M with `width` slots Tp; the staged
  table (`ids.npy`, `weights.npy`) and the output shards live in `directory`."""

  history: str
  count: int
  width: int
  directory: str


class _ReadPivotsFn(beam.DoFn):
  """Pivot range -> (p, c_p) and item-keyed messages (v, (p, s, alpha))."""

  def __init__(self, job: _PivotJob):
    super().__init__()
    self._job = job

  def process(self, pivot_range: tuple[int, int]) -> Iterator[Any]:
    start, stop = pivot_range
    ids = _read_npy_rows(FileSystems.join(self._job.directory, _PIVOT_IDS), start, stop)
    weights = _read_npy_rows(FileSystems.join(self._job.directory, _PIVOT_WEIGHTS), start, stop)
    # As for items: padding (id -1) and zero-weight slots contribute nothing.
    valid = (ids >= 0) & (weights > 0)
    for i, count in enumerate(valid.sum(axis=1).tolist()):
      yield start + i, count
    rows, slots = np.nonzero(valid)
    for r, s in zip(rows.tolist(), slots.tolist()):
      yield beam.pvalue.TaggedOutput(
          _MESSAGES, (int(ids[r, s]), (start + r, s, float(weights[r, s]))))


def _send_to_pivots(element: tuple[int, dict[str, Iterable[Any]]]) -> Iterator[tuple[int, Any]]:
  """Item v with h^{K-1}_v, t^{K-1}_v and pivot messages -> (p, (s, alpha, h, t))."""
  item, groups = element
  hs, ts = list(groups["h"]), list(groups[_TRANSFORMED])
  messages = groups[_MESSAGES]
  if len(hs) != 1 or len(ts) != 1:
    for _ in messages:
      raise _join_error(f"item {item} has {len(hs)} h and {len(ts)} transformed vectors "
                        "(expected 1 each) for the pivot stage")
    return
  h, t = hs[0][1], ts[0]
  for pivot, slot, weight in messages:
    yield pivot, (slot, weight, h, t)


class _PivotFn(beam.DoFn):
  """A batch of (p, {c: [c_p], n: [(slot, alpha, h^{K-1}_v, t^{K-1}_v)...]}) -> (p, z_p).

  The model's `pivot_hidden` gathers neighbor rows from an h table: here the
  table is the batch's received rows stacked `[P * Tp, d]` (zero on padding,
  which has weight 0) and pivot i's slot s is row `i * Tp + s`.
  """

  def __init__(self, config: BeamInferenceConfig, width: int):
    super().__init__()
    self._config = config
    self._width = width

  def setup(self):
    self._fns = _LayerFunctions(self._config.weights_dir,
                                self._config.neighborhoods.num_neighbors)

  def process(self, batch: Sequence[tuple[int, dict[str, Iterable[Any]]]]) -> Iterator[Any]:
    fns, width = self._fns, self._width
    p = len(batch)
    pivots = [0] * p
    h_rows = np.zeros((p * width, fns.model.config.hidden_dim), np.float32)
    t_rows = np.zeros((p * width, fns.neighbor_units[-1]), np.float32)
    weights = np.zeros((p, width), np.float32)
    for i, (pivot, groups) in enumerate(batch):
      counts = list(groups["c"])
      if len(counts) != 1:
        raise _join_error(f"pivot {pivot}: {len(counts)} neighbor counts (expected 1)")
      pivots[i] = pivot
      received = 0
      for slot, weight, h, t in groups["n"]:
        h_rows[i * width + slot] = _from_bytes(h)
        t_rows[i * width + slot] = _from_bytes(t)
        weights[i, slot] = weight
        received += 1
      if received != counts[0] or np.count_nonzero(weights[i]) != counts[0]:
        raise _join_error(f"pivot {pivot}: received {received} neighbor messages for "
                          f"{np.count_nonzero(weights[i])} distinct slots; expected {counts[0]}")
    index = np.arange(p * width, dtype=np.int32).reshape(p, width)
    z = fns.pivot(h_rows, t_rows, index, weights).numpy()
    for i, pivot in enumerate(pivots):
      yield pivot, _to_bytes(z[i])


class _WriteShardFn(beam.DoFn):
  """(shard index, [(row, z_row)...]) -> one complete `part-<start>-<stop>.npy`."""

  def __init__(self, output_dir: str, num_rows: int, shard_size: int, dim: int,
               what: str = "item"):
    super().__init__()
    self._output_dir = output_dir
    self._num_rows = num_rows
    self._shard_size = shard_size
    self._dim = dim
    self._what = what

  def process(self, element: tuple[int, Iterable[tuple[int, bytes]]]) -> Iterator[str]:
    shard, rows = element
    start = shard * self._shard_size
    stop = min(start + self._shard_size, self._num_rows)
    out = np.empty((stop - start, self._dim), np.float32)
    seen = np.zeros(stop - start, bool)
    for row, data in rows:
      r = row - start
      if seen[r]:
        raise ValueError(f"{self._what} {row} was embedded twice.")
      seen[r] = True
      out[r] = _from_bytes(data)
    if not seen.all():
      missing = np.flatnonzero(~seen)
      raise ValueError(f"shard [{start}, {stop}): {missing.size} {self._what}s missing "
                       f"(first: {start + int(missing[0])}).")
    path = shard_path(self._output_dir, start, stop)
    # A retried bundle rewrites the same complete shard: the rename is idempotent.
    _write_npy(path, out)
    yield path


def _write_shards(rows, prefix: str, directory: str, num_rows: int, shard_size: int,
                  dim: int, what: str):
  """(row, z bytes) -> `part-<start>-<stop>.npy` shards in `directory`."""
  return (
      rows
      | f"{prefix}KeyByShard" >> beam.Map(lambda kv: (kv[0] // shard_size, kv))
      | f"{prefix}GroupShards" >> beam.GroupByKey()
      | f"{prefix}WriteShards" >> beam.ParDo(
          _WriteShardFn(directory, num_rows, shard_size, dim, what)))


def _build_pivots(root, config: BeamInferenceConfig, info: JobInfo, job: _PivotJob,
                  h_last, transformed_last):
  """The pivot stage of one history (module docstring), from the items'
  h^{K-1} `(v, (c_v, h))` and t^{K-1} `(v, t)`."""
  name = f"Pivots-{job.history}"
  read = (
      root
      | f"{name}/Ranges" >> beam.Create(shard_ranges(job.count, config.read_shard_size))
      | f"{name}/Read" >> beam.ParDo(_ReadPivotsFn(job)).with_outputs(_MESSAGES, main="c"))
  sent = (
      {"h": h_last, _TRANSFORMED: transformed_last, _MESSAGES: read[_MESSAGES]}
      | f"{name}/JoinByItem" >> beam.CoGroupByKey()
      | f"{name}/Send" >> beam.FlatMap(_send_to_pivots))
  embedded = (
      {"c": read.c, "n": sent}
      | f"{name}/RegroupByPivot" >> beam.CoGroupByKey()
      | f"{name}/Batch" >> beam.BatchElements(min_batch_size=min(32, config.batch_size),
                                              max_batch_size=config.batch_size)
      | f"{name}/Embed" >> beam.ParDo(_PivotFn(config, job.width)))
  return _write_shards(embedded, f"{name}/", job.directory, job.count,
                       config.output_shard_size, info.embedding_dim, "pivot")


def _build(root, config: BeamInferenceConfig, info: JobInfo, output_dir: str,
           pivots: Sequence[_PivotJob] = ()):
  min_batch = min(32, config.batch_size)
  read = (
      root
      # Create already reshuffles its elements across workers. (A second,
      # explicit Reshuffle here made Beam 2.77's multi-worker DirectRunner drop
      # elements in the later GroupByKeys.)
      | "ItemRanges" >> beam.Create(shard_ranges(info.num_items, config.read_shard_size))
      | "ReadEncode" >> beam.ParDo(_ReadFn(config, info.fingerprint)).with_outputs(
          _TRANSFORMED, _MESSAGES, main="h"))
  h, transformed, messages = read.h, read[_TRANSFORMED], read[_MESSAGES]
  for k in range(info.num_layers):
    last = k == info.num_layers - 1
    if last:
      for job in pivots:
        _build_pivots(root, config, info, job, h, transformed)
    name = f"Layer{k + 1}"
    sent = (
        {_TRANSFORMED: transformed, _MESSAGES: messages}
        | f"{name}/JoinByNeighbor" >> beam.CoGroupByKey()
        | f"{name}/Send" >> beam.FlatMap(_send))
    reduced = (
        {"h": h, "n": sent}
        | f"{name}/RegroupByItem" >> beam.CoGroupByKey()
        | f"{name}/Batch" >> beam.BatchElements(min_batch_size=min_batch,
                                                max_batch_size=config.batch_size)
        | f"{name}/Convolve" >> beam.ParDo(_ConvolveFn(config, k, last)).with_outputs(
            _TRANSFORMED, main="h"))
    h, transformed = reduced.h, reduced[_TRANSFORMED]
  return _write_shards(h, "", output_dir, info.num_items, config.output_shard_size,
                       info.output_dim, "item")


def build_pipeline(root, config: BeamInferenceConfig, output_dir: str):
  """Adds the layer-wise inference transforms to `root` (a `beam.Pipeline`).

  Checks the inputs on the driver first (`inspect_inputs`).

  Returns:
    The PCollection of written shard paths (`part-<start>-<stop>.npy`,
    float32 `[stop - start, E]`, under `output_dir`).
  """
  return _build(root, config, inspect_inputs(config), output_dir)


def assemble_shards(shard_dir: str, num_items: int, dim: int,
                    out: np.ndarray | None = None) -> np.ndarray:
  """Reads the shards under `shard_dir` into float32 `[num_items, dim]`.

  Args:
    shard_dir: the pipeline's output directory (any Beam filesystem).
    num_items, dim: the expected shape.
    out: optional preallocated `[num_items, dim]` array (e.g. an
      `np.lib.format.open_memmap`) to fill instead of allocating.

  Raises:
    ValueError: the shards do not tile `[0, num_items)` exactly, or a shard
      has the wrong shape or dtype (naming it).
  """
  pattern = FileSystems.join(shard_dir, SHARD_PATTERN)
  found = []
  for metadata in FileSystems.match([pattern])[0].metadata_list:
    m = _SHARD_RE.search(metadata.path)
    if m:
      found.append((int(m.group(1)), int(m.group(2)), metadata.path))
  found.sort()
  position = 0
  for start, stop, path in found:
    if start != position or stop <= start:
      raise ValueError(f"{path}: shards do not tile [0, {num_items}) (expected a shard "
                       f"starting at {position}).")
    position = stop
  if position != num_items:
    raise ValueError(f"{shard_dir}: shards cover [0, {position}) but the graph has "
                     f"{num_items} items.")
  if out is None:
    out = np.empty((num_items, dim), np.float32)
  if out.shape != (num_items, dim):
    raise ValueError(f"out has shape {out.shape}, expected {(num_items, dim)}.")
  for start, stop, path in found:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
      array = np.load(io.BytesIO(f.read()), allow_pickle=False)
    if array.shape != (stop - start, dim) or array.dtype != np.float32:
      raise ValueError(f"{path}: shape/dtype {array.shape} {array.dtype}, expected "
                       f"{(stop - start, dim)} float32.")
    out[start:stop] = array
  return out


def _check_runner(options: pipeline_options.PipelineOptions) -> None:
  """Refuses the DirectRunner mode that was observed to lose elements."""
  runner = options.view_as(pipeline_options.StandardOptions).runner
  direct = options.view_as(pipeline_options.DirectOptions)
  if (runner in (None, "DirectRunner", "SwitchingDirectRunner")
      and direct.direct_running_mode == "multi_threading" and direct.direct_num_workers != 1):
    raise ValueError(
        "--direct_running_mode=multi_threading with --direct_num_workers != 1 loses elements "
        "in this pipeline's GroupByKeys with Beam 2.77 (observed, also without TensorFlow); "
        "use --direct_running_mode=multi_processing or in_memory.")


def run_layerwise(config: BeamInferenceConfig, *, pipeline_args: Sequence[str] = (),
                  output_dir: str | None = None) -> np.ndarray:
  """The embeddings float32 `[N, E]` of `run_layerwise_outputs` (biases dropped)."""
  return run_layerwise_outputs(config, pipeline_args=pipeline_args, output_dir=output_dir)[0]


def run_layerwise_outputs(config: BeamInferenceConfig, *, pipeline_args: Sequence[str] = (),
                          output_dir: str | None = None
                          ) -> tuple[np.ndarray, np.ndarray | None]:
  """Embeddings float32 `[N, E]` and item biases `[N]` or None
  (`run_layerwise_inference` without pivots)."""
  out = run_layerwise_inference(config, pipeline_args=pipeline_args, output_dir=output_dir)
  return out.vectors, out.bias


@dataclasses.dataclass(frozen=True)
class LayerwiseOutputs:
  """What `run_layerwise_inference` computed: item embeddings float32
  `[N, E]`, item biases `[N]` or None, and {history: pivot embeddings `[M, E]`}
  (empty without pivot tables)."""

  vectors: np.ndarray
  bias: np.ndarray | None
  pivot_vectors: dict[str, np.ndarray]


def _stage_pivot_tables(pivot_neighborhoods: Mapping[str, nb_lib.Neighborhoods],
                        num_items: int, output_dir: str) -> list[_PivotJob]:
  """Checks each pivot table and writes its ids and weights where the workers
  read them (`<output_dir>/pivots/<history>/`)."""
  jobs = []
  for history, table in pivot_neighborhoods.items():
    where = f"pivot_neighborhoods[{history!r}]"
    if not isinstance(history, str) or not _HISTORY_RE.match(history):
      raise ValueError(f"{where}: a history name must match {_HISTORY_RE.pattern} (it names "
                       "a directory).")
    ids, weights = np.asarray(table.ids), np.asarray(table.weights)
    if ids.ndim != 2 or ids.shape[1] < 1 or weights.shape != ids.shape:
      raise ValueError(f"{where}: ids {ids.shape} and weights {weights.shape} must both be "
                       "[M, Tp] with Tp >= 1.")
    if ids.size and (ids.min() < -1 or ids.max() >= num_items):
      raise ValueError(f"{where}: ids must be item rows in [0, {num_items}) or -1 (padding), "
                       f"got values in [{ids.min()}, {ids.max()}].")
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
      raise ValueError(f"{where}: weights must be finite and >= 0.")
    directory = FileSystems.join(output_dir, PIVOTS_DIR, history)
    if not FileSystems.exists(directory):
      FileSystems.mkdirs(directory)
    _write_npy(FileSystems.join(directory, _PIVOT_IDS), ids.astype(np.int32))
    _write_npy(FileSystems.join(directory, _PIVOT_WEIGHTS),
               np.where(ids >= 0, weights, 0).astype(np.float32))
    jobs.append(_PivotJob(history=history, count=ids.shape[0], width=ids.shape[1],
                          directory=directory))
  return jobs


def run_layerwise_inference(
    config: BeamInferenceConfig, *,
    pivot_neighborhoods: Mapping[str, nb_lib.Neighborhoods] | None = None,
    pipeline_args: Sequence[str] = (),
    output_dir: str | None = None) -> LayerwiseOutputs:
  """Runs the pipeline: item embeddings, item biases and pivot embeddings.

  The biases are None unless the model has them (`PinSageConfig.item_bias`);
  then the output shards hold `[rows, E + 1]`, the bias in the last column.

  Args:
    config: inputs and work split.
    pivot_neighborhoods: optional {history: pivot neighborhood table}
      (`neighborhoods.compute_pivot_neighborhoods`; only `ids` `[M, Tp]`,
      -1 on padding, and `weights` are used); each history's pivots are
      embedded like `inference.LayerwiseInference.pivot_embeddings`. History
      names become directory names (letters, digits, `_.+-`).
    pipeline_args: Beam pipeline options, e.g. `["--direct_num_workers=2",
      "--direct_running_mode=multi_processing"]` or `["--runner=FlinkRunner",
      ...]`; empty = DirectRunner in one process.
    output_dir: where to write (and keep) the shards (pivot tables and
      shards under `pivots/<history>/`); must not hold shards already. None =
      a temporary directory under `--temp_location` (or the local temp dir),
      deleted after assembly.

  Raises:
    FileNotFoundError / ValueError: bad inputs (or the DirectRunner's
      multi_threading mode with several workers), found before launching.
    FileExistsError: `output_dir` already holds shards.
    RuntimeError: the runner lost or duplicated elements (integrity checks).
  """
  options = pipeline_options.PipelineOptions(list(pipeline_args))
  _check_runner(options)
  info = inspect_inputs(config)
  keep = output_dir is not None
  if output_dir is None:
    base = options.view_as(pipeline_options.GoogleCloudOptions).temp_location
    output_dir = FileSystems.join(base or tempfile.gettempdir(),
                                  f"pinsage-beam-inference-{uuid.uuid4().hex}")
  elif any(m.metadata_list for m in FileSystems.match([
      FileSystems.join(output_dir, SHARD_PATTERN),
      FileSystems.join(output_dir, PIVOTS_DIR, "*", SHARD_PATTERN)])):
    raise FileExistsError(f"{output_dir} already holds embedding shards; pass an empty "
                          "directory.")
  if not FileSystems.exists(output_dir):
    FileSystems.mkdirs(output_dir)
  try:
    jobs = _stage_pivot_tables(pivot_neighborhoods or {}, info.num_items, output_dir)
    with beam.Pipeline(options=options) as pipeline:
      _build(pipeline, config, info, output_dir, jobs)
    rows = assemble_shards(output_dir, info.num_items, info.output_dim)
    pivot_vectors = {job.history: assemble_shards(job.directory, job.count, info.embedding_dim)
                     for job in jobs}
    if info.item_bias:
      return LayerwiseOutputs(np.ascontiguousarray(rows[:, :info.embedding_dim]),
                              np.ascontiguousarray(rows[:, info.embedding_dim]), pivot_vectors)
    return LayerwiseOutputs(rows, None, pivot_vectors)
  finally:
    if not keep:
      try:
        FileSystems.delete([output_dir])
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("could not delete the temporary shards in %s: %s", output_dir, e)
