"""Warm-up: replays a version's `assets.extra/tf_serving_warmup_requests` before it serves.

TF Serving runs these requests while it loads a version, so the first real
request does not pay for lazy initialisation (tracing, building a ScaNN
searcher, allocating buffers). Contract of `replay(servable, ...)`:

* The file is a TFRecord of `tensorflow.serving.PredictionLog` protos; a
  version without it replays nothing.
* Every `predict_log` request runs through `Servable.predict` (the same
  validation as real requests) `num_request_iterations` times. Any failure
  raises `ServingError`, which fails the load: a version whose own warm-up
  requests fail is not served.
* At most `MAX_RECORDS` (1000, TF Serving's limit) records; more, a record
  that does not parse, or a log type other than predict (this server answers
  only Predict) fail the load as well, naming the file and the record.
"""

from __future__ import annotations

import os

import grpc

import pinsage_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf
from google.protobuf import message as protobuf_message
from tensorflow_serving.apis import prediction_log_pb2

from serving import proto_codec
from serving import servable as servable_lib
from serving.errors import ServingError

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_RECORDS = 1000


def replay(servable: servable_lib.Servable, *, num_request_iterations: int = 1,
           max_batch_size: int = 0) -> int:
  """Runs the warm-up requests of `servable.path` on it.

  Args:
    servable: the freshly loaded version.
    num_request_iterations: times each request is run (TF Serving's
      `num_request_iterations`, default 1).
    max_batch_size: the server's batch bound, applied as to real requests.

  Returns:
    The number of records replayed (0 without a warm-up file).

  Raises:
    ServingError: INVALID_ARGUMENT for a malformed or unsupported file, or
      whatever a request raises.
  """
  path = os.path.join(servable.path, WARMUP_FILE)
  if not tf.io.gfile.exists(path):
    return 0
  count = 0
  try:
    records = list(tf.data.TFRecordDataset(path).take(MAX_RECORDS + 1).as_numpy_iterator())
  except tf.errors.OpError as e:
    raise ServingError(grpc.StatusCode.DATA_LOSS,
                       f"Failed to read warmup requests {path}: {e.message}") from None
  if len(records) > MAX_RECORDS:
    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"Number of warmup records exceeds the maximum ({MAX_RECORDS}) at {path}")
  for record in records:
    count += 1
    where = f"warmup record {count} of {path}"
    try:
      log = prediction_log_pb2.PredictionLog.FromString(record)
    except protobuf_message.DecodeError:
      raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                         f"{where} is not a PredictionLog") from None
    kind = log.WhichOneof("log_type")
    if kind != "predict_log":
      raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                         f"Unsupported log_type for warmup: {kind} ({where}); this server "
                         "replays predict_log records only")
    request = log.predict_log.request
    try:
      inputs = {alias: proto_codec.tensor_proto_to_array(alias, proto)
                for alias, proto in request.inputs.items()}
      for _ in range(num_request_iterations):
        servable.predict(request.model_spec.signature_name, inputs,
                         list(request.output_filter), max_batch_size)
    except ServingError as e:
      raise ServingError(e.code, f"{where} failed: {e.message}") from None
  return count
