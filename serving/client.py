"""Minimal clients for a TF Serving-compatible server (this one or the real one).

REST uses only `urllib`; gRPC uses the stock `tensorflow_serving.apis` stubs.

  from serving import client
  client.rest_predict("localhost:8501", "pinsage", instances=["item1", "item2"])
  # -> {"predictions": [...]}
  outputs, spec = client.grpc_predict("localhost:8500", "pinsage",
                                      {"item_ids": np.array([b"item1"], dtype=object)})
  # -> ({"ids": array [1, k], "scores": array [1, k]}, ModelSpec(name, version, ...))
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Mapping, Sequence

import grpc
import numpy as np

import pinsage_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc


class RestError(Exception):
  """A non-200 REST answer: `status` (HTTP code) and the server's `message`."""

  def __init__(self, status: int, message: str):
    super().__init__(f"HTTP {status}: {message}")
    self.status = status
    self.message = message


def _model_path(model: str, version: int | None, label: str | None) -> str:
  if version is not None and label is not None:
    raise ValueError("pass version or label, not both")
  path = f"/v1/models/{model}"
  if version is not None:
    path += f"/versions/{int(version)}"
  elif label is not None:
    path += f"/labels/{label}"
  return path


def rest_request(address: str, method: str, path: str, body: bytes | None = None,
                 timeout: float = 30.0) -> Any:
  """Sends one REST request to `address` ("host:port" or "http://host:port").

  Returns:
    The decoded JSON answer.

  Raises:
    RestError: for any non-200 status, with the server's "error" message.
  """
  base = address if address.startswith("http") else f"http://{address}"
  request = urllib.request.Request(base + path, data=body, method=method,
                                   headers={"Content-Type": "application/json"})
  try:
    with urllib.request.urlopen(request, timeout=timeout) as response:
      return json.loads(response.read())
  except urllib.error.HTTPError as e:
    payload = e.read()
    try:
      message = json.loads(payload).get("error", payload.decode("utf-8", "replace"))
    except (ValueError, AttributeError):
      message = payload.decode("utf-8", "replace")
    raise RestError(e.code, message) from None


def rest_predict(address: str, model: str, *, instances: Sequence[Any] | None = None,
                 inputs: Any = None, signature_name: str | None = None,
                 version: int | None = None, label: str | None = None,
                 timeout: float = 30.0) -> dict:
  """POST .../MODEL[/versions/N|/labels/L]:predict with instances (row) or inputs (columnar).

  Returns:
    {"predictions": [...]} for `instances`, {"outputs": ...} for `inputs`.
  """
  if (instances is None) == (inputs is None):
    raise ValueError("pass exactly one of instances= (row format) or inputs= (columnar)")
  payload: dict[str, Any] = {}
  if signature_name:
    payload["signature_name"] = signature_name
  if instances is not None:
    payload["instances"] = list(instances)
  else:
    payload["inputs"] = inputs
  return rest_request(address, "POST", _model_path(model, version, label) + ":predict",
                      json.dumps(payload).encode("utf-8"), timeout)


def rest_status(address: str, model: str, *, version: int | None = None,
                label: str | None = None, timeout: float = 30.0) -> dict:
  """GET /v1/models/MODEL[...]: the model_version_status JSON."""
  return rest_request(address, "GET", _model_path(model, version, label), None, timeout)


def _fill_model_spec(spec: Any, model: str, version: int | None, label: str | None,
                     signature_name: str | None = None) -> None:
  spec.name = model
  if version is not None and label is not None:
    raise ValueError("pass version or label, not both")
  if version is not None:
    spec.version.value = int(version)
  elif label is not None:
    spec.version_label = label
  if signature_name:
    spec.signature_name = signature_name


def grpc_predict(target: str | grpc.Channel, model: str, inputs: Mapping[str, Any], *,
                 signature_name: str | None = None, version: int | None = None,
                 label: str | None = None, output_filter: Sequence[str] = (),
                 timeout: float = 30.0) -> tuple[dict[str, np.ndarray], Any]:
  """PredictionService.Predict with the stock stub.

  Args:
    target: "host:port" or an open channel (reuse one for many calls).
    inputs: alias -> array-like (converted with tf.make_tensor_proto; pass
      strings as bytes / object arrays).

  Returns:
    (alias -> np.ndarray, response ModelSpec with the version that answered).

  Raises:
    grpc.RpcError: with the server's status code and details.
  """
  channel = grpc.insecure_channel(target) if isinstance(target, str) else target
  try:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    _fill_model_spec(request.model_spec, model, version, label, signature_name)
    for alias, value in inputs.items():
      request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
    request.output_filter.extend(output_filter)
    response = stub.Predict(request, timeout=timeout)
    outputs = {alias: tf.make_ndarray(proto) for alias, proto in response.outputs.items()}
    return outputs, response.model_spec
  finally:
    if isinstance(target, str):
      channel.close()


def grpc_metadata(target: str, model: str, *, version: int | None = None,
                  label: str | None = None, timeout: float = 30.0) -> Any:
  """PredictionService.GetModelMetadata: the response with the SignatureDefMap Any."""
  with grpc.insecure_channel(target) as channel:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    _fill_model_spec(request.model_spec, model, version, label)
    request.metadata_field.append("signature_def")
    return stub.GetModelMetadata(request, timeout=timeout)


def grpc_status(target: str, model: str, *, version: int | None = None,
                label: str | None = None, timeout: float = 30.0) -> Any:
  """ModelService.GetModelStatus."""
  with grpc.insecure_channel(target) as channel:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    _fill_model_spec(request.model_spec, model, version, label)
    return stub.GetModelStatus(request, timeout=timeout)
