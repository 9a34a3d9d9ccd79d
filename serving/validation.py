"""The checks TF Serving runs on a predict request before the session runs.

Contract (servables/tensorflow/predict_util.cc, plus this server's batch bound):

* `check_signature_is_runnable` accepts predict, classify and regress
  signatures only (INTERNAL otherwise, as TF Serving).
* `validate_inputs` (decoded arrays) and `validate_descriptions` (dtypes and
  shapes only, before decoding) check the set of input aliases, each input's
  dtype and shape against the signature, and the batch size (dimension 0 of
  inputs whose signature shape starts with an unknown size): not empty, at
  most `max_batch_size`.
* `check_output_filter` returns the output aliases to compute: the filter as
  given, or every output (sorted) for an empty filter.

Every rejection is a `ServingError` whose message names the alias, what was
sent and what the signature expects.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import grpc
import numpy as np

import pinsage_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from serving import errors
from serving import signatures
from serving.errors import ServingError

_RUNNABLE_METHODS = (signatures.PREDICT_METHOD, signatures.CLASSIFY_METHOD,
                     signatures.REGRESS_METHOD)

# numpy dtype -> TF dtype of the numeric types requests usually carry; other
# types take `describe_array`. TF interns its DTypes, so `is` compares them
# (`!=` is a Python call); a miss only means the slower check decides.
_NUMERIC = {np.dtype(t): tf.dtypes.as_dtype(t) for t in (
    np.float32, np.float64, np.float16, np.int32, np.int64, np.int8, np.int16, np.uint8,
    np.uint16, np.uint32, np.uint64, np.bool_)}
_STRING = tf.string


def check_signature_is_runnable(signature: signatures.Signature) -> None:
  """TF Serving's VerifySignature: only predict/classify/regress signatures run."""
  if signature.method_name not in _RUNNABLE_METHODS:
    raise ServingError(
        grpc.StatusCode.INTERNAL,
        "Expected prediction signature method_name to be one of "
        f"{{{', '.join(_RUNNABLE_METHODS)}}}. Was: {signature.method_name}")


def _compatible(shape: tuple[int, ...], expected: tuple[int | None, ...] | None) -> bool:
  if expected is None:
    return True
  if len(shape) != len(expected):
    return False
  for s, e in zip(shape, expected):  # a loop: every request runs it, `all(...)` costs more
    if e is not None and e != s:
      return False
  return True


@dataclasses.dataclass(frozen=True)
class TensorDescription:
  """What a request tensor is, known before its values are decoded.

  Attributes:
    dtype: its TF dtype; None when it has none (e.g. a numpy dtype TF lacks).
    dtype_name: how messages name the dtype ("float", "string", ...).
    shape: its dims.
  """
  dtype: tf.dtypes.DType | None
  dtype_name: str
  shape: tuple[int, ...]


def describe_array(array: np.ndarray) -> TensorDescription:
  """The description of a decoded request array (object / bytes / str arrays are strings)."""
  if array.dtype.kind in ("O", "S", "U"):
    return TensorDescription(tf.string, "string", tuple(array.shape))
  try:
    dtype = tf.dtypes.as_dtype(array.dtype)
  except TypeError:
    return TensorDescription(None, str(array.dtype), tuple(array.shape))
  return TensorDescription(dtype, signatures.data_type_string(dtype), tuple(array.shape))


def validate_inputs(signature: signatures.Signature, inputs: Mapping[str, np.ndarray], *,
                    max_batch_size: int = 0) -> None:
  """Checks request arrays against the signature before running it.

  See `validate_descriptions`, which this applies to `describe_array` of each
  input unless `_conforms` accepts the arrays first.
  """
  if _conforms(signature, inputs, max_batch_size):
    return
  validate_descriptions(signature, {alias: describe_array(array)
                                    for alias, array in inputs.items()},
                        max_batch_size=max_batch_size)


