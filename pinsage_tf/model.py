"""The PinSage model: input encoder, K convolutions, dense head.

Ying et al., KDD'18, Algorithm 2 (minibatch forward propagation):

    h^0_u = encoder(features of u)                   for level-0 nodes
    h^k_u = CONVOLVE^(k)(h^{k-1}_u, {h^{k-1}_v : v in N(u)}, alpha)
                                                     for level-k nodes, k = 1..K
    z_u   = G2 ReLU(G1 h^K_u + g), then z_u / ||z_u||_2

Pivots (boards, users) have no features, so PinSage's convolution embeds a
pivot from its importance neighborhood (`neighborhoods.compute_pivot_
neighborhoods`: the items that walks from the pivot visit most) with the LAST
layer, in the item space: its own representation is the importance-weighted
mean of its neighbors' h^{K-1} (a pivot "is" its items), so

    h^K_p = CONVOLVE^(K)(sum_v alpha_v h^{K-1}_v, {h^{K-1}_v : v in N(p)}, alpha)
    z_p   = the same dense head and normalisation as an item's

and a pivot p ranks items by `z_p . z_i + b_i`. The same weights serve items
and pivots; a pivot that was never seen in training is embedded from its items
at request time (inductive, like an item from its features).

`PinSageModel.call` consumes a `pinsage_tf.minibatch.Minibatch` and returns the
final embeddings float32 `[U_K, embedding_dim]` of the level-K nodes
(`embed_batch` also returns their item biases `[U_K]` when
`PinSageConfig.item_bias` is set -- a scalar score offset per item -- and the
embeddings `[Bp, embedding_dim]` of the batch's pivots). Each
unique node of a level is encoded / convolved exactly once: hop k gathers
level-(k-1) rows by `Hop.self_index` and `Hop.neighbor_index`. The neighbor
transform ReLU(Q h + q) is applied once per level-(k-1) node before the
gather (not once per neighbor slot): the same function with about T times
fewer neighbor-transform matmuls when U_{k-1} ~ U_k.

The pieces are public for layer-wise inference over all items, which has no
`Minibatch`: `encode_inputs(NodeInputs)`, `convolve(k, self_h, neighbor_h,
neighbor_weight)`, `pivot_hidden(h_table, neighbor_index, neighbor_weight)`
and `head(h)`.

Persistence. The project's format is `save_model` / `load_model`: a directory
with `config.json` (`PinSageConfig`) and a `tf.train.Checkpoint` (key
"model"), written atomically; loading rebuilds the model from the config and
restores the weights, failing if any variable is unmatched. Keras'
`model.save` (SavedModel) also round-trips (tested), but a revived subclassed
model is rebuilt from `get_config` anyway, saving traces every call signature,
and its restore is not strict. `restore_weights` also reads a trainer's
`tf.train.Checkpoint(model=..., optimizer=...)` into a rebuilt model. For a
Python-free artefact, `export_layerwise_module` saves a `tf.Module` whose
`encode_inputs`, `convolve_<k>` and `head` functions have fixed input
signatures (`convolve_<k>` and `head` are also serving signatures).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import tensorflow as tf

from pinsage_tf import atomic
from pinsage_tf import graph as graph_lib
from pinsage_tf import minibatch
from pinsage_tf.layers import convolve as convolve_lib
from pinsage_tf.layers import encoders

CONFIG_FILE = "config.json"
CHECKPOINT_PREFIX = "ckpt"
_FORMAT = "pinsage_tf.model"


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """Feature schema and options of the `ItemEncoder` (see its docstring).

  `dense_dim`, `sparse_features` and `num_items` describe the graph; build them
  with `EncoderConfig.from_graph`.
  """

  dense_dim: int = 0
  sparse_features: tuple[tuple[str, int], ...] = ()
  num_items: int = 0
  use_id_embedding: bool | None = None
  use_log_degree: bool = True
  log_degree_scale: float = 1.0
  dense_projection_dim: int = 64
  sparse_embedding_dim: int = 32
  id_embedding_dim: int = 64

  @classmethod
  def from_graph(cls, graph: graph_lib.Graph, **options: Any) -> "EncoderConfig":
    """The schema of `graph`'s features plus `options` (other fields)."""
    return cls(
        dense_dim=graph.features.dense_dim,
        sparse_features=tuple((s.name, int(s.vocab_size)) for s in graph.features.sparse),
        num_items=graph.num_items,
        **options)


