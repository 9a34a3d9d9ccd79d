"""Tiny SavedModels for the server's tests and benchmark.

`build_lookup_model(path, score_offset)` mimics a PinSage retrieval export:

  serving_default: item_ids string [B]  -> ids string [B, 2], scores float32 [B, 2]
  embed:           item_ids string [B]  -> embeddings float32 [B, 2]

Items "a".."e" have the 2-d embeddings in `LOOKUP_EMBEDDINGS`; scores are
inner products with every item plus `score_offset` (so a test can tell model
versions apart), top 2 per query. An id outside the vocabulary fails inside the
graph with tf.debugging's InvalidArgumentError "unknown item id", like the
PinSage exports.

`build_scann_model(path)` is the same kind of retrieval served through a
tensorflow-recommenders ScaNN layer (custom "Scann>..." ops, so it loads only
after `import scann`):

  serving_default: item_ids string [B] -> ids string [B, 5], scores float32 [B, 5]

over items "item0".."item199" with seeded random 8-d embeddings.

`build_pinsage_retrieval(path, with_pybind=True)` is a `pinsage_retrieval`
version as `pinsage_tf.export` writes it (`RetrievalModule` over a ScaNN
tree + AH index of items "item0".."item1999", seeded random 8-d embeddings,
item biases, k = 5), with ScaNN's pybind assets unless `with_pybind=False`:

  related_items / serving_default: item_ids string [B] -> neighbor_ids string [B, 5],
                                                         scores float32 [B, 5]
  related_items_by_embedding:      embeddings float32 [B, 8] -> the same

`build_float_model(path)`:

  serving_default: x float32 [B, 3] -> y float32 [B] = x . (1, 2, 3) + 0.5
  multi:           a float32 [B, 2], b int64 [B] -> sum float32 [B] = a0 + a1 + b,
                                                    twice int64 [B] = 2 b
  bytes:           data_bytes string [B] -> length int32 [B], echo_bytes string [B]
  slow:            x float32 [B, 3], delay_us int64 [B] -> y as serving_default,
                   after sleeping max(delay_us) microseconds inside the graph.
"""

from __future__ import annotations

import os
import shutil

import numpy as np

import pinsage_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf
# tf.data's sleep transformation is the only in-graph sleep op; it is used by
# the "slow" test signature only.
from tensorflow.python.data.experimental.ops import testing as tf_data_testing

LOOKUP_VOCAB = ("a", "b", "c", "d", "e")
LOOKUP_EMBEDDINGS = np.array(
    [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.5], [-1.0, 0.0]], dtype=np.float32)
FLOAT_WEIGHTS = np.array([1.0, 2.0, 3.0], dtype=np.float32)
FLOAT_BIAS = 0.5


class _LookupModel(tf.Module):

  def __init__(self, score_offset: float):
    super().__init__()
    self._vocab = tf.constant(LOOKUP_VOCAB)
    self._table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            self._vocab, tf.range(len(LOOKUP_VOCAB), dtype=tf.int64)), default_value=-1)
    self._embeddings = tf.Variable(LOOKUP_EMBEDDINGS, trainable=False)
    self._offset = tf.constant(score_offset, tf.float32)

  def _indices(self, item_ids: tf.Tensor) -> tf.Tensor:
    indices = self._table.lookup(item_ids)
    with tf.control_dependencies([
        tf.debugging.assert_non_negative(indices, message="unknown item id")]):
      return tf.identity(indices)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="item_ids")])
  def top2(self, item_ids):
    queries = tf.gather(self._embeddings, self._indices(item_ids))  # [B, 2]
    scores = tf.matmul(queries, self._embeddings, transpose_b=True) + self._offset  # [B, N]
    top = tf.math.top_k(scores, k=2)
    return {"ids": tf.gather(self._vocab, top.indices), "scores": top.values}

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="item_ids")])
  def embed(self, item_ids):
    return {"embeddings": tf.gather(self._embeddings, self._indices(item_ids))}


class _FloatModel(tf.Module):

  def __init__(self):
    super().__init__()
    self._w = tf.Variable(FLOAT_WEIGHTS[:, None], trainable=False)

  def _linear(self, x):
    return tf.matmul(x, self._w)[:, 0] + FLOAT_BIAS

  @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
  def linear(self, x):
    return {"y": self._linear(x)}

  @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="a"),
                                tf.TensorSpec([None], tf.int64, name="b")])
  def multi(self, a, b):
    return {"sum": tf.reduce_sum(a, axis=1) + tf.cast(b, tf.float32), "twice": 2 * b}

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="data_bytes")])
  def bytes_fn(self, data_bytes):
    return {"length": tf.strings.length(data_bytes), "echo_bytes": data_bytes}

  @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x"),
                                tf.TensorSpec([None], tf.int64, name="delay_us")])
  def slow(self, x, delay_us):
    # take(1) stops get_single_element from pulling (and sleeping for) a second element.
    delayed = tf.data.Dataset.from_tensors(x).apply(
        tf_data_testing.sleep(tf.reduce_max(delay_us))).take(1).get_single_element()
    return {"y": self._linear(delayed)}


