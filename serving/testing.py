"""Shared by the serving tests: signatures (codec, validation) and PredictRequests (gRPC)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import predict_pb2

from serving import signatures as sig

# related_items-like: string ids in, [B, 2] ids and scores out.
STR_IDS = sig.Signature(
    name="serving_default", method_name=sig.PREDICT_METHOD,
    inputs={"item_ids": sig.TensorSpecInfo("item_ids", tf.string, (None,))},
    outputs={"ids": sig.TensorSpecInfo("ids", tf.string, (None, 2)),
             "scores": sig.TensorSpecInfo("scores", tf.float32, (None, 2))})
# One [B, 3] float input, one [B] float output.
FLOAT_X = sig.Signature(
    name="serving_default", method_name=sig.PREDICT_METHOD,
    inputs={"x": sig.TensorSpecInfo("x", tf.float32, (None, 3))},
    outputs={"y": sig.TensorSpecInfo("y", tf.float32, (None,))})


def predict_request(model: str, inputs: Mapping[str, Any], signature: str = "",
                    version: int | None = None, label: str | None = None,
                    output_filter: Sequence[str] = ()) -> Any:
  """A PredictRequest; input values are TensorProtos or arrays (tf.make_tensor_proto)."""
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model
  request.model_spec.signature_name = signature
  if version is not None:
    request.model_spec.version.value = version
  if label is not None:
    request.model_spec.version_label = label
  for alias, value in inputs.items():
    request.inputs[alias].CopyFrom(value if isinstance(value, tensor_pb2.TensorProto)
                                   else tf.make_tensor_proto(value))
  request.output_filter.extend(output_filter)
  return request