@dataclasses.dataclass(frozen=True)
class PinSageConfig:
  """Hyper-parameters of `PinSageModel`.

  Attributes:
    hidden_dim: width d of h^0 and of every convolution's output.
    embedding_dim: width of the final embeddings z.
    num_layers: K, the number of convolutions (= hops of the minibatch).
    neighbor_dim: width of each convolution's neighbor transform; None = hidden_dim.
    pooling: "importance" (the paper), "mean" or "max" (ablations).
    dropout_rate: dropout on every convolution's inputs in training.
    item_bias: also output a scalar score offset b_u per item, a linear unit
      on the head's hidden layer (so it is inductive like z): a candidate i
      scores z_q . z_i + b_i for a query q. Unit-norm embeddings express an
      item's overall popularity poorly; b absorbs it. Training adds b to the
      candidates' scores; inference writes it beside the embeddings
      (`embeddings_io`) and the scorers add it.
    encoder: the input encoder's schema and options.
  """

  hidden_dim: int = 256
  embedding_dim: int = 128
  num_layers: int = 2
  neighbor_dim: int | None = None
  pooling: str = "importance"
  dropout_rate: float = 0.0
  item_bias: bool = False
  encoder: EncoderConfig = dataclasses.field(default_factory=EncoderConfig)

  def __post_init__(self):
    for name in ("hidden_dim", "embedding_dim", "num_layers"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"PinSageConfig.{name} must be a positive int, got {value!r}.")
    if self.pooling not in convolve_lib.POOLINGS:
      raise ValueError(
          f"PinSageConfig.pooling must be one of {convolve_lib.POOLINGS}, got {self.pooling!r}.")
    if not isinstance(self.item_bias, bool):
      raise ValueError(f"PinSageConfig.item_bias must be a bool, got {self.item_bias!r}.")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"PinSageConfig.dropout_rate must lie in [0, 1), got {self.dropout_rate!r}.")

  def to_dict(self) -> dict[str, Any]:
    """JSON-serialisable form; `from_dict` inverts it."""
    out = dataclasses.asdict(self)
    out["encoder"]["sparse_features"] = [list(f) for f in self.encoder.sparse_features]
    return out

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> "PinSageConfig":
    """Inverse of `to_dict`; raises ValueError naming unknown keys."""
    values = dict(values)
    _check_keys(cls, values, "PinSageConfig")
    encoder = dict(values.pop("encoder", {}))
    _check_keys(EncoderConfig, encoder, "PinSageConfig.encoder")
    if "sparse_features" in encoder:
      encoder["sparse_features"] = tuple(
          (str(name), int(size)) for name, size in encoder["sparse_features"])
    return cls(encoder=EncoderConfig(**encoder), **values)


def _check_keys(cls: type, values: Mapping[str, Any], where: str) -> None:
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - known)
  if unknown:
    raise ValueError(f"{where}: unknown keys {unknown}; expected a subset of {sorted(known)}.")


