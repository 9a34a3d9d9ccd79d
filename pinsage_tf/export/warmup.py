"""Warm-up requests: `assets.extra/tf_serving_warmup_requests` of a version.

A TFRecord of `PredictionLog`s, one request per signature, that TF Serving
(and `serving.server`) replays when it loads the version, before serving it.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.python.util import deprecation  # not in the public API
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_log_pb2

from pinsage_tf.export import signatures as signatures_lib

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


def write_warmup_requests(version_dir: str, model_name: str,
                          requests: Sequence[tuple[str, Mapping[str, np.ndarray]]]) -> str:
  """Writes `assets.extra/tf_serving_warmup_requests` (TFRecord of PredictionLog).

  TF Serving runs them when it loads the version, so the first real request
  does not pay for lazy initialisation (e.g. building the ScaNN searcher).

  Args:
    version_dir: the SavedModel directory.
    model_name: the served model name.
    requests: (signature name, {input alias: array}) pairs.

  Returns:
    The file path.
  """
  path = os.path.join(version_dir, WARMUP_FILE)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with tf.io.TFRecordWriter(path) as writer:
    for signature, inputs in requests:
      request = predict_pb2.PredictRequest()
      request.model_spec.name = model_name
      request.model_spec.signature_name = signature
      for alias, value in inputs.items():
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
      log = prediction_log_pb2.PredictionLog(
          predict_log=prediction_log_pb2.PredictLog(request=request))
      writer.write(log.SerializeToString())
  return path


def read_warmup_requests(version_dir: str) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
  """The warm-up requests of `version_dir`: (signature key, {input alias: array}) pairs.

  A request naming no signature is for `serving_default`, as TF Serving reads it.
  """
  # TensorFlow's record reader, not tf.data: a dataset costs 10-50 ms to set up
  # for the few records of a version (both check every record's CRC). Its
  # deprecation notice recommends tf.data, which is what is avoided here.
  with deprecation.silence():
    records = list(tf.compat.v1.io.tf_record_iterator(os.path.join(version_dir, WARMUP_FILE)))
  for record in records:
    request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
    yield (request.model_spec.signature_name or signatures_lib.DEFAULT_SIGNATURE,
           {alias: tf.make_ndarray(proto) for alias, proto in request.inputs.items()})


def replay_warmup_requests(version_dir: str, loaded: Any) -> int:
  """Runs every warmup request of `version_dir` through `loaded` (a loaded SavedModel).

  Returns:
    The number of requests run. Raises whatever a request raises.
  """
  count = 0
  for signature, inputs in read_warmup_requests(version_dir):
    loaded.signatures[signature](**{alias: tf.constant(value) for alias, value in inputs.items()})
    count += 1
  return count
