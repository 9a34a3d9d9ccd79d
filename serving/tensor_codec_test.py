"""Tests for serving.tensor_codec: TF Serving's JSON / TensorProto rules."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest

import pinsage_tf  # noqa: F401
import tensorflow as tf

from serving import tensor_codec as tc

_STR_IDS = tc.Signature(
    name="serving_default", method_name=tc.PREDICT_METHOD,
    inputs={"item_ids": tc.TensorSpecInfo("item_ids", tf.string, (None,))},
    outputs={"ids": tc.TensorSpecInfo("ids", tf.string, (None, 2)),
             "scores": tc.TensorSpecInfo("scores", tf.float32, (None, 2))})
_FLOAT_X = tc.Signature(
    name="serving_default", method_name=tc.PREDICT_METHOD,
    inputs={"x": tc.TensorSpecInfo("x", tf.float32, (None, 3))},
    outputs={"y": tc.TensorSpecInfo("y", tf.float32, (None,))})
_MULTI = tc.Signature(
    name="multi", method_name=tc.PREDICT_METHOD,
    inputs={"a": tc.TensorSpecInfo("a", tf.float32, (None, 2)),
            "b": tc.TensorSpecInfo("b", tf.int64, (None,))},
    outputs={"sum": tc.TensorSpecInfo("sum", tf.float32, (None,))})


def _parse(body, signature=_FLOAT_X):
  return tc.parse_json_predict(json.dumps(body).encode() if not isinstance(body, bytes)
                               else body, lambda name: signature)


def _error(body, signature=_FLOAT_X) -> tc.ServingError:
  with pytest.raises(tc.ServingError) as info:
    _parse(body, signature)
  return info.value


def test_row_format_unnamed_single_input_stacks_instances():
  request = _parse({"instances": [[1, 2, 3], [4.5, 5, 6]]})
  assert request.format == tc.RequestFormat.ROW
  assert request.signature_name == ""
  np.testing.assert_array_equal(request.inputs["x"], [[1, 2, 3], [4.5, 5, 6]])
  assert request.inputs["x"].dtype == np.float32


def test_row_format_named_inputs_and_signature_name():
  request = _parse({"signature_name": "multi",
                    "instances": [{"a": [1, 2], "b": 3}, {"a": [0, 0], "b": -1}]}, _MULTI)
  np.testing.assert_array_equal(request.inputs["a"], [[1, 2], [0, 0]])
  np.testing.assert_array_equal(request.inputs["b"], [3, -1])
  assert request.inputs["b"].dtype == np.int64
  assert request.signature_name == "multi"


def test_columnar_format_and_b64_strings():
  # "aGk=" is base64 for b"hi"; plain strings are UTF-8 encoded.
  request = _parse({"inputs": ["x", {"b64": "aGk="}]}, _STR_IDS)
  assert request.format == tc.RequestFormat.COLUMNAR
  assert request.inputs["item_ids"].tolist() == [b"x", b"hi"]
  named = _parse({"inputs": {"a": [[1, 2]], "b": [7], "ignored": 1}}, _MULTI)
  assert sorted(named.inputs) == ["a", "b"]  # TF Serving ignores unknown columnar keys


def test_row_format_single_b64_instances():
  request = _parse({"instances": [{"b64": "aGk="}, "yo"]}, _STR_IDS)
  assert request.inputs["item_ids"].tolist() == [b"hi", b"yo"]


@pytest.mark.parametrize("body, signature, expected", [
    (b"", _FLOAT_X, "JSON Parse error: The document is empty"),
    (b"{\"instances\": [", _FLOAT_X, "JSON Parse error:"),
    ([1, 2], _FLOAT_X, "Is not object"),
    ({"signature_name": 3, "instances": [[1, 2, 3]]}, _FLOAT_X,
     "'signature_name' key must be a string value."),
    ({"instances": [[1, 2, 3]], "inputs": [[1, 2, 3]]}, _FLOAT_X,
     "expecting only one of 'inputs' or 'instances' keys to exist"),
    ({"signature_name": "x"}, _FLOAT_X, "Missing 'inputs' or 'instances' key"),
    ({"instances": []}, _FLOAT_X, "No values in 'instances' array"),
    ({"instances": {"x": 1}}, _FLOAT_X, "Excepting 'instances' to be an list/array"),
    ({"instances": [["a", 2, 3]]}, _FLOAT_X,
     'JSON Value: "a" Type: String is not of expected type: float'),
    ({"instances": [[True, 2, 3]]}, _FLOAT_X, "Type: True is not of expected type: float"),
    ({"instances": [1, 2]}, _STR_IDS, "Type: Number is not of expected type: string"),
    ({"instances": [[1, 2, 3], [1, 2]]}, _FLOAT_X, "Expecting tensor size: 3 but got: 2"),
    ({"instances": [[1, 2, 3], [[1], [2], [3]]]}, _FLOAT_X, "Expecting shape [3] but got: [3,1]"),
    ({"instances": [[1, [2], 3]]}, _FLOAT_X,
     "Encountered list at unexpected level: 1 expected < 1"),
    ({"instances": [[[1], 2, 3]]}, _FLOAT_X, "JSON Value: 2 found at incorrect level: 2"),
    ({"instances": [[16777217, 0, 0]]}, _FLOAT_X, "without loss of precision"),
    ({"instances": [{"a": [1, 2]}]}, _MULTI, "must only have keys: a,b"),
    ({"instances": [{"a": [1, 2], "b": 1, "c": 2}]}, _MULTI,
     "does not have named input: c"),
    ({"instances": [[1, 2]]}, _MULTI, "instances is a plain list, but expecting list of objects"),
    ({"instances": [{"a": [1, 2], "b": 1}, [1]]}, _MULTI,
     "Expecting object but got list at item 1"),
    ({"instances": [{"a": [1, 2], "b": 1.5}]}, _MULTI, "is not of expected type: int64"),
    ({"inputs": [[1, 2]]}, _MULTI, "inputs is a plain value/list, but expecting an object"),
    ({"inputs": {"a": [[1, 2]]}}, _MULTI, "Missing named input: b in 'inputs' object."),
    ({"inputs": [{"b64": "***"}]}, _STR_IDS, "Unable to base64 decode"),
    ({"inputs": [{"b64": "aGk=", "x": 1}]}, _STR_IDS, "not formatted correctly for base64 data"),
])
def test_bad_json_requests_are_invalid_argument_with_tf_serving_messages(body, signature,
                                                                         expected):
  error = _error(body, signature)
  assert error.code == grpc.StatusCode.INVALID_ARGUMENT
  assert expected in error.message
  assert tc.http_status(error.code) == 400


def test_unknown_signature_error_comes_from_lookup():
  def lookup(name):
    raise tc.invalid_argument(f'Serving signature name: "{name}" not found in signature def')
  with pytest.raises(tc.ServingError, match="not found in signature def"):
    tc.parse_json_predict(b'{"signature_name": "nope", "instances": [1]}', lookup)


def test_error_messages_truncate_long_values():
  error = _error({"instances": [["x" * 10000, 1, 2]]})
  assert len(error.message) < 600


def test_float_formatting_matches_tf_serving():
  # 0.1f prints as "0.1" (round-trips at %g); 3 gets ".0"; 1e-5 stays in %g's
  # exponent form; 1/3 in float32 needs 9 digits (%g's 0.333333 is another float).
  values = np.array([0.1, 3.0, 1e-05, 1.0 / 3.0, -2.5, np.nan, np.inf, -np.inf],
                    dtype=np.float32)
  body = tc.outputs_to_json({"y": values}, tc.RequestFormat.COLUMNAR).decode()
  assert body.split('"outputs": ')[1].rstrip("\n}") == (
      "[0.1, 3.0, 1e-05, 0.333333343, -2.5, NaN, Infinity, -Infinity]")
  # A float64 uses up to 17 digits.
  doubles = tc.outputs_to_json({"y": np.array([0.1, 1.0 / 3.0])}, tc.RequestFormat.COLUMNAR)
  assert json.loads(doubles)["outputs"] == [0.1, 1.0 / 3.0]


def test_row_output_one_and_several_outputs_and_bytes_suffix():
  one = json.loads(tc.outputs_to_json({"y": np.array([[1, 2], [3, 4]], np.int64)},
                                      tc.RequestFormat.ROW))
  assert one == {"predictions": [[1, 2], [3, 4]]}
  several = json.loads(tc.outputs_to_json(
      {"ids": np.array([[b"a"], [b"b"]], dtype=object),
       "raw_bytes": np.array([b"\x00\xff", b"hi"], dtype=object),
       "ok": np.array([True, False])}, tc.RequestFormat.ROW))
  # "raw_bytes" ends in _bytes, so TF Serving writes base64 ("AP8=" = 00 ff).
  assert several == {"predictions": [
      {"ids": ["a"], "ok": True, "raw_bytes": {"b64": "AP8="}},
      {"ids": ["b"], "ok": False, "raw_bytes": {"b64": "aGk="}}]}


def test_columnar_output_several_outputs_and_scalars():
  body = json.loads(tc.outputs_to_json(
      {"s": np.float32(2.5), "v": np.array([1, 2], np.int32)}, tc.RequestFormat.COLUMNAR))
  assert body == {"outputs": {"s": 2.5, "v": [1, 2]}}


def test_row_output_errors():
  with pytest.raises(tc.ServingError, match="has no shape information"):
    tc.outputs_to_json({"s": np.float32(1)}, tc.RequestFormat.ROW)
  with pytest.raises(tc.ServingError, match="inconsistent batch size: 3 expecting: 2"):
    tc.outputs_to_json({"a": np.zeros([2]), "b": np.zeros([3])}, tc.RequestFormat.ROW)


def test_validate_inputs_messages():
  good = {"x": np.zeros([2, 3], np.float32)}
  tc.validate_inputs(_FLOAT_X, good, max_batch_size=2)
  cases = [
      ({"x": np.zeros([2, 3], np.float64)}, "has dtype double but signature "
       "'serving_default' expects float"),
      ({"x": np.zeros([2, 4], np.float32)}, "has shape [2,4] but signature "
       "'serving_default' expects [-1,3]"),
      ({"x": np.zeros([0, 3], np.float32)}, "empty batch"),
      ({"x": np.zeros([3, 3], np.float32)}, "--max_batch_size=2"),
      ({"x": good["x"], "z": good["x"]}, "Sent extra: {z}. Missing but required: {}."),
      ({"z": good["x"]}, "input tensor alias not found in signature: z."),
      ({}, "Missing but required: {x}."),
  ]
  for inputs, expected in cases:
    with pytest.raises(tc.ServingError) as info:
      tc.validate_inputs(_FLOAT_X, inputs, max_batch_size=2)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in info.value.message


def test_output_filter():
  assert tc.check_output_filter(_STR_IDS, []) == ["ids", "scores"]
  assert tc.check_output_filter(_STR_IDS, ["scores"]) == ["scores"]
  with pytest.raises(tc.ServingError, match="output tensor alias not found in signature: z"):
    tc.check_output_filter(_STR_IDS, ["z"])
  with pytest.raises(tc.ServingError, match="duplicate output tensor alias: ids"):
    tc.check_output_filter(_STR_IDS, ["ids", "ids"])


@pytest.mark.parametrize("array, field", [
    (np.array([[0.5, -1.0]], np.float32), "float_val"),
    (np.array([1.25], np.float64), "double_val"),
    (np.array([[1, 2, 3]], np.int32), "int_val"),
    (np.array([7, -8], np.int64), "int64_val"),
    (np.array([True, False]), "bool_val"),
    (np.array([1.5, 2.0], np.float16), "half_val"),
    (np.array([1 + 2j], np.complex64), "scomplex_val"),
])
def test_output_tensor_protos_use_typed_fields_like_tf_serving(array, field):
  proto = tc.array_to_tensor_proto(array)
  assert proto.tensor_content == b""
  assert len(getattr(proto, field)) == array.size * (2 if array.dtype.kind == "c" else 1)
  np.testing.assert_array_equal(tf.make_ndarray(proto), array)


def test_tensor_proto_round_trip_and_parse_error():
  array = np.arange(6, dtype=np.float32).reshape(2, 3)
  np.testing.assert_array_equal(
      tc.tensor_proto_to_array("x", tc.array_to_tensor_proto(array)), array)
  strings = tc.tensor_proto_to_array("s", tf.make_tensor_proto([b"a", b"bc"]))
  assert strings.dtype == object and strings.tolist() == [b"a", b"bc"]
  bad = tf.make_tensor_proto(array)
  bad.tensor_content = bad.tensor_content[:5]  # 5 bytes cannot hold 6 floats
  with pytest.raises(tc.ServingError, match="tensor parsing error: x"):
    tc.tensor_proto_to_array("x", bad)


def test_http_status_table_and_error_json():
  assert tc.http_status(grpc.StatusCode.NOT_FOUND) == 404
  assert tc.http_status(grpc.StatusCode.FAILED_PRECONDITION) == 400
  assert tc.http_status(grpc.StatusCode.RESOURCE_EXHAUSTED) == 429
  assert tc.http_status(grpc.StatusCode.UNAVAILABLE) == 503
  assert tc.http_status(grpc.StatusCode.DEADLINE_EXCEEDED) == 504
  assert json.loads(tc.error_json('bad "x"\n')) == {"error": 'bad "x"\n'}


def test_signature_method_name_check():
  init_op = tc.Signature("__saved_model_init_op", "", {}, {})
  with pytest.raises(tc.ServingError, match="Expected prediction signature method_name"):
    tc.check_signature_is_runnable(init_op)
