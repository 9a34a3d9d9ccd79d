"""Tests for serving.grpc_service, in process: malformed requests and deadlines.

Every malformed request must get a 4xx-class gRPC status (INVALID_ARGUMENT,
NOT_FOUND, FAILED_PRECONDITION, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED) with
TF Serving's message, never INTERNAL / UNKNOWN; a tensor that declares far more
elements than its message carries is rejected before it is decoded.
"""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest

import pinsage_tf  # noqa: F401
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from serving import grpc_service
from serving import model_manager
from serving import servable as servable_lib
from serving import server_config
from serving import testing
from serving import toy_models

_MAX_BATCH = 8
_MAX_BYTES = 64 << 10
_CALLS: list[str] = []  # signatures that reached a model, in order


def _recording_loader(name, version, path, tags):
  servable = servable_lib.Servable(name, version, path, tags)
  predict = servable.predict

  def recorded(signature_name, *args, **kwargs):
    _CALLS.append(signature_name)
    return predict(signature_name, *args, **kwargs)

  servable.predict = recorded
  return servable


@pytest.fixture(scope="module")
def address(tmp_path_factory):
  base = tmp_path_factory.mktemp("grpc_models")
  toy_models.build_lookup_model(base / "lookup" / "1")
  toy_models.build_float_model(base / "float" / "1")
  configs = [server_config.ModelConfig("lookup", str(base / "lookup"),
                                       version_labels={"stable": 1}),
             server_config.ModelConfig("float", str(base / "float"))]
  manager = model_manager.ModelManager(
      configs, loader=_recording_loader,
      limits=server_config.ServingLimits(max_concurrent_requests=1, max_queued_requests=4,
                                         max_batch_size=_MAX_BATCH))
  manager.poll_once()
  manager.apply_version_labels()
  server, port = grpc_service.create_server(manager, host="127.0.0.1", port=0, max_threads=8,
                                            max_request_bytes=_MAX_BYTES)
  server.start()
  yield f"127.0.0.1:{port}"
  server.stop(0)
  manager.stop(5)


def _request(model="float", inputs=None, **kwargs):
  inputs = {"x": np.ones([1, 3], np.float32)} if inputs is None else inputs
  return testing.predict_request(model, inputs, **kwargs)


def _proto(dtype=types_pb2.DT_FLOAT, dims=(1, 3), **values):
  proto = tensor_pb2.TensorProto(dtype=dtype)
  for size in dims:
    proto.tensor_shape.dim.add(size=size)
  for field, value in values.items():
    if field == "tensor_content":
      proto.tensor_content = value
    else:
      getattr(proto, field).extend(value)
  return proto


def _unknown_rank():
  proto = _proto(dims=(), float_val=[1.0])
  proto.tensor_shape.unknown_rank = True
  return proto