@tf.keras.utils.register_keras_serializable(package="pinsage_tf")
class PinSageModel(tf.keras.Model):
  """PinSage: `Minibatch` -> float32 `[U_K, embedding_dim]` L2-normalised embeddings."""

  def __init__(self, config: PinSageConfig | Mapping[str, Any], **kwargs):
    """Builds the layers.

    Args:
      config: a `PinSageConfig` (or its `to_dict()` form); its `encoder`
        must describe the graph (`EncoderConfig.from_graph`).
      **kwargs: base `tf.keras.Model` arguments (name, ...).
    """
    super().__init__(**kwargs)
    if not isinstance(config, PinSageConfig):
      config = PinSageConfig.from_dict(config)
    self.config = config
    enc = config.encoder
    self.encoder = encoders.ItemEncoder(
        config.hidden_dim,
        dense_dim=enc.dense_dim,
        sparse_features=enc.sparse_features,
        num_items=enc.num_items,
        use_id_embedding=enc.use_id_embedding,
        use_log_degree=enc.use_log_degree,
        log_degree_scale=enc.log_degree_scale,
        dense_projection_dim=enc.dense_projection_dim,
        sparse_embedding_dim=enc.sparse_embedding_dim,
        id_embedding_dim=enc.id_embedding_dim,
        name="encoder")
    self.convs = [
        convolve_lib.PinSageConv(
            config.hidden_dim, neighbor_units=config.neighbor_dim, pooling=config.pooling,
            dropout_rate=config.dropout_rate, name=f"conv_{k}")
        for k in range(config.num_layers)]
    # G1, g and G2 of Algorithm 2, line 10.
    self.head_hidden = tf.keras.layers.Dense(
        config.hidden_dim, activation="relu", name="head_hidden")
    self.head_output = tf.keras.layers.Dense(
        config.embedding_dim, use_bias=False, name="head_output")
    # b_u = w . ReLU(G1 h + g) + c; zero-initialised, so training starts from
    # the plain cosine scores.
    self.bias_output = (tf.keras.layers.Dense(1, kernel_initializer="zeros", name="item_bias")
                        if config.item_bias else None)

  def call(self, batch: minibatch.Minibatch, training: bool | None = None) -> tf.Tensor:
    """Embeds the level-K nodes of `batch`.

    Args:
      batch: a `Minibatch` with exactly `num_layers` hops.
      training: Keras training flag (enables dropout).

    Returns:
      float32 `[num_nodes[K], embedding_dim]` (the real level-K nodes; every
      position in `batch.query` etc. is below it), rows of unit L2 norm.
    """
    return self.head(self._last_hidden(batch, training))

  def embed_with_bias(self, batch: minibatch.Minibatch, training: bool | None = None
                      ) -> tuple[tf.Tensor, tf.Tensor | None]:
    """`call`'s embeddings and the item biases float32 `[num_nodes[K]]` (None
    unless `config.item_bias`)."""
    return self.head_and_bias(self._levels(batch, training)[2])

  def embed_batch(self, batch: minibatch.Minibatch, training: bool | None = None
                  ) -> tuple[tf.Tensor, tf.Tensor | None, tf.Tensor]:
    """Items and pivots of `batch`: (z `[num_nodes[K], E]`, item biases
    `[num_nodes[K]]` or None, z of the batch's pivots `[Bp, E]`)."""
    h_prev, transformed, h_last = self._levels(batch, training)
    z, bias = self.head_and_bias(h_last)
    h_pivot = self.pivot_hidden(h_prev, batch.pivot_neighbor_index, batch.pivot_neighbor_weight,
                                training=training, transformed=transformed)
    return z, bias, self.head(h_pivot)

  def pivot_hidden(self, h_table: tf.Tensor, neighbor_index: tf.Tensor,
                   neighbor_weight: tf.Tensor, training: bool | None = None,
                   transformed: tf.Tensor | None = None) -> tf.Tensor:
    """h^K of pivots from their neighbors' h^{K-1} (module docstring).

    Args:
      h_table: float `[V, hidden_dim]`, h^{K-1} rows.
      neighbor_index: int32 `[P, Tp]` rows of `h_table`.
      neighbor_weight: float `[P, Tp]` importance weights, 0 on padding; a
        row without weight (a pivot without items) gives h = the layer's
        output for zero inputs.
      training: Keras training flag.
      transformed: optional `convs[-1].transform_neighbors(h_table)`, when
        the caller has it already (the items of the same level need it too).

    Returns:
      float32 `[P, hidden_dim]`.
    """
    conv = self.convs[-1]
    weight = tf.cast(neighbor_weight, tf.float32)
    weight = tf.math.divide_no_nan(weight, tf.reduce_sum(weight, axis=1, keepdims=True))
    self_h = tf.einsum("pt,ptd->pd", weight, tf.gather(h_table, neighbor_index))
    if transformed is None:
      transformed = conv.transform_neighbors(h_table, training=training)
    pooled = conv.pool(tf.gather(transformed, neighbor_index), neighbor_weight)
    return conv.combine(self_h, pooled, training=training)

  def _last_hidden(self, batch: minibatch.Minibatch, training: bool | None) -> tf.Tensor:
    """h^K of the level-K nodes of `batch`."""
    return self._levels(batch, training)[2]

  def _levels(self, batch: minibatch.Minibatch, training: bool | None
              ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(h^{K-1} of level K-1 `[c_{K-1}, d]`, the last layer's neighbor transform
    of it `[c_{K-1}, neighbor_dim]`, h^K of level K `[c_K, d]`)."""
    if len(batch.hops) != len(self.convs):
      raise ValueError(
          f"the minibatch has {len(batch.hops)} hops but the model has num_layers="
          f"{len(self.convs)}; build the pipeline with the model's num_layers.")
    # Only the real (unpadded) rows of each level are computed: the padded
    # input shapes keep the function from retracing, while slicing to
    # `num_nodes` inside it skips the padding (often most of a level).
    count = batch.num_nodes
    inputs = tf.nest.map_structure(lambda x: x[:count[0]], batch.inputs)
    h = self.encode_inputs(inputs, training=training)  # [c_0, hidden]
    h_prev = transformed = h
    for k, hop in enumerate(batch.hops):
      c = count[k + 1]
      conv = self.convs[k]
      h_prev = h
      # The previous level is the neighbor table: the neighbor transform runs
      # once per level-(k-1) node, then rows are gathered per (u, t) slot.
      transformed = conv.transform_neighbors(h, training=training)  # [c_{k-1}, neighbor_dim]
      pooled = conv.pool(tf.gather(transformed, hop.neighbor_index[:c]), hop.neighbor_weight[:c])
      h = conv.combine(tf.gather(h, hop.self_index[:c]), pooled, training=training)  # [c_k, hidden]
    return h_prev, transformed, h

  def encode_inputs(self, inputs: minibatch.NodeInputs, training: bool | None = None) -> tf.Tensor:
    """h^0: `NodeInputs` with U rows -> float32 `[U, hidden_dim]`."""
    return self.encoder(inputs, training=training)

  def convolve(
      self,
      k: int,
      self_h: tf.Tensor,
      neighbor_h: tf.Tensor,
      neighbor_weight: tf.Tensor,
      neighbor_index: tf.Tensor | None = None,
      training: bool | None = None,
  ) -> tf.Tensor:
    """Layer k (0-based): h^{k+1} of U nodes from h^k; see `PinSageConv.call`.

    Args:
      k: layer index in [0, num_layers).
      self_h: float `[U, hidden_dim]`.
      neighbor_h: float `[U, T, hidden_dim]`, or a table `[V, hidden_dim]`
        indexed by `neighbor_index`.
      neighbor_weight: float `[U, T]`, 0 on padding.
      neighbor_index: optional int32 `[U, T]` rows of the `neighbor_h` table.
      training: Keras training flag.

    Returns:
      float32 `[U, hidden_dim]`.
    """
    if not 0 <= k < len(self.convs):
      raise ValueError(f"layer index k must lie in [0, {len(self.convs)}), got {k}.")
    return self.convs[k](self_h, neighbor_h, neighbor_weight,
                         neighbor_index=neighbor_index, training=training)

  def head(self, h: tf.Tensor) -> tf.Tensor:
    """z = normalize(G2 ReLU(G1 h + g)): float `[U, hidden_dim]` -> `[U, embedding_dim]`."""
    z = self.head_output(self.head_hidden(h))
    return tf.math.l2_normalize(z, axis=-1, epsilon=1e-12)

  def head_and_bias(self, h: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor | None]:
    """`head(h)` and, with `config.item_bias`, `item_bias(h)` (else None),
    sharing the head's hidden layer ReLU(G1 h + g)."""
    hidden = self.head_hidden(h)
    z = tf.math.l2_normalize(self.head_output(hidden), axis=-1, epsilon=1e-12)
    if self.bias_output is None:
      return z, None
    return z, self.bias_output(hidden)[:, 0]

  def item_bias(self, h: tf.Tensor) -> tf.Tensor:
    """b = w . ReLU(G1 h + g) + c: float `[U, hidden_dim]` -> `[U]`.

    Raises:
      ValueError: the model was built without `config.item_bias`.
    """
    if self.bias_output is None:
      raise ValueError("this model has no item bias (PinSageConfig.item_bias is False).")
    return self.head_and_bias(h)[1]

  def embed_pairs(
      self, batch: minibatch.Minibatch, training: bool | None = None
  ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Embeddings of the batch's queries, positives and negatives.

    Returns:
      (z_query `[B, E]`, z_positive `[B, E]`, z_negative `[Nn, E]`,
      z_hard `[B, H, E]`), gathered from `call`'s output by the positions in
      `batch`.
    """
    z = self(batch, training=training)
    return (tf.gather(z, batch.query), tf.gather(z, batch.positive),
            tf.gather(z, batch.negative), tf.gather(z, batch.hard_negative))

  def get_config(self) -> dict[str, Any]:
    return {"config": self.config.to_dict(), "name": self.name}

  @classmethod
  def from_config(cls, config: Mapping[str, Any], custom_objects=None) -> "PinSageModel":
    del custom_objects  # All layers are built from the PinSageConfig.
    return cls(PinSageConfig.from_dict(config["config"]), name=config.get("name"))


def node_inputs_spec(encoder: EncoderConfig, num_nodes: int | None = None) -> minibatch.NodeInputs:
  """`tf.TensorSpec`s of `NodeInputs` for `encoder`'s schema (any sparse length)."""
  return minibatch.NodeInputs(
      item=tf.TensorSpec([num_nodes], tf.int32, name="item"),
      dense=tf.TensorSpec([num_nodes, encoder.dense_dim], tf.float32, name="dense"),
      log_degree=tf.TensorSpec([num_nodes], tf.float32, name="log_degree"),
      sparse=tuple(tf.TensorSpec([num_nodes, None], tf.int32, name=f"sparse_{name}")
                   for name, _ in encoder.sparse_features))


def build_variables(model: PinSageModel) -> None:
  """Creates every variable of `model` by running it on a one-node input.

  Needed before restoring into, or saving, a model that has not been called.
  """
  config = model.config
  enc = config.encoder
  inputs = minibatch.NodeInputs(
      item=tf.zeros([1], tf.int32),
      dense=tf.zeros([1, enc.dense_dim], tf.float32),
      log_degree=tf.zeros([1], tf.float32),
      sparse=tuple(tf.fill([1, 1], -1) for _ in enc.sparse_features))
  h = model.encode_inputs(inputs)
  for k in range(config.num_layers):
    h = model.convolve(k, h, h[:, None, :], tf.zeros([1, 1]))
  model.head_and_bias(h)  # the head and, with config.item_bias, the bias unit


def save_model(model: PinSageModel, directory: str | os.PathLike, overwrite: bool = False) -> None:
  """Writes `config.json` and a weights checkpoint atomically to `directory`.

  Raises:
    FileExistsError: `directory` exists and `overwrite` is False.
  """
  build_variables(model)
  with atomic.atomic_directory(directory, overwrite=overwrite) as tmp:
    tf.train.Checkpoint(model=model).write(os.path.join(tmp, CHECKPOINT_PREFIX))
    atomic.write_json(os.path.join(tmp, CONFIG_FILE),
                      {"format": _FORMAT, "config": model.config.to_dict()})


def load_config(directory: str | os.PathLike) -> PinSageConfig:
  """Reads the `PinSageConfig` saved by `save_model` in `directory`."""
  path = os.path.join(os.fspath(directory), CONFIG_FILE)
  try:
    with open(path) as f:
      saved = json.load(f)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"{path}: no model config; was this written by save_model?") from e
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg}).") from e
  if saved.get("format") != _FORMAT:
    raise ValueError(f"{path}: not a pinsage_tf model config (format={saved.get('format')!r}).")
  try:
    return PinSageConfig.from_dict(saved["config"])
  except (KeyError, TypeError, ValueError) as e:
    raise ValueError(f"{path}: bad model config: {e}") from e


