"""One loaded version of a SavedModel, and how requests run on it.

Contract:

* `Servable(name, version, path, tags)` reads the MetaGraphDef whose tag set
  equals `tags` and loads the SavedModel; it raises `ServingError` (NOT_FOUND
  for a missing file or tag set, DATA_LOSS for a file that does not parse) or
  whatever TensorFlow raises while loading.
* A `Servable` is immutable once built, so a request can keep one for its
  whole lifetime while the manager loads and unloads versions.
* `Servable.predict(signature_name, inputs, ...)` validates the inputs against
  the signature (`serving.validation`) and runs it; everything it raises is a
  `ServingError` (`errors.error_from_exception` translates graph errors).
* A `pinsage_retrieval` version exported with ScaNN's pybind index
  (`pinsage_tf.retrieval_pybind.ASSETS_DIR`) answers its ScaNN
  signatures through that searcher on `scann_threads` threads (default: every
  core), with the SavedModel's outputs; requests it does not answer (empty
  batches, unknown ids, non-finite embeddings) and the other signatures run the
  SavedModel, so results and errors are the SavedModel's. Without the assets
  every signature runs the SavedModel.
* `import_custom_ops()` registers ScaNN's TF ops, which SavedModels with ScaNN
  retrieval need; call it once before loading.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from absl import logging
import grpc
import numpy as np

import pinsage_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf
from google.protobuf import message as protobuf_message
from google.protobuf import text_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2

from pinsage_tf import retrieval_pybind
from serving import errors
from serving import signatures
from serving import validation
from serving.errors import ServingError


def import_custom_ops() -> bool:
  """Registers ScaNN's TF ops, which SavedModels with ScaNN retrieval need.

  Returns:
    True if scann was imported; False (logged) if it is not installed, in which
    case only models without ScaNN ops load.
  """
  try:
    import scann  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    logging.warning("scann is not importable (%s); SavedModels using ScaNN ops "
                    "will fail to load.", e)
    return False
  return True


class Servable:
  """One loaded version of a model.

  Attributes:
    name: model name.
    version: version number.
    path: the version directory.
    signatures: every SignatureDef of the served MetaGraphDef, by name.
    signature_def_map: the same as a `tensorflow.serving.SignatureDefMap` proto.
  """

  def __init__(self, name: str, version: int, path: str, tags: Sequence[str], *,
               scann_threads: int | None = None):
    self.name = name
    self.version = version
    self.path = path
    meta_graph = read_meta_graph(path, tags)
    self.signature_def_map = get_model_metadata_pb2.SignatureDefMap()
    for key, signature_def in meta_graph.signature_def.items():
      self.signature_def_map.signature_def[key].CopyFrom(signature_def)
    self.signatures = {
        key: signatures.signature_from_proto(key, signature_def)
        for key, signature_def in meta_graph.signature_def.items()
    }
    self._loaded = tf.saved_model.load(path, tags=list(tags))
    self._functions = dict(self._loaded.signatures.items())
    self._pybind = None
    if retrieval_pybind.has_assets(path):
      self._pybind = retrieval_pybind.PybindRetrieval(
          path, self._loaded, scann_threads or os.cpu_count() or 1)
      logging.info("%s version %d: %s answered by ScaNN's pybind searcher", name, version,
                   ", ".join(sorted(self._pybind.signatures)))

  @property
  def pybind_signatures(self) -> frozenset[str]:
    """Signature keys answered by ScaNN's pybind searcher (empty: all by the SavedModel)."""
    return self._pybind.signatures if self._pybind is not None else frozenset()

  def signature(self, name: str) -> signatures.Signature:
    """The named signature ("" -> serving_default) for gRPC requests.

    Raises:
      ServingError: FAILED_PRECONDITION 'Serving signature key "X" not found.'
    """
    key = name or signatures.DEFAULT_SIGNATURE
    if key not in self.signatures:
      raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                         f'Serving signature key "{key}" not found.')
    return self.signatures[key]

  def rest_signature(self, name: str) -> signatures.Signature:
    """Like `signature`, with the REST API's INVALID_ARGUMENT message."""
    key = name or signatures.DEFAULT_SIGNATURE
    if key not in self.signatures:
      raise errors.invalid_argument(
          f'Serving signature name: "{key}" not found in signature def')
    return self.signatures[key]

  def predict(self, signature_name: str, inputs: Mapping[str, np.ndarray],
              output_filter: Sequence[str] = (), max_batch_size: int = 0
              ) -> dict[str, np.ndarray]:
    """Validates the inputs and runs the signature.

    Args:
      signature_name: "" means serving_default.
      inputs: alias -> array ([B, ...] for batched inputs).
      output_filter: aliases to return; empty = all outputs.
      max_batch_size: see `validation.validate_inputs`.

    Returns:
      alias -> output array (DT_STRING outputs as object arrays of bytes).

    Raises:
      ServingError: validation failures, and errors raised by the graph itself
        (e.g. tf.debugging assertions -> INVALID_ARGUMENT with their message).
    """
    signature = self.signature(signature_name)
    validation.check_signature_is_runnable(signature)
    validation.validate_inputs(signature, inputs, max_batch_size=max_batch_size)
    aliases = validation.check_output_filter(signature, output_filter)
    function = self._functions.get(signature.name)
    if function is None:
      raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                         f'Serving signature key "{signature.name}" is not callable.')
    try:
      if self._pybind is not None and signature.name in self._pybind.signatures:
        outputs = self._pybind.run(signature.name, inputs)
        if outputs is not None:
          return {alias: outputs[alias] for alias in aliases}
      feeds = {alias: tf.constant(array, dtype=signature.inputs[alias].dtype)
               for alias, array in inputs.items()}
      results = function(**feeds)
      return {alias: results[alias].numpy() for alias in aliases}
    except Exception as e:  # pylint: disable=broad-except
      raise errors.error_from_exception(e) from None


def read_meta_graph(path: str, tags: Sequence[str]) -> Any:
  """The MetaGraphDef in `path` (saved_model.pb or .pbtxt) whose tag set equals `tags`.

  Raises:
    ServingError: NOT_FOUND if there is no SavedModel file or no such tag set,
      DATA_LOSS if the file does not parse.
  """
  saved_model = saved_model_pb2.SavedModel()
  pb_path = os.path.join(path, "saved_model.pb")
  pbtxt_path = os.path.join(path, "saved_model.pbtxt")
  try:
    if os.path.exists(pb_path):
      with open(pb_path, "rb") as f:
        saved_model.ParseFromString(f.read())
    elif os.path.exists(pbtxt_path):
      with open(pbtxt_path, encoding="utf-8") as f:
        text_format.Parse(f.read(), saved_model)
    else:
      raise ServingError(grpc.StatusCode.NOT_FOUND,
                         f"SavedModel file does not exist at: {pb_path}")
  except (protobuf_message.DecodeError, text_format.ParseError, UnicodeDecodeError) as e:
    raise ServingError(grpc.StatusCode.DATA_LOSS,
                       f"Can't parse the SavedModel in {path}: {e}") from None
  wanted = set(tags)
  for meta_graph in saved_model.meta_graphs:
    if set(meta_graph.meta_info_def.tags) == wanted:
      return meta_graph
  available = [sorted(m.meta_info_def.tags) for m in saved_model.meta_graphs]
  raise ServingError(
      grpc.StatusCode.NOT_FOUND,
      f"Could not find meta graph def matching supplied tags: {{ {' '.join(sorted(wanted))} }}. "
      f"Available tag sets: {available}")
