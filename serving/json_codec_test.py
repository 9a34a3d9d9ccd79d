"""Tests for serving.json_codec: TF Serving's REST JSON rules for tensors."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest

import pinsage_tf  # noqa: F401
import tensorflow as tf

from serving import errors
from serving import json_codec
from serving import signatures as sig
from serving import testing
from serving.errors import ServingError

_ROW = json_codec.RequestFormat.ROW
_COLUMNAR = json_codec.RequestFormat.COLUMNAR
_STR_IDS = testing.STR_IDS
_FLOAT_X = testing.FLOAT_X
_MULTI = sig.Signature(
    name="multi", method_name=sig.PREDICT_METHOD,
    inputs={"a": sig.TensorSpecInfo("a", tf.float32, (None, 2)),
            "b": sig.TensorSpecInfo("b", tf.int64, (None,))},
    outputs={"sum": sig.TensorSpecInfo("sum", tf.float32, (None,))})


def _parse(body, signature=_FLOAT_X):
  raw = body if isinstance(body, bytes) else json.dumps(body).encode()
  return json_codec.parse_json_predict(raw, lambda name: signature)


def _error(body, signature=_FLOAT_X) -> ServingError:
  with pytest.raises(ServingError) as info:
    _parse(body, signature)
  return info.value


def test_row_format_unnamed_single_input_stacks_instances():
  request = _parse({"instances": [[1, 2, 3], [4.5, 5, 6]]})
  assert request.format == _ROW
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
  assert request.format == _COLUMNAR
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
  assert errors.http_status(error.code) == 400


def test_unknown_signature_error_comes_from_lookup():
  def lookup(name):
    raise errors.invalid_argument(f'Serving signature name: "{name}" not found in signature def')
  with pytest.raises(ServingError, match="not found in signature def"):
    json_codec.parse_json_predict(b'{"signature_name": "nope", "instances": [1]}', lookup)


def test_error_messages_truncate_long_values():
  error = _error({"instances": [["x" * 10000, 1, 2]]})
  assert len(error.message) < 600


def test_float_formatting_matches_tf_serving():
  # 0.1f prints as "0.1" (round-trips at %g); 3 gets ".0"; 1e-5 stays in %g's
  # exponent form; 1/3 in float32 needs 9 digits (%g's 0.333333 is another float).
  values = np.array([0.1, 3.0, 1e-05, 1.0 / 3.0, -2.5, np.nan, np.inf, -np.inf],
                    dtype=np.float32)
  body = json_codec.outputs_to_json({"y": values}, _COLUMNAR).decode()
  assert body.split('"outputs": ')[1].rstrip("\n}") == (
      "[0.1, 3.0, 1e-05, 0.333333343, -2.5, NaN, Infinity, -Infinity]")
  # A float64 uses up to 17 digits.
  doubles = json_codec.outputs_to_json({"y": np.array([0.1, 1.0 / 3.0])}, _COLUMNAR)
  assert json.loads(doubles)["outputs"] == [0.1, 1.0 / 3.0]


def test_row_output_one_and_several_outputs_and_bytes_suffix():
  one = json.loads(json_codec.outputs_to_json({"y": np.array([[1, 2], [3, 4]], np.int64)},
                                              _ROW))
  assert one == {"predictions": [[1, 2], [3, 4]]}
  several = json.loads(json_codec.outputs_to_json(
      {"ids": np.array([[b"a"], [b"b"]], dtype=object),
       "raw_bytes": np.array([b"\x00\xff", b"hi"], dtype=object),
       "ok": np.array([True, False])}, _ROW))
  # "raw_bytes" ends in _bytes, so TF Serving writes base64 ("AP8=" = 00 ff).
  assert several == {"predictions": [
      {"ids": ["a"], "ok": True, "raw_bytes": {"b64": "AP8="}},
      {"ids": ["b"], "ok": False, "raw_bytes": {"b64": "aGk="}}]}


def test_columnar_output_several_outputs_and_scalars():
  body = json.loads(json_codec.outputs_to_json(
      {"s": np.float32(2.5), "v": np.array([1, 2], np.int32)}, _COLUMNAR))
  assert body == {"outputs": {"s": 2.5, "v": [1, 2]}}


def test_row_output_errors():
  with pytest.raises(ServingError, match="has no shape information"):
    json_codec.outputs_to_json({"s": np.float32(1)}, _ROW)
  with pytest.raises(ServingError, match="inconsistent batch size: 3 expecting: 2"):
    json_codec.outputs_to_json({"a": np.zeros([2]), "b": np.zeros([3])}, _ROW)


def test_error_json_escapes_the_message():
  body = json_codec.error_json('bad "x"\n')
  assert body == b'{ "error": "bad \\"x\\"\\n" }'
  assert json.loads(body) == {"error": 'bad "x"\n'}