_IDS = {"item_ids": np.array([b"a"], dtype=object)}
_INVALID = grpc.StatusCode.INVALID_ARGUMENT
# (id, request, status code, substring of the message)
_BAD_PREDICTS = [
    ("no_model_spec", predict_pb2.PredictRequest(), _INVALID, "Missing ModelSpec"),
    ("unknown_model", _request("nope"), grpc.StatusCode.NOT_FOUND,
     "Servable not found for request: Latest(nope)"),
    ("unknown_version", _request(version=7), grpc.StatusCode.NOT_FOUND,
     "Specific(float, 7)"),
    ("int64_max_version", _request(version=(1 << 63) - 1), grpc.StatusCode.NOT_FOUND,
     "Specific(float, 9223372036854775807)"),
    ("unknown_label", _request("lookup", _IDS, label="beta"), _INVALID,
     "Unrecognized servable version label: beta"),
    ("label_of_other_model", _request(label="stable"), _INVALID,
     "Unrecognized servable version label: stable"),
    ("unknown_signature", _request(signature="nope"), grpc.StatusCode.FAILED_PRECONDITION,
     'Serving signature key "nope" not found.'),
    ("dt_invalid", _request(inputs={"x": _proto(dtype=types_pb2.DT_INVALID)}), _INVALID,
     "tensor parsing error: x: dtype is DT_INVALID"),
    ("unknown_dtype_enum", _request(inputs={"x": _proto(dtype=999)}), _INVALID,
     "tensor parsing error: x: unknown dtype enum 999"),
    ("unknown_rank", _request(inputs={"x": _unknown_rank()}), _INVALID,
     "tensor parsing error: x: the tensor's shape has an unknown rank"),
    ("negative_dim_minus_1", _request(inputs={"x": _proto(dims=(-1, 3), float_val=[1.0])}),
     _INVALID, "tensor parsing error: x: dimension 0 has size -1; sizes must be >= 0"),
    ("negative_dim_minus_5", _request(inputs={"x": _proto(dims=(1, -5), float_val=[1.0])}),
     _INVALID, "dimension 1 has size -5"),
    ("negative_huge_dim", _request(inputs={"x": _proto(dims=(-(1 << 62), 3))}), _INVALID,
     "sizes must be >= 0"),
    ("declares_2e6_rows", _request(inputs={"x": _proto(dims=(2_000_000, 3), float_val=[1.0])}),
     _INVALID, "has batch size 2000000, more than this server's --max_batch_size=8"),
    ("declares_2e6_x_64", _request(inputs={"x": _proto(dims=(2_000_000, 64), float_val=[1.0])}),
     _INVALID, "has shape [2000000,64] but signature 'serving_default' expects [-1,3]"),
    ("declares_2e9_wide_row", _request(inputs={"x": _proto(dims=(1, 2_000_000_000))}),
     _INVALID, "has shape [1,2000000000]"),
    ("declares_2e6_strings", _request("lookup", {"item_ids": _proto(
        dtype=types_pb2.DT_STRING, dims=(2_000_000,), string_val=[b"a"])}),
     _INVALID, "batch size 2000000"),
    ("content_too_short", _request(inputs={"x": _proto(tensor_content=b"\0" * 5)}), _INVALID,
     "tensor parsing error: x"),
    ("too_many_values", _request(inputs={"x": _proto(float_val=[1.0] * 4)}), _INVALID,
     "tensor parsing error: x"),
    ("double_for_float", _request(inputs={"x": np.ones([1, 3], np.float64)}), _INVALID,
     "input 'x' has dtype double but signature 'serving_default' expects float"),
    ("int64_for_float", _request(inputs={"x": np.ones([1, 3], np.int64)}), _INVALID,
     "has dtype int64"),
    ("string_for_float", _request(inputs={"x": np.array([[b"a"] * 3], dtype=object)}),
     _INVALID, "has dtype string"),
    ("float_for_string", _request("lookup", {"item_ids": np.ones([1], np.float32)}), _INVALID,
     "has dtype float but signature 'serving_default' expects string"),
    ("wrong_width", _request(inputs={"x": np.ones([1, 4], np.float32)}), _INVALID,
     "expects [-1,3]"),
    ("wrong_rank", _request(inputs={"x": np.ones([3], np.float32)}), _INVALID,
     "has shape [3]"),
    ("scalar_input", _request(inputs={"x": np.float32(1.0)}), _INVALID, "has shape []"),
    ("empty_batch", _request(inputs={"x": np.ones([0, 3], np.float32)}), _INVALID,
     "empty batch"),
    ("batch_over_limit", _request(inputs={"x": np.ones([_MAX_BATCH + 1, 3], np.float32)}),
     _INVALID, f"--max_batch_size={_MAX_BATCH}"),
    ("no_inputs", _request(inputs={}), _INVALID, "Missing but required: {x}."),
    ("extra_input", _request(inputs={"x": np.ones([1, 3], np.float32),
                                     "z": np.ones([1], np.float32)}),
     _INVALID, "Sent extra: {z}."),
    ("wrong_alias", _request(inputs={"y": np.ones([1, 3], np.float32)}), _INVALID,
     "input tensor alias not found in signature: y"),
    ("missing_one_of_two", _request(inputs={"a": np.ones([1, 2], np.float32)},
                                    signature="multi"), _INVALID, "Missing but required: {b}."),
    ("mismatched_batches", _request(inputs={"a": np.ones([2, 2], np.float32),
                                            "b": np.ones([3], np.int64)}, signature="multi"),
     _INVALID, ""),
    ("unknown_output_filter", _request(output_filter=["nope"]), _INVALID,
     "output tensor alias not found in signature: nope"),
    ("duplicate_output_filter", _request(output_filter=["y", "y"]), _INVALID,
     "duplicate output tensor alias: y"),
    ("unknown_item_id", _request("lookup", {"item_ids": np.array([b"zz"], dtype=object)}),
     _INVALID, "unknown item id"),
    ("message_too_large", _request("lookup", {"item_ids": np.array([b"x" * (_MAX_BYTES + 10)],
                                                                    dtype=object)}),
     grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
]


def _predict(address, request, timeout=30):
  with grpc.insecure_channel(address) as channel:
    return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
        request, timeout=timeout)