def _conforms(signature: signatures.Signature, inputs: Mapping[str, np.ndarray],
              max_batch_size: int) -> bool:
  """Whether `validate_descriptions` accepts `inputs`, decided without building descriptions.

  True only for inputs it accepts; False leaves the decision (and the
  message) to it. Every request pays this check, so it stays a few
  comparisons.
  """
  specs = signature.inputs
  if len(inputs) != len(specs):
    return False
  for alias, array in inputs.items():
    spec = specs.get(alias)
    if spec is None or spec.dtype is None:
      return False
    dtype = array.dtype
    if (_STRING if dtype.kind in ("O", "S", "U") else _NUMERIC.get(dtype)) is not spec.dtype:
      return False
    shape = array.shape
    if not _compatible(shape, spec.shape):
      return False
    if spec.shape and spec.shape[0] is None and (
        shape[0] == 0 or 0 < max_batch_size < shape[0]):
      return False
  return True


def validate_descriptions(signature: signatures.Signature,
                          inputs: Mapping[str, TensorDescription], *,
                          max_batch_size: int = 0) -> None:
  """Checks the request tensors' aliases, dtypes, shapes and batch sizes.

  Usable before the values are decoded (gRPC checks a TensorProto's declared
  dtype and shape first, so a small message declaring a huge tensor is
  rejected before anything is allocated).

  Args:
    signature: the signature the request names.
    inputs: alias -> description of the sent tensor.
    max_batch_size: if > 0, the largest dimension 0 accepted for inputs whose
      signature shape starts with an unknown (batch) dimension.

  Raises:
    ServingError: INVALID_ARGUMENT naming the input, what was sent and what the
      signature expects (missing or extra aliases, dtype, shape, empty or
      oversized batch).
  """
  expected = set(signature.inputs)
  sent = set(inputs)
  if len(sent) != len(expected):
    raise errors.invalid_argument(
        f"input size does not match signature: {len(sent)}!={len(expected)} "
        f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(expected))}}}). "
        f"Sent extra: {{{','.join(sorted(sent - expected))}}}. "
        f"Missing but required: {{{','.join(sorted(expected - sent))}}}.")
  unknown = sorted(sent - expected)
  if unknown:
    raise errors.invalid_argument(
        f"input tensor alias not found in signature: {unknown[0]}. Inputs expected "
        f"to be in the set {{{','.join(sorted(expected))}}}.")
  for alias in sorted(inputs):
    spec = signature.inputs[alias]
    described = inputs[alias]
    if described.dtype is None or described.dtype != spec.dtype:
      raise errors.invalid_argument(
          f"input '{alias}' has dtype {described.dtype_name} but signature "
          f"'{signature.name}' expects {signatures.data_type_string(spec.dtype)}")
    shape = described.shape
    if not _compatible(shape, spec.shape):
      raise errors.invalid_argument(
          f"input '{alias}' has shape {signatures.shape_string(shape)} but signature "
          f"'{signature.name}' expects {spec.shape_string()} (-1 = any size)")
    batched = spec.shape is not None and len(spec.shape) > 0 and spec.shape[0] is None
    if batched and shape[0] == 0:
      raise errors.invalid_argument(f"input '{alias}' has an empty batch (dimension 0 is 0)")
    if batched and max_batch_size > 0 and shape[0] > max_batch_size:
      raise errors.invalid_argument(
          f"input '{alias}' has batch size {shape[0]}, more than this "
          f"server's --max_batch_size={max_batch_size}; split the request")


def check_output_filter(signature: signatures.Signature, output_filter: Sequence[str]) -> list[str]:
  """Output aliases to return: the filter (validated) or all of them."""
  seen: set[str] = set()
  for alias in output_filter:
    if alias not in signature.outputs:
      raise errors.invalid_argument(
          f"output tensor alias not found in signature: {alias} Outputs expected "
          f"to be in the set {{{','.join(sorted(signature.outputs))}}}.")
    if alias in seen:
      raise errors.invalid_argument(f"duplicate output tensor alias: {alias}")
    seen.add(alias)
  return list(output_filter) if output_filter else sorted(signature.outputs)
