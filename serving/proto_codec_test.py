"""Tests for serving.proto_codec: TensorProtos laid out like TF Serving's."""

from __future__ import annotations

import numpy as np
import pytest

import pinsage_tf  # noqa: F401
import tensorflow as tf

from serving import proto_codec
from serving.errors import ServingError


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
  proto = proto_codec.array_to_tensor_proto(array)
  assert proto.tensor_content == b""
  assert len(getattr(proto, field)) == array.size * (2 if array.dtype.kind == "c" else 1)
  np.testing.assert_array_equal(tf.make_ndarray(proto), array)


def test_tensor_proto_round_trip_and_parse_error():
  array = np.arange(6, dtype=np.float32).reshape(2, 3)
  np.testing.assert_array_equal(
      proto_codec.tensor_proto_to_array("x", proto_codec.array_to_tensor_proto(array)), array)
  strings = proto_codec.tensor_proto_to_array("s", tf.make_tensor_proto([b"a", b"bc"]))
  assert strings.dtype == object and strings.tolist() == [b"a", b"bc"]
  bad = tf.make_tensor_proto(array)
  bad.tensor_content = bad.tensor_content[:5]  # 5 bytes cannot hold 6 floats
  with pytest.raises(ServingError, match="tensor parsing error: x"):
    proto_codec.tensor_proto_to_array("x", bad)