@pytest.mark.parametrize("request_, code, message", [c[1:] for c in _BAD_PREDICTS],
                         ids=[c[0] for c in _BAD_PREDICTS])
def test_malformed_predict_requests_get_tf_serving_errors(address, request_, code, message):
  with pytest.raises(grpc.RpcError) as info:
    _predict(address, request_)
  assert info.value.code() == code, info.value.details()
  assert message in info.value.details()
  # The server still answers.
  response = _predict(address, _request())
  assert tf.make_ndarray(response.outputs["y"]).tolist() == [6.5]


def test_malformed_requests_reach_no_model(address):
  """Requests rejected on their declared shapes are not decoded nor run."""
  before = len(_CALLS)
  for name in ("declares_2e6_rows", "declares_2e6_x_64", "negative_dim_minus_1",
               "declares_2e6_strings", "double_for_float"):
    request = next(c[1] for c in _BAD_PREDICTS if c[0] == name)
    with pytest.raises(grpc.RpcError):
      _predict(address, request)
  assert len(_CALLS) == before


@pytest.mark.parametrize("fields, message", [
    ([], "GetModelMetadataRequest must specify at least one metadata_field"),
    (["signature_def", "nope"], "Metadata field nope is not supported"),
])
def test_bad_metadata_requests(address, fields, message):
  request = get_model_metadata_pb2.GetModelMetadataRequest()
  request.model_spec.name = "float"
  request.metadata_field.extend(fields)
  with grpc.insecure_channel(address) as channel:
    with pytest.raises(grpc.RpcError) as info:
      prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(
          request, timeout=30)
  assert info.value.code() == _INVALID
  assert message in info.value.details()


def test_status_of_unknown_model_is_not_found(address):
  request = get_model_status_pb2.GetModelStatusRequest()
  request.model_spec.name = "nope"
  with grpc.insecure_channel(address) as channel:
    with pytest.raises(grpc.RpcError) as info:
      model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=30)
  assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_client_deadline_is_honoured_while_queued(address):
  """A request whose deadline passes while it waits for a slot never runs."""
  slow = _request(inputs={"x": np.ones([1, 3], np.float32),
                          "delay_us": np.array([1_500_000], np.int64)}, signature="slow")
  holder = threading.Thread(target=lambda: _predict(address, slow))
  holder.start()  # takes the only slot (max_concurrent_requests=1) for 1.5 s
  deadline_at = time.monotonic() + 5
  while "slow" not in _CALLS and time.monotonic() < deadline_at:
    time.sleep(0.01)
  before = len(_CALLS)
  with pytest.raises(grpc.RpcError) as info:
    _predict(address, _request(signature="multi", inputs={
        "a": np.ones([1, 2], np.float32), "b": np.ones([1], np.int64)}), timeout=0.3)
  assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
  holder.join(30)
  time.sleep(0.2)  # a request the server had wrongly kept would run now
  assert "multi" not in _CALLS[before:]