def load_model(directory: str | os.PathLike) -> PinSageModel:
  """Rebuilds the model saved by `save_model` and restores its weights.

  Raises an error if any saved or model variable is left unmatched.
  """
  model = PinSageModel(load_config(directory))
  restore_weights(model, os.path.join(os.fspath(directory), CHECKPOINT_PREFIX))
  return model


def restore_weights(model: PinSageModel, checkpoint_prefix: str | os.PathLike,
                    strict: bool = True) -> None:
  """Restores `model`'s weights from a checkpoint that holds it under "model".

  Args:
    model: the model, built or not (its variables are created first).
    checkpoint_prefix: e.g. `dir/ckpt` or a `tf.train.CheckpointManager` path.
    strict: also fail when the checkpoint holds values the model does not use
      (a config mismatch). Pass False for a training checkpoint, which also
      holds the optimizer; every model variable must still be restored.

  Raises:
    AssertionError: a model variable (or, if strict, a checkpoint value) is
      unmatched -- the checkpoint was written for a different config.
  """
  build_variables(model)
  status = tf.train.Checkpoint(model=model).read(os.fspath(checkpoint_prefix))
  if strict:
    status.assert_consumed()
  else:
    status.assert_existing_objects_matched().expect_partial()


class LayerwiseModule(tf.Module):
  """A `tf.Module` exposing the model's pieces with fixed input signatures.

  For `tf.saved_model.save`: after loading, `encode_inputs(NodeInputs)`,
  `convolve_<k>(self_h, neighbor_h [U, T, d], neighbor_weight)` and
  `head(h)` run without the Python model code. `convolve_<k>` and `head` are
  also the SavedModel's serving signatures (flat tensors); `encode_inputs` is
  not, because its input is a nested `NodeInputs`.
  """

  def __init__(self, model: PinSageModel):
    super().__init__(name="pinsage_layerwise")
    build_variables(model)
    self.model = model
    config = model.config
    hidden = config.hidden_dim
    self.encode_inputs = tf.function(
        lambda inputs: model.encode_inputs(inputs, training=False),
        input_signature=[node_inputs_spec(config.encoder)])
    for k in range(config.num_layers):
      setattr(self, f"convolve_{k}", tf.function(
          lambda self_h, neighbor_h, neighbor_weight, k=k: model.convolve(
              k, self_h, neighbor_h, neighbor_weight, training=False),
          input_signature=[tf.TensorSpec([None, hidden], tf.float32, name="self_h"),
                           tf.TensorSpec([None, None, hidden], tf.float32, name="neighbor_h"),
                           tf.TensorSpec([None, None], tf.float32, name="neighbor_weight")]))
    self.head = tf.function(
        lambda h: model.head(h),
        input_signature=[tf.TensorSpec([None, hidden], tf.float32, name="h")])

  def serving_signatures(self) -> dict[str, Any]:
    """Serving signatures: `head` and `convolve_<k>`."""
    out = {"head": self.head.get_concrete_function()}
    for k in range(self.model.config.num_layers):
      out[f"convolve_{k}"] = getattr(self, f"convolve_{k}").get_concrete_function()
    return out


def export_layerwise_module(model: PinSageModel, directory: str | os.PathLike,
                            overwrite: bool = False) -> None:
  """`tf.saved_model.save`s a `LayerwiseModule` of `model` atomically."""
  module = LayerwiseModule(model)
  with atomic.atomic_directory(directory, overwrite=overwrite) as tmp:
    tf.saved_model.save(module, tmp, signatures=module.serving_signatures())
