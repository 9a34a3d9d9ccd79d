"""TensorProtos on gRPC: request tensors in, response tensors out.

Contract:

* `tensor_proto_to_array(alias, proto)` gives the request tensor as an array;
  DT_STRING becomes a numpy object array of `bytes`. A proto that is not a
  valid tensor is INVALID_ARGUMENT "tensor parsing error: <alias>".
* `array_to_tensor_proto(array)` lays an output out as TF Serving's
  Tensor::AsProtoField does: numeric values in the typed repeated field
  (`float_val`, `int64_val`, ...), not in `tensor_content`. `tf.make_ndarray`
  reads it back to the same array.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import pinsage_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf
from tensorflow.core.framework import types_pb2

from serving import errors


def tensor_proto_to_array(alias: str, proto: Any) -> np.ndarray:
  """A request TensorProto as an array; DT_STRING -> object array of bytes.

  Raises:
    ServingError: INVALID_ARGUMENT "tensor parsing error: <alias>" when the
      proto is not a valid tensor (unknown dtype, content of the wrong size).
  """
  try:
    if proto.dtype == types_pb2.DT_INVALID:
      raise ValueError("DT_INVALID")
    array = tf.make_ndarray(proto)
  except Exception:  # make_ndarray raises several types for bad protos.
    raise errors.invalid_argument(f"tensor parsing error: {alias}") from None
  if array.dtype.kind in ("S", "U"):
    array = array.astype(object)
  return array


# TF Serving answers with Tensor::AsProtoField: values in the typed repeated
# field, not in tensor_content. Clients that read e.g. `.float_val` rely on it.
_TYPED_FIELDS = {
    types_pb2.DT_FLOAT: ("float_val", None),
    types_pb2.DT_DOUBLE: ("double_val", None),
    types_pb2.DT_INT32: ("int_val", None),
    types_pb2.DT_INT16: ("int_val", None),
    types_pb2.DT_INT8: ("int_val", None),
    types_pb2.DT_UINT8: ("int_val", None),
    types_pb2.DT_UINT16: ("int_val", None),
    types_pb2.DT_INT64: ("int64_val", None),
    types_pb2.DT_UINT32: ("uint32_val", None),
    types_pb2.DT_UINT64: ("uint64_val", None),
    types_pb2.DT_BOOL: ("bool_val", None),
    types_pb2.DT_HALF: ("half_val", np.uint16),
    types_pb2.DT_BFLOAT16: ("half_val", np.uint16),
    types_pb2.DT_COMPLEX64: ("scomplex_val", np.float32),
    types_pb2.DT_COMPLEX128: ("dcomplex_val", np.float64),
}


def array_to_tensor_proto(array: np.ndarray) -> Any:
  """An output array as a TensorProto laid out like TF Serving's responses.

  Built with tf.make_tensor_proto; numeric values are then moved from
  `tensor_content` into the typed field (`float_val`, `int64_val`, ...) as
  TF Serving's Tensor::AsProtoField does. tf.make_ndarray reads either form.
  """
  proto = tf.make_tensor_proto(array)
  typed = _TYPED_FIELDS.get(proto.dtype)
  if typed is not None and proto.tensor_content:
    field, view = typed
    flat = tf.make_ndarray(proto).ravel()
    if view is not None:
      flat = flat.view(view)
    proto.ClearField("tensor_content")
    getattr(proto, field).extend(flat.tolist())
  return proto