def build_lookup_model(path: str | os.PathLike, score_offset: float = 0.0) -> str:
  """Saves the lookup model at `path` (a version directory); returns the path."""
  model = _LookupModel(score_offset)
  tf.saved_model.save(model, os.fspath(path),
                      signatures={"serving_default": model.top2, "embed": model.embed})
  return os.fspath(path)


def build_float_model(path: str | os.PathLike) -> str:
  """Saves the float model at `path` (a version directory); returns the path."""
  model = _FloatModel()
  tf.saved_model.save(model, os.fspath(path), signatures={
      "serving_default": model.linear, "multi": model.multi, "bytes": model.bytes_fn,
      "slow": model.slow})
  return os.fspath(path)


class _ScannModel(tf.Module):

  def __init__(self, num_items: int, dim: int, seed: int):
    super().__init__()
    import tensorflow_recommenders as tfrs  # pylint: disable=g-import-not-at-top
    ids = tf.constant([f"item{i}" for i in range(num_items)])
    embeddings = np.random.default_rng(seed).normal(size=(num_items, dim)).astype(np.float32)
    self._table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(ids, tf.range(num_items, dtype=tf.int64)),
        default_value=-1)
    self._embeddings = tf.Variable(embeddings, trainable=False)
    self._scann = tfrs.layers.factorized_top_k.ScaNN(
        k=5, num_leaves=4, num_leaves_to_search=2, num_reordering_candidates=20)
    self._scann.index_from_dataset(
        tf.data.Dataset.from_tensor_slices((ids, embeddings)).batch(64))

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="item_ids")])
  def top5(self, item_ids):
    indices = self._table.lookup(item_ids)
    with tf.control_dependencies([
        tf.debugging.assert_non_negative(indices, message="unknown item id")]):
      queries = tf.gather(self._embeddings, indices)  # [B, 8]
    scores, ids = self._scann(queries)
    return {"ids": ids, "scores": scores}


def build_scann_model(path: str | os.PathLike, num_items: int = 200, dim: int = 8,
                      seed: int = 0) -> str:
  """Saves the ScaNN retrieval model at `path` (a version directory); returns the path."""
  model = _ScannModel(num_items, dim, seed)
  tf.saved_model.save(model, os.fspath(path), signatures={"serving_default": model.top5},
                      options=tf.saved_model.SaveOptions(namespace_whitelist=["Scann"]))
  return os.fspath(path)


def build_pinsage_retrieval(path: str | os.PathLike, with_pybind: bool = True,
                            num_items: int = 2000, dim: int = 8, k: int = 5,
                            seed: int = 0) -> str:
  """Saves a `pinsage_retrieval` version at `path` (see the module docstring); returns it."""
  # The library is imported here: only this builder needs ScaNN.
  from pinsage_tf import retrieval_pybind  # pylint: disable=g-import-not-at-top
  from pinsage_tf import scann_index  # pylint: disable=g-import-not-at-top
  from pinsage_tf.export import retrieval  # pylint: disable=g-import-not-at-top
  path = os.fspath(path)
  scratch = path + ".build"
  os.makedirs(scratch)
  rng = np.random.default_rng(seed)
  vectors = rng.standard_normal((num_items, dim)).astype(np.float32)
  vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
  bias = (0.1 * rng.standard_normal(num_items)).astype(np.float32)
  ids = np.array([f"item{i}" for i in range(num_items)])
  vocab = os.path.join(scratch, "items.txt")
  with open(vocab, "w", encoding="utf-8") as f:
    f.write("\n".join(ids) + "\n")
  config = scann_index.resolve_config(num_items, k + 1, scann_index.ScannConfig(
      algorithm="tree_ah", num_leaves=20, num_leaves_to_search=4, reorder_num_neighbors=30))
  artifacts = os.path.join(scratch, "index")
  state = scann_index.build_state(np.concatenate([vectors, bias[:, None]], axis=1), config,
                                  k + 1, artifacts_dir=artifacts)
  module = retrieval.RetrievalModule(ids, vectors, vocab, k, state, bias=bias,
                                     scann_reorder=config.reorder_num_neighbors,
                                     scann_leaves=config.num_leaves_to_search)
  tf.saved_model.save(module, path, signatures=module.signatures(),
                      options=scann_index.SAVE_OPTIONS)
  if with_pybind:
    retrieval_pybind.write_assets(path, artifacts, module.pybind_search())
  shutil.rmtree(scratch)  # the saved model copied the vocabulary into its assets
  return path
