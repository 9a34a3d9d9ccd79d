"""TensorProtos on gRPC: request tensors in, response tensors out.

Contract:

* `describe_tensor_proto(alias, proto)` gives a request tensor's dtype and
  declared shape without decoding it (so the signature and the batch bound
  can be checked before anything is allocated).
* `tensor_proto_to_array(alias, proto, max_bytes=...)` gives the request
  tensor as an array; DT_STRING becomes a numpy object array of `bytes`. A
  proto that is not a valid tensor (DT_INVALID, unknown rank, negative
  dimensions, content of the wrong size) or that declares more than
  `max_bytes` once decoded is INVALID_ARGUMENT "tensor parsing error: <alias>...".
* `array_to_tensor_proto(array)` lays an output out as TF Serving's
  Tensor::AsProtoField does: numeric values in the typed repeated field
  (`float_val`, `int64_val`, ...), not in `tensor_content`. `tf.make_ndarray`
  reads it back to the same array.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

import pinsage_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf
from tensorflow.core.framework import types_pb2

from serving import errors
from serving import signatures
from serving import validation


def _parse_error(alias: str, reason: str = "") -> errors.ServingError:
  return errors.invalid_argument(f"tensor parsing error: {alias}" + (f": {reason}" if reason else ""))


# Bytes a decoded element costs: numeric items their width, strings a numpy
# object reference each (their payload is carried by the message itself).
_STRING_ELEMENT_BYTES = 8


def describe_tensor_proto(alias: str, proto: Any) -> validation.TensorDescription:
  """The dtype and declared shape of a request TensorProto, without decoding it.

  Raises:
    ServingError: INVALID_ARGUMENT "tensor parsing error: <alias>: ..." for
      DT_INVALID or an unknown dtype, an unknown rank or a negative dimension.
  """
  if proto.dtype == types_pb2.DT_INVALID:
    raise _parse_error(alias, "dtype is DT_INVALID")
  try:
    dtype = tf.dtypes.as_dtype(proto.dtype)
  except TypeError:
    raise _parse_error(alias, f"unknown dtype enum {proto.dtype}") from None
  if proto.tensor_shape.unknown_rank:
    raise _parse_error(alias, "the tensor's shape has an unknown rank")
  shape = tuple(int(d.size) for d in proto.tensor_shape.dim)
  for i, size in enumerate(shape):
    if size < 0:
      raise _parse_error(alias, f"dimension {i} has size {size}; sizes must be >= 0")
  return validation.TensorDescription(dtype, signatures.data_type_string(dtype), shape)


def tensor_proto_to_array(alias: str, proto: Any, *, max_bytes: int = 0,
                          described: validation.TensorDescription | None = None
                          ) -> np.ndarray:
  """A request TensorProto as an array; DT_STRING -> object array of bytes.

  Args:
    alias: the input's name, for messages.
    proto: the TensorProto.
    max_bytes: if > 0, the largest decoded size accepted. Checked on the
      declared shape before anything is allocated: a TensorProto may declare
      far more elements than it carries values (TensorFlow repeats the last
      one), so a message of a few bytes could otherwise expand to gigabytes.
    described: `describe_tensor_proto(alias, proto)` when the caller already
      has it (it checked the declared shapes first).

  Raises:
    ServingError: INVALID_ARGUMENT "tensor parsing error: <alias>..." when the
      proto is not a valid tensor (see `describe_tensor_proto`; content of the
      wrong size) or declares more than `max_bytes`.
  """
  if described is None:
    described = describe_tensor_proto(alias, proto)
  if max_bytes > 0:
    elements = math.prod(described.shape)
    itemsize = (_STRING_ELEMENT_BYTES if described.dtype == tf.string
                else max(1, described.dtype.size))
    if elements * itemsize > max_bytes:
      raise _parse_error(
          alias, f"shape {signatures.shape_string(described.shape)} of "
          f"{described.dtype_name} decodes to {elements * itemsize} bytes, more than this "
          f"server's --max_request_bytes={max_bytes}")
  try:
    array = tf.make_ndarray(proto)
  except Exception:  # make_ndarray raises several types for bad protos.
    raise _parse_error(alias) from None
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
    # The values straight from the array (no decode of the content just written).
    flat = np.asarray(array, dtype=tf.dtypes.as_dtype(proto.dtype).as_numpy_dtype).ravel()
    if view is not None:
      flat = flat.view(view)
    proto.ClearField("tensor_content")
    getattr(proto, field).extend(flat.tolist())
  return proto
