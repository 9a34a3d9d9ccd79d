"""Tests for serving.signatures: SignatureDef protos as the server reads them."""

from __future__ import annotations

import pinsage_tf  # noqa: F401
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from serving import signatures


def test_signature_from_proto_reads_dtypes_and_shapes():
  signature_def = meta_graph_pb2.SignatureDef(method_name=signatures.PREDICT_METHOD)
  x = signature_def.inputs["x"]
  x.dtype = types_pb2.DT_FLOAT
  x.tensor_shape.dim.add(size=-1)
  x.tensor_shape.dim.add(size=3)
  ids = signature_def.inputs["ids"]
  ids.dtype = types_pb2.DT_STRING
  ids.tensor_shape.unknown_rank = True
  signature_def.outputs["init"].dtype = types_pb2.DT_INVALID
  signature = signatures.signature_from_proto("serving_default", signature_def)
  assert signature.name == "serving_default"
  assert signature.method_name == signatures.PREDICT_METHOD
  assert list(signature.inputs) == ["ids", "x"]  # sorted by alias
  assert signature.inputs["x"] == signatures.TensorSpecInfo("x", tf.float32, (None, 3))
  assert signature.inputs["x"].shape_string() == "[-1,3]"
  assert signature.inputs["ids"] == signatures.TensorSpecInfo("ids", tf.string, None)
  assert signature.inputs["ids"].shape_string() == "[?]"
  assert signature.outputs["init"].dtype is None


def test_dtype_and_shape_strings_use_tf_serving_names():
  assert signatures.data_type_string(tf.float32) == "float"
  assert signatures.data_type_string(tf.float64) == "double"
  assert signatures.data_type_string(tf.int64) == "int64"
  assert signatures.data_type_string(tf.string) == "string"
  assert signatures.data_type_string(types_pb2.DT_BOOL) == "bool"
  assert signatures.shape_string((2, None, 3)) == "[2,-1,3]"
  assert signatures.shape_string(()) == "[]"
